"""Step modes on a GPU: the stacked step eager, captured in a CUDA graph, or compiled, side by side.

For each model, batch size and stack size K it times the trainer's hot loop as
`throughput.time_steps` does (each member's batch from its own permutation, then the step the
`step_mode` asks for, its losses into a device buffer), on random CIFAR-shaped data, and
prints the aggregate images/s of the K members and the ratio to ONE EAGER RUN (K = 1, eager)
at the same model and batch size. The textbook loop (one nn.Module, torch.optim, `.item()`
every step, data already on the device) is timed too, as a second reference.

Each case's step count is sized to take about `--seconds`, from a short calibration run; the
fastest of `--repeats` blocks counts. Cases of more than `--max-images` images per step are
skipped (memory), and so is everything once `--deadline-s` has passed (the rows so far are
kept). Rows go to `--out` as CSV, written atomically after every case. Usage:

    python benchmarks/step_modes.py [--models resnet8 resnet32] [--batch-sizes 8 32 512] \\
        [--k 1 4 12 48] [--modes eager cuda_graph] [--augment none] [--out step_modes.csv]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from batchlab.data.catalog import dataset_info
from batchlab.io import atomic_path
from batchlab.models import build_model
from batchlab.stacked import models as stacked_models
from batchlab.stacked.optim import build_optimizer
from batchlab.stacked.step import GRAPH_WARMUP_STEPS
from batchlab.devices import resolve_device

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("throughput_benchmark", HERE / "throughput.py")
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)

WARMUP = GRAPH_WARMUP_STEPS + 2  # the capture happens inside the untimed steps


def plain_seconds(model_name: str, data, batch_size: int, steps: int, dev: torch.device) -> float:
    """Seconds for `steps` updates of the textbook loop on the device, after WARMUP untimed ones."""
    torch.manual_seed(0)
    model = build_model(model_name, data.input_shape, data.num_classes).to(dev)
    optimizer = build_optimizer(model.parameters(), throughput.OPTIMIZER, throughput.LR)
    g = torch.Generator(device=dev).manual_seed(0)

    def run(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(0, data.n_train, (batch_size,), generator=g, device=dev)
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()

    run(WARMUP)
    throughput.sync(dev)
    start = time.perf_counter()
    run(steps)
    throughput.sync(dev)
    return time.perf_counter() - start


def seconds_per_step(measure, seconds: float, most: int = 400) -> float:
    """`measure(n)` seconds for n steps: a 3-step calibration, then about `seconds` worth of steps."""
    steps = int(min(most, max(5, seconds / max(measure(3) / 3, 1e-6))))
    return measure(steps) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet8", "resnet32"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 512])
    parser.add_argument("--k", nargs="+", type=int, default=[1, 4, 12, 48])
    parser.add_argument("--modes", nargs="+", default=["eager", "cuda_graph"], choices=["eager", "cuda_graph"])
    parser.add_argument("--member-loop-from", type=int, default=None,
                        help="run the conv nets member by member from this batch size on (batchlab.stacked.models."
                             "MEMBER_LOOP_MIN_BATCH), instead of the device's default")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                        help="let cuDNN time its convolution algorithms, as the trainer does on a GPU (the config's "
                             "cudnn_benchmark)")
    parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                        help="time the textbook loop too")
    parser.add_argument("--augment", default="none", choices=["none", "crop_flip"])
    parser.add_argument("--seconds", type=float, default=1.0, help="about this long per timed block")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=8192, help="skip cases of more images per step")
    parser.add_argument("--deadline-s", type=float, default=math.inf, help="skip every case after this long")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=HERE / "step_modes.csv")
    args = parser.parse_args(argv)
    dev = resolve_device(args.device)
    if args.member_loop_from is not None:
        stacked_models.MEMBER_LOOP_MIN_BATCH[dev.type] = args.member_loop_from
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    loop_from = stacked_models.MEMBER_LOOP_MIN_BATCH.get(dev.type)
    layout = ("grouped convolutions" if loop_from is None else f"member by member from batch {loop_from}") + (
        ", cudnn.benchmark" if args.cudnn_benchmark else "")
    label = throughput.device_label(dev)
    started = time.perf_counter()
    print(f"{label}, torch {torch.__version__}; {WARMUP} warm-up steps, then the fastest of {args.repeats} blocks "
          f"of about {args.seconds:g} s per case; augment {args.augment}; {layout}", flush=True)
    print(f"{'model':9} {'batch':>5} {'K':>3} {'mode':>10} {'step ms':>9} {'images/s':>10} {'vs 1 eager':>10}",
          flush=True)
    info = dataset_info("cifar10", {"root": "/none"})
    rows: list[dict] = []

    def record(model, batch, k, mode, step_s, seconds_total):
        rate = k * batch / step_s
        one_eager = rate if (k, mode) == (1, "eager") else next(
            (r["images_per_s"] for r in rows if (r["model"], r["batch_size"], r["k"], r["mode"]) == (model, batch, 1, "eager")),
            math.nan)
        rows.append({"device": label, "torch": torch.__version__, "model": model, "batch_size": batch, "k": k,
                     "mode": mode, "layout": layout, "augment": args.augment, "step_ms": 1000 * step_s, "images_per_s": rate,
                     "vs_one_eager_run": rate / one_eager, "timed_s": seconds_total})
        print(f"{model:9} {batch:5d} {k:3d} {mode:>10} {1000 * step_s:9.3f} {rate:10.0f} {rate / one_eager:10.2f}",
              flush=True)
        with atomic_path(args.out) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")

    for model in args.models:
        for batch in args.batch_sizes:
            data = throughput.random_dataset("cifar10", info, max(4 * batch, 4096), 64, args.augment, dev)
            cases = [(k, mode) for k in sorted(args.k) for mode in args.modes if k * batch <= args.max_images]
            if (1, "eager") not in cases:
                cases.insert(0, (1, "eager"))  # every ratio is to one eager run
            for k, mode in cases:
                if time.perf_counter() - started > args.deadline_s:
                    print(f"deadline of {args.deadline_s:g} s passed: {model} batch {batch} K={k} {mode} and later "
                          "cases skipped", flush=True)
                    return
                t0 = time.perf_counter()
                try:
                    step_s = seconds_per_step(lambda n: throughput.time_steps(
                        model, data, batch, k, n, WARMUP, dev, 1 if n == 3 else args.repeats, mode), args.seconds)
                except torch.OutOfMemoryError:
                    print(f"{model:9} {batch:5d} {k:3d} {mode:>10} out of memory", flush=True)
                    torch.cuda.empty_cache()
                    continue
                record(model, batch, k, mode, step_s, time.perf_counter() - t0)
            if args.plain:
                t0 = time.perf_counter()
                step_s = seconds_per_step(lambda n: plain_seconds(model, data, batch, n, dev), args.seconds)
                record(model, batch, 1, "plain", step_s, time.perf_counter() - t0)
    print(f"{len(rows)} rows in {args.out}; {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
