"""Throughput of the stacked trainer on this device, per model, batch size and K, into throughput.csv.

For each model, batch size and stack size K it builds the stack exactly as the trainer does
(`build_stacked_model`, `StackedOptimizer`), on random data of the model's data set's shape
and kind (float signals or images, token ids for a language model; targets per example,
per token or per pixel), and times the trainer's hot loop: each member's batch drawn from its
own permutation (with the data set's augmentation) by `member_batches`, then the stacked step
as the trainer's default `step_mode: auto` runs it (a CUDA graph on a GPU), its losses written
into a device buffer. A few warm-up steps first, then `--steps` timed
steps between device synchronisations. Then one forward-only evaluation pass
(`evaluate_stack`, the trainer's evaluation) over `--eval-examples` examples, timed the same
way. No evaluations, checkpoints or outputs inside the timed steps: `batchlab.estimate` adds
the evaluations from the plan itself.

Each row of the CSV (summed over the K members):
    run_steps_per_s       updates of one run per second (K per stacked step)
    examples_per_s        training examples per second (run_steps_per_s * batch_size)
    eval_examples_per_s   examples per second through one member's evaluation (K per example)
    step_ms               milliseconds per stacked step
Rows are merged into `--out`: a row of the same (device, model, batch_size, k) is replaced,
every other row is kept, and the file is written atomically.

A model's data set: `--dataset`, else the one a preset (config.yaml, config/*.yaml) trains it
on, else the first catalogued data set of the kind of input the model takes. Usage:

    .venv/bin/python benchmarks/throughput.py --models mlp cnn --batch-sizes 8 32 128 --k 1 12 [--steps 20]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import yaml

from batchlab.data import Dataset
from batchlab.data.catalog import NAMES as DATASET_NAMES, dataset_info
from batchlab.estimate import THROUGHPUT_COLUMNS
from batchlab.io import atomic_path
from batchlab.models import MODEL_INPUTS, MODEL_NAMES
from batchlab.stacked.models import build_stacked_model
from batchlab.stacked.optim import StackedOptimizer
from batchlab.stacked.step import GRAPH_WARMUP_STEPS, make_step, resolve_step_mode
from batchlab.devices import resolve_device
from batchlab.train.evaluation import evaluate_stack
from batchlab.train.plan import epoch_permutation
from batchlab.train.stack import member_batches

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "throughput.csv"
# SGD with momentum, as most presets train; Adam's update costs a little more per parameter.
OPTIMIZER = {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "betas": [0.9, 0.999]}
EVAL_BATCH_SIZE = 4096  # the schema's default eval.batch_size
LR = 1e-3  # small, so that random labels do not send the weights to inf or NaN within the timed steps
KEY = ["device", "model", "batch_size", "k"]


def device_label(dev: torch.device) -> str:
    """What the figures were measured on: the GPU's name, or the CPU's model and the torch threads."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu {name} ({torch.get_num_threads()} threads)"


def preset_datasets(paths: list[Path] | None = None) -> dict[str, tuple[str, dict]]:
    """model -> (data set, its config options), from the first preset study that trains the model."""
    if paths is None:
        paths = [REPO / "config.yaml", *sorted((REPO / "config").glob("*.yaml"))]
    out: dict[str, tuple[str, dict]] = {}
    for path in paths:
        cfg = yaml.safe_load(path.read_text()) or {}
        for study in (cfg.get("studies") or {}).values():
            dataset = study.get("dataset")
            for model in study.get("models", []):
                out.setdefault(model, (dataset, (cfg.get("datasets") or {}).get(dataset) or {}))
    return out


def default_dataset(model: str) -> tuple[str, dict]:
    presets = preset_datasets()
    if model in presets:
        return presets[model]
    for name in DATASET_NAMES:  # the first catalogued data set of the kind the model takes
        if dataset_info(name, {}).inputs == MODEL_INPUTS[model]:
            return name, {}
    raise SystemExit(f"no data set found for model {model!r}: pass --dataset")


def is_tokens(info) -> bool:
    return info.task == "language_model" or "token" in str(info.inputs).lower()


def random_inputs(info, n: int, dev: torch.device, g: torch.Generator) -> torch.Tensor:
    shape = (n, *info.input_shape)
    if is_tokens(info):
        return torch.randint(0, info.num_classes, shape, generator=g).to(dev)
    return torch.randn(shape, generator=g).to(dev)


def random_targets(info, n: int, dev: torch.device, g: torch.Generator) -> torch.Tensor:
    if info.task == "classification":
        shape = (n,)
    elif info.task == "language_model":
        shape = (n, *info.input_shape)  # the next token at every position
    else:  # segmentation: a class per pixel
        shape = (n, *info.input_shape[-2:])
    return torch.randint(0, info.num_classes, shape, generator=g).to(dev)


def random_dataset(name: str, info, n_train: int, n_test: int, augment: str, dev: torch.device) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x_train, y_train = random_inputs(info, n_train, dev, g), random_targets(info, n_train, dev, g)
    x_test, y_test = random_inputs(info, n_test, dev, g), random_targets(info, n_test, dev, g)
    return Dataset(name, x_train, y_train, x_test, y_test, info.num_classes, augment=augment, task=info.task)


def default_augment(info) -> str:
    """The prepared CIFAR sets' crop-and-flip for 3-channel images (its cost is the trainer's per-member
    gather); nothing for other inputs."""
    return "crop_flip" if info.inputs == "image" and info.input_shape[0] == 3 else "none"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_steps(model_name: str, data: Dataset, batch_size: int, k: int, steps: int, warmup: int,
               dev: torch.device, repeats: int = 1, step_mode: str = "auto") -> float:
    """Seconds for `steps` stacked steps of K members at `batch_size`, after `warmup` untimed ones: the
    fastest of `repeats` blocks of `steps` (as timeit does: on a shared machine the slower ones time the
    neighbours). Each step runs as the trainer runs it with `step_mode` (batchlab.stacked.step)."""
    seeds = list(range(k))
    dtype = data.dtype
    model = build_stacked_model(model_name, data.input_shape, data.num_classes, seeds, device=dev, dtype=dtype)
    optimizer = StackedOptimizer(model.params, OPTIMIZER)
    step_fn = make_step(model, optimizer, resolve_step_mode(step_mode, dev))
    lr = torch.full((k,), LR, device=dev, dtype=dtype)
    steps_per_epoch = data.n_train // batch_size
    losses = torch.full((warmup + repeats * steps + 1, k), float("nan"), device=dev, dtype=dtype)
    cols = torch.arange(k, device=dev)
    perm_epoch, perms = -1, None

    def run(first: int, last: int) -> None:
        nonlocal perm_epoch, perms
        for step in range(first, last):
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perms = torch.stack([epoch_permutation(data.n_train, s, epoch) for s in seeds]).to(dev)
                perm_epoch = epoch
            xb, yb = member_batches(data, perms, seeds, step, pos, batch_size)
            losses[step + 1].index_copy_(0, cols, step_fn(xb, yb, lr))

    run(0, warmup)
    best = math.inf
    for first in range(warmup, warmup + repeats * steps, steps):
        sync(dev)
        start = time.perf_counter()
        run(first, first + steps)
        losses[first + steps].cpu()  # the trainer reads the losses back at its next evaluation
        best = min(best, time.perf_counter() - start)
    return best


def time_eval(model_name: str, data: Dataset, k: int, dev: torch.device) -> float:
    """Seconds for one evaluation of K members over the test split, after a warm-up on a slice of it."""
    model = build_stacked_model(model_name, data.input_shape, data.num_classes, list(range(k)), device=dev,
                                dtype=data.dtype)
    classes = data.num_classes if data.task == "segmentation" else None
    evaluate_stack(model, data.x_test[:64], data.y_test[:64], EVAL_BATCH_SIZE, classes)
    sync(dev)
    start = time.perf_counter()
    evaluate_stack(model, data.x_test, data.y_test, EVAL_BATCH_SIZE, classes)
    sync(dev)
    return time.perf_counter() - start


def merge_rows(new: pd.DataFrame, out: Path) -> pd.DataFrame:
    """`out`'s rows with those of `new` in place of any of the same (device, model, batch_size, k); written atomically."""
    if out.exists():
        old = pd.read_csv(out)
        keys = set(map(tuple, new[KEY].itertuples(index=False)))
        old = old[[tuple(row) not in keys for row in old[KEY].itertuples(index=False)]]
        table = pd.concat([old, new], ignore_index=True) if len(old) else new
    else:
        table = new
    table = table.sort_values(KEY, kind="stable").reset_index(drop=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp"], help=f"any of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 128, 512])
    parser.add_argument("--k", nargs="+", type=int, default=[12], help="stack sizes (the schema's max_stack default: 12)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=GRAPH_WARMUP_STEPS + 2, help="untimed steps first (a CUDA graph is captured in them)")
    parser.add_argument("--repeats", type=int, default=1, help="time --steps this often and keep the fastest")
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="examples of the timed evaluation (default: the test split, at most 4096 on a GPU, "
                             "256 on a CPU)")
    parser.add_argument("--dataset", default=None, help="data set whose shapes to use (default: per model, see above)")
    parser.add_argument("--augment", default="auto", choices=["auto", "none", "crop_flip"],
                        help="augmentation of each member's batch (auto: crop_flip for 3-channel images)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODEL_NAMES]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True  # as the trainer's default (the config's cudnn_benchmark)
    device = device_label(dev)
    print(f"{device}, torch {torch.__version__}; {args.warmup} warm-up steps, then the fastest of {args.repeats} x "
          f"{args.steps} timed steps per case", flush=True)
    print(f"{'model':10} {'data':9} {'batch':>5} {'K':>3} {'step ms':>9} {'run-steps/s':>11} {'examples/s':>11} "
          f"{'eval ex/s':>10}", flush=True)
    rows = []
    for model in args.models:
        name, options = (args.dataset, {}) if args.dataset else default_dataset(model)
        info = dataset_info(name, options)
        n_eval = args.eval_examples or min(info.n_test, 4096 if dev.type == "cuda" else 256)
        # enough training examples for several distinct batches; the trainer's whole set would only cost memory here
        n_pool = min(info.n_train, max(4 * max(args.batch_sizes), 4096))
        sizes = [b for b in args.batch_sizes if b <= n_pool]
        if len(sizes) < len(args.batch_sizes):
            print(f"{model}: skipping batch sizes above the {info.n_train} training examples of {name}")
        augment = default_augment(info) if args.augment == "auto" else args.augment
        data = random_dataset(name, info, n_pool, n_eval, augment, dev)
        for k in args.k:
            eval_rate = k * n_eval / time_eval(model, data, k, dev)
            for batch_size in sizes:
                seconds = time_steps(model, data, batch_size, k, args.steps, args.warmup, dev, args.repeats)
                run_steps = k * args.steps / seconds
                rows.append({
                    "device": device, "torch": torch.__version__, "model": model, "dataset": name, "augment": augment,
                    "batch_size": batch_size, "k": k, "steps": args.steps, "step_ms": 1000 * seconds / args.steps,
                    "run_steps_per_s": run_steps,
                    "examples_per_s": run_steps * batch_size, "eval_examples_per_s": eval_rate,
                    "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                })
                r = rows[-1]
                print(f"{model:10} {name:9} {batch_size:5d} {k:3d} {r['step_ms']:9.2f} {run_steps:11.1f} "
                      f"{r['examples_per_s']:11.0f} {eval_rate:10.0f}", flush=True)
    table = merge_rows(pd.DataFrame(rows, columns=THROUGHPUT_COLUMNS), args.out)
    print(f"{len(rows)} rows merged into {args.out} ({len(table)} rows, {table['device'].nunique()} devices)")


if __name__ == "__main__":
    sys.exit(main())
