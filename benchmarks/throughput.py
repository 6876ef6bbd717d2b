"""Throughput of the stacked trainer and cost of the analyses on this device, into throughput.csv.

Training. For each model, batch size and stack size K it builds the stack exactly as the
trainer does (`build_stacked_model`, `StackedOptimizer` with the study's optimizer), on random
data of the model's data set's shape and kind (float signals or images, token ids for a
language model; targets per example, per token or per pixel), and times the trainer's hot
loop: each member's batch drawn from its own permutation (with the data set's augmentation)
by `member_batches`, then the stacked step as the trainer's default `step_mode: auto` runs it
(a CUDA graph on a GPU), its losses written into a device buffer. A few warm-up steps first,
then `--steps` timed steps between device synchronisations. Then one forward-only evaluation
pass (`evaluate_stack`, the trainer's evaluation) over `--eval-examples` examples, timed the
same way, and the save of one member's checkpoint (`batchlab.io.save_torch` of its weights
and optimizer state, as the trainer saves each member). No evaluations, checkpoints or
outputs inside the timed steps: `batchlab.estimate` adds them from the plan itself.

Analyses (`--config`). For each study of the config that analyses or interpolates, and each
of its models, one checkpoint's measures as `batchlab.analysis.measure.measure_state` runs
them at the study's settings (`analysis.measures`, each timed alone: Keskar's sharpness
searches, the converged searches of a final checkpoint, the Hessian spectrum, B_simple,
B_noise), and one pair's 1-D interpolation (`interpolate_pair` at the study's alphas), on a
freshly initialised model and random data of the data set's shape and size (the noise
scales run over the whole training set). Each row records the work those settings ask for
(`batchlab.estimate.analysis_work`), from which the estimate scales it to other settings.

Each training row of the CSV (summed over the K members):
    run_steps_per_s       updates of one run per second (K per stacked step)
    examples_per_s        training examples per second (run_steps_per_s * batch_size)
    eval_examples_per_s   examples per second through one member's evaluation (K per example)
    step_ms               milliseconds per stacked step
    checkpoint_ms         milliseconds to save one member's checkpoint
with `measure` = "train". Each analysis row: `measure` (batchlab.estimate.ANALYSIS_MEASURES),
`method`, `work`, `seconds` (per checkpoint, or per pair) and `settings` (the config files and
study). Both kinds carry the model, the data set, its `shape` (input shape:classes) and the
optimizer. Rows are merged into `--out`: a row of the same case (device, model, data set, shape,
optimizer, measure, method, batch_size, k, work) is replaced, every other row is kept, and the
file is written atomically.

Without `--config`, the models' cases: `--dataset`, else the data set a preset (config.yaml,
config/*.yaml) trains the model on, else the first catalogued data set of the kind of input it
takes; `--optimizer` (SGD with momentum by default). With `--config`, every (model, data set,
optimizer) the config trains, at its own batch sizes and stack sizes unless `--batch-sizes` /
`--k` are given, and its analyses unless `--no-analyses`. Usage:

    .venv/bin/python benchmarks/throughput.py --models mlp cnn --batch-sizes 8 32 128 --k 1 12 [--steps 20]
    .venv/bin/python benchmarks/throughput.py --config config/keskar.yaml config/smoke/keskar.yaml --threads 1
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import yaml

from batchlab import io
from batchlab.analysis.interpolate import alpha_grid, interpolate_pair
from batchlab.analysis.measure import analysis_subset, measure_state
from batchlab.config import analysed_runs, build_grid, build_pairs, build_stacks, load_configs
from batchlab.data import Dataset
from batchlab.data.catalog import NAMES as DATASET_NAMES, dataset_info
from batchlab.devices import resolve_device
from batchlab.estimate import (THROUGHPUT_COLUMNS, TRAIN, analysis_methods, analysis_work, data_shape, options_text,
                               interpolation_work, train_size)
from batchlab.io import atomic_path
from batchlab.models import MODEL_INPUTS, MODEL_NAMES, build_model
from batchlab.stacked.models import build_stacked_model
from batchlab.stacked.optim import StackedOptimizer
from batchlab.stacked.step import GRAPH_WARMUP_STEPS, make_step, resolve_step_mode
from batchlab.train.evaluation import evaluate_stack
from batchlab.train.plan import epoch_permutation
from batchlab.train.stack import member_batches

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "throughput.csv"
# SGD with momentum, as most presets train, unless --optimizer or the config says otherwise.
OPTIMIZERS = {
    "sgd": {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "betas": [0.9, 0.999]},
    "adam": {"name": "adam", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "betas": [0.9, 0.999]},
}
EVAL_BATCH_SIZE = 4096  # the schema's default eval.batch_size
LR = 1e-3  # small, so that random labels do not send the weights to inf or NaN within the timed steps
KEY = ["device", "model", "model_options", "dataset", "shape", "optimizer", "measure", "method", "batch_size", "k",
       "work"]


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
    threads = torch.get_num_threads()
    return f"cpu {name} ({threads} thread{'s' if threads != 1 else ''})"


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


def fastest(run, repeats: int, dev: torch.device) -> float:
    """The fastest of `repeats` timings of `run()` between device synchronisations (as timeit does: on a
    shared machine the slower ones time the neighbours)."""
    best = math.inf
    for _ in range(repeats):
        sync(dev)
        start = time.perf_counter()
        run()
        sync(dev)
        best = min(best, time.perf_counter() - start)
    return best


def time_steps(model_name: str, data: Dataset, batch_size: int, k: int, steps: int, warmup: int,
               dev: torch.device, repeats: int = 1, step_mode: str = "auto", optimizer: dict | None = None,
               checkpoint_repeats: int = 0, model_options: dict | None = None) -> tuple[float, float]:
    """Seconds for `steps` stacked steps of K members at `batch_size`, after `warmup` untimed ones: the
    fastest of `repeats` blocks of `steps`. Each step runs as the trainer runs it with `step_mode`
    (batchlab.stacked.step), `optimizer` (default: SGD with momentum) and the study's `model_options`. Then,
    with `checkpoint_repeats`, the fastest of that many saves of member 0's checkpoint (NaN without)."""
    seeds = list(range(k))
    dtype = data.dtype
    model = build_stacked_model(model_name, data.input_shape, data.num_classes, seeds, device=dev, dtype=dtype,
                                options=model_options)
    optimizer = StackedOptimizer(model.params, optimizer or OPTIMIZERS["sgd"])
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
    return best, time_checkpoint(model, optimizer, dev, checkpoint_repeats) if checkpoint_repeats else math.nan


def time_checkpoint(model, optimizer: StackedOptimizer, dev: torch.device, repeats: int) -> float:
    """Seconds to save one member's checkpoint as the trainer does (its weights and optimizer state, one
    checksummed file written atomically): the fastest of `repeats`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "step.pt"
        return fastest(lambda: io.save_torch({"model": model.member_state_dict(0),
                                              "optimizer": optimizer.member_state_dict(0)}, path), repeats, dev)


def time_eval(model_name: str, data: Dataset, k: int, dev: torch.device, model_options: dict | None = None) -> float:
    """Seconds for one evaluation of K members over the test split, after a warm-up on a slice of it."""
    model = build_stacked_model(model_name, data.input_shape, data.num_classes, list(range(k)), device=dev,
                                dtype=data.dtype, options=model_options)
    classes = data.num_classes if data.task == "segmentation" else None
    evaluate_stack(model, data.x_test[:64], data.y_test[:64], EVAL_BATCH_SIZE, classes)
    sync(dev)
    start = time.perf_counter()
    evaluate_stack(model, data.x_test, data.y_test, EVAL_BATCH_SIZE, classes)
    sync(dev)
    return time.perf_counter() - start


# --- the cases of a config ---------------------------------------------------------------------

def config_cases(config: dict) -> dict[tuple[str, str, str, str], dict]:
    """(model, its model options (`options_text`), data set, optimizer name) -> {"options": the data set's config
    options, "optimizer": the study's optimizer, "model_options": the study's options of the model, "sizes": the
    (batch size, K) of its stacks}, for every stack of a checked config."""
    grid = build_grid(config)
    cases: dict[tuple[str, str, str, str], dict] = {}
    for stack in build_stacks(config, grid).values():
        spec = grid[stack.runs[0]]
        key = (spec.model, options_text(spec.model_options), spec.dataset, spec.optimizer["name"])
        case = cases.setdefault(key, {
            "options": config["datasets"].get(spec.dataset) or {}, "optimizer": spec.optimizer,
            "model_options": spec.model_options, "sizes": set()})
        case["sizes"].add((spec.batch_size, len(stack.runs)))
    return cases


def analysed_specs(config: dict) -> list:
    """One run of each (study, model) whose checkpoints are analysed or which is interpolated: an analysed run if
    there is one, else a pair's small end."""
    grid = build_grid(config)
    chosen = {}
    for run_id in analysed_runs(config, grid):
        chosen.setdefault((grid[run_id].study, grid[run_id].model), grid[run_id])
    for pair in build_pairs(config, grid).values():
        spec = grid[pair.candidates[0]]
        chosen.setdefault((spec.study, spec.model), spec)
    return list(chosen.values())


def time_analyses(spec, config: dict, dev: torch.device, repeats: int, settings: str) -> list[dict]:
    """Rows of one checkpoint's analyses (each measure alone) and one pair's interpolation of `spec`'s model at its
    study's settings, on random data of its data set's shape and size and freshly initialised weights."""
    study = config["studies"][spec.study]
    analysis = study["analysis"]
    info = dataset_info(spec.dataset, config["datasets"].get(spec.dataset) or {})
    n_train = train_size(info.n_train, spec.train_fraction)
    data = random_dataset(spec.dataset, info, n_train, info.n_test, "none", dev)
    methods = analysis_methods(spec.model, info, n_train, analysis, spec.model_options)

    def fresh(seed: int):
        torch.manual_seed(seed)
        return build_model(spec.model, info.input_shape, info.num_classes, spec.bn_batch_size, **spec.model_options)

    state = fresh(spec.seed).state_dict()
    base = {"model": spec.model, "model_options": options_text(spec.model_options), "dataset": spec.dataset,
            "shape": data_shape(info), "optimizer": "",
            "settings": settings}
    rows = []
    if analysis["enabled"]:
        x, y = analysis_subset(data, analysis["n_examples"], analysis["seed"])
        final, along = analysis_work(analysis, methods, n_train, True), analysis_work(analysis, methods, n_train, False)
        for measure in along:
            cfg = {**analysis, "measures": [measure]}
            seconds = fastest(lambda: measure_state(spec, state, data, x, y, cfg, final=False), repeats, dev)
            rows.append({**base, "measure": measure, "method": methods[measure], "work": along[measure],
                         "seconds": seconds})
        if "sharpness_converged" in final:  # the final checkpoint's sharpness less Keskar's searches alone
            cfg = {**analysis, "measures": ["sharpness"]}
            both = fastest(lambda: measure_state(spec, state, data, x, y, cfg, final=True), repeats, dev)
            keskar = next(r["seconds"] for r in rows if r["measure"] == "sharpness")
            rows.append({**base, "measure": "sharpness_converged", "method": "", "work": final["sharpness_converged"],
                         "seconds": max(both - keskar, 0.0)})
    if study["interpolation"]["enabled"]:
        interp = study["interpolation"]
        other, model = fresh(spec.seed + 1).state_dict(), fresh(spec.seed)
        seconds = fastest(lambda: interpolate_pair(model, state, other, data, alpha_grid(interp["alphas"]),
                                                   bn_mode=interp["bn_mode"], eval_batch_size=spec.eval["batch_size"],
                                                   bn_batch_size=interp["bn_batch_size"], progress=False), repeats, dev)
        rows.append({**base, "measure": "interpolation", "method": "",
                     "work": interpolation_work(interp, n_train, info.n_test)["interpolation"], "seconds": seconds})
    return rows


# --- the table ----------------------------------------------------------------------------------

def _key(table: pd.DataFrame) -> list[tuple]:
    """Each row's case, blanks and NaN alike (an older table lacks some columns)."""
    cells = table.reindex(columns=KEY).astype(object).where(table.reindex(columns=KEY).notna(), "")
    return [tuple(str(v) for v in row) for row in cells.itertuples(index=False)]


def merge_rows(new: pd.DataFrame, out: Path) -> pd.DataFrame:
    """`out`'s rows with those of `new` in place of any of the same case (KEY); written atomically. Of the same
    case twice in `new` (two studies whose settings ask for the same work), the last is kept."""
    new = new[~pd.Series(_key(new)).duplicated(keep="last").to_numpy()]
    if out.exists():
        old = pd.read_csv(out)
        keys = set(_key(new))
        old = old[[key not in keys for key in _key(old)]]
        table = pd.concat([old, new], ignore_index=True) if len(old) else new
    else:
        table = new
    table = table.reindex(columns=THROUGHPUT_COLUMNS)
    table = table.sort_values(KEY, kind="stable", na_position="first").reset_index(drop=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table


def training_rows(model: str, name: str, options: dict, optimizer: dict, sizes: list[tuple[int, int]], args,
                  dev: torch.device, device: str, model_options: dict | None = None) -> list[dict]:
    """The training rows of one (model, data set, optimizer, model options) at each (batch size, K) of `sizes`."""
    info = dataset_info(name, options)
    n_eval = args.eval_examples or min(info.n_test, 4096 if dev.type == "cuda" else 256)
    # enough training examples for several distinct batches; the trainer's whole set would only cost memory here
    n_pool = min(info.n_train, max(4 * max(b for b, _ in sizes), 4096))
    augment = (options.get("augment") or default_augment(info)) if args.augment == "auto" else args.augment
    data = random_dataset(name, info, n_pool, n_eval, augment, dev)
    rows = []
    for k in sorted({k for _, k in sizes}):
        eval_rate = k * n_eval / time_eval(model, data, k, dev, model_options)
        for batch_size in sorted(b for b, kk in sizes if kk == k):
            if batch_size > n_pool:
                print(f"{model}: skipping batch size {batch_size}, above the {info.n_train} training examples of "
                      f"{name}")
                continue
            seconds, save_s = time_steps(model, data, batch_size, k, args.steps, args.warmup, dev, args.repeats,
                                         optimizer=optimizer, checkpoint_repeats=args.repeats,
                                         model_options=model_options)
            run_steps = k * args.steps / seconds
            rows.append({
                "device": device, "torch": torch.__version__, "model": model,
                "model_options": options_text(model_options), "dataset": name,
                "shape": data_shape(info), "optimizer": optimizer["name"], "augment": augment,
                "batch_size": batch_size, "k": k, "steps": args.steps, "step_ms": 1000 * seconds / args.steps, "run_steps_per_s": run_steps,
                "examples_per_s": run_steps * batch_size, "eval_examples_per_s": eval_rate,
                "checkpoint_ms": 1000 * save_s, "measure": TRAIN,
                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
            r = rows[-1]
            print(f"{model:10} {name:9} {optimizer['name']:4} {batch_size:5d} {k:3d} {r['step_ms']:9.2f} "
                  f"{run_steps:11.1f} {r['examples_per_s']:11.0f} {eval_rate:10.0f} {r['checkpoint_ms']:8.1f}",
                  flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"any of {', '.join(MODEL_NAMES)} (default: mlp, "
                                                                  f"or with --config the config's)")
    parser.add_argument("--config", nargs="+", default=None,
                        help="measure what this config trains and analyses (several files are laid over each other)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="default: 8 32 128 512, or with --config the config's")
    parser.add_argument("--k", nargs="+", type=int, default=None,
                        help="stack sizes (default: 12, the schema's max_stack default, or with --config the config's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=GRAPH_WARMUP_STEPS + 2, help="untimed steps first (a CUDA graph is captured in them)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time --steps (and a checkpoint save) this often and keep the fastest")
    parser.add_argument("--analysis-repeats", type=int, default=1,
                        help="time each analysis this often and keep the fastest")
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="examples of the timed evaluation (default: the test split, at most 4096 on a GPU, "
                             "256 on a CPU)")
    parser.add_argument("--dataset", default=None, help="data set whose shapes to use (default: per model, see above)")
    parser.add_argument("--optimizer", default="sgd", choices=sorted(OPTIMIZERS), help="without --config")
    parser.add_argument("--augment", default="auto", choices=["auto", "none", "crop_flip"],
                        help="augmentation of each member's batch (auto: the data set's, else crop_flip for 3-channel "
                             "images)")
    parser.add_argument("--no-analyses", action="store_true", help="with --config: training rows only")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    unknown = [m for m in args.models or [] if m not in MODEL_NAMES]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True  # as the trainer's default (the config's cudnn_benchmark)
    device = device_label(dev)
    print(f"{device}, torch {torch.__version__}; {args.warmup} warm-up steps, then the fastest of {args.repeats} x "
          f"{args.steps} timed steps per case", flush=True)
    print(f"{'model':10} {'data':9} {'opt':4} {'batch':>5} {'K':>3} {'step ms':>9} {'run-steps/s':>11} "
          f"{'examples/s':>11} {'eval ex/s':>10} {'ckpt ms':>8}", flush=True)
    config = load_configs(args.config) if args.config else None
    rows: list[dict] = []
    try:
        measure(args, config, dev, device, rows)
    finally:  # what was measured before a failure or an interrupt is kept
        if rows:
            table = merge_rows(pd.DataFrame(rows, columns=THROUGHPUT_COLUMNS), args.out)
            print(f"{len(rows)} rows merged into {args.out} ({len(table)} rows, {table['device'].nunique()} devices)")


def measure(args, config: dict | None, dev: torch.device, device: str, rows: list[dict]) -> None:
    """Append to `rows` the training rows the arguments ask for, then, with a config, its analyses' rows."""
    if config is not None:
        for (model, _, name, _), case in config_cases(config).items():
            if args.models and model not in args.models:
                continue
            sizes = sorted(case["sizes"]) if args.batch_sizes is None and args.k is None else \
                [(b, k) for b in args.batch_sizes or sorted({b for b, _ in case["sizes"]})
                 for k in args.k or sorted({k for _, k in case["sizes"]})]
            rows += training_rows(model, name, case["options"], case["optimizer"], sizes, args, dev, device,
                                  case["model_options"])
    else:
        for model in args.models or ["mlp"]:
            name, options = (args.dataset, {}) if args.dataset else default_dataset(model)
            sizes = [(b, k) for b in args.batch_sizes or [8, 32, 128, 512] for k in args.k or [12]]
            rows += training_rows(model, name, options, OPTIMIZERS[args.optimizer], sizes, args, dev, device)
    if config is not None and not args.no_analyses:
        settings = " + ".join(str(Path(p)) for p in args.config)
        for spec in analysed_specs(config):
            if args.models and spec.model not in args.models:
                continue
            timed = time_analyses(spec, config, dev, args.analysis_repeats, f"{settings}: {spec.study}")
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            rows += [{"device": device, "torch": torch.__version__, **r, "measured_at": stamp} for r in timed]
            print(f"{spec.model:10} {spec.dataset:9} {spec.study}: "
                  + ", ".join(f"{r['measure']} {r['seconds']:.3g} s" for r in timed), flush=True)


if __name__ == "__main__":
    sys.exit(main())
