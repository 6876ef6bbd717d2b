"""Stacked training against the plain PyTorch loop, side by side in one run.

For each model and batch size, on MNIST-1D-shaped data (or CIFAR-shaped for resnet8), it times:
- the plain loop: TensorDataset + DataLoader + nn.Module + torch.optim + `.item()` every step;
- batchlab's trainer (`train_stack`) with K = 1 (a single run: a stack of one) and K = 4, 12, 48
  runs of different seeds and LRs, everything included (model building, the evaluations at the
  first and last step, outputs), but no evaluation points or checkpoints in between, so that the
  figures show the training step;
and prints run-steps/s (updates of one run per second, summed over the stack), examples/s, and
the ratio to the plain loop. Each case runs `--repeats` times, interleaved with the others, and the
fastest counts (as `timeit` does: on a shared machine the slower ones measure the neighbours). Usage:

    .venv/bin/python benchmarks/stacked_training.py [--steps 300] [--threads 2] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from batchlab.config import build_grid, check_config
from batchlab.data import Dataset
from batchlab.models import build_model
from batchlab.stacked.optim import build_optimizer
from batchlab.train.loop import train_stack

OPTIMIZER = {"name": "sgd", "momentum": 0.9}


def fake_data(model: str, n: int = 4000) -> Dataset:
    g = torch.Generator().manual_seed(0)
    shape = (3, 32, 32) if model.startswith("resnet") else (40,)
    x = torch.randn(n + 500, *shape, generator=g)
    y = torch.randint(0, 10, (n + 500,), generator=g)
    return Dataset("cifar10" if model.startswith("resnet") else "mnist1d", x[:n], y[:n], x[n:], y[n:], 10)


def plain_loop(model_name: str, data: Dataset, batch_size: int, steps: int) -> float:
    """Seconds for `steps` updates of the textbook loop."""
    torch.manual_seed(0)
    model = build_model(model_name, data.input_shape, data.num_classes)
    optimizer = build_optimizer(model.parameters(), {**OPTIMIZER, "nesterov": False, "weight_decay": 0.0}, 0.01)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True, drop_last=True)
    done, start = 0, time.perf_counter()
    while done < steps:
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def stack_specs(model: str, batch_size: int, k: int, steps: int, n_train: int) -> list:
    seeds = list(range(max(1, k // 4)))
    base_lrs = [0.01, 0.02, 0.005, 0.03][: min(k, 4)]
    study = {"dataset": "cifar10" if model.startswith("resnet") else "mnist1d", "models": [model],
             "batch_sizes": [batch_size], "lr_rules": ["constant"], "base_lrs": base_lrs, "seeds": seeds,
             "optimizer": OPTIMIZER, "budget": {"steps": steps}, "eval": {"regular_points": 1, "log_points": 0},
             "checkpoints": {"log_points": 0}}
    cfg = check_config({"device": "cpu", "datasets": {"mnist1d": {"n_train": n_train}, "cifar10": {"root": "/none"}},
                        "studies": {"bench": study}})
    return list(build_grid(cfg).values())[:k]


def stacked(model: str, data: Dataset, batch_size: int, k: int, steps: int) -> float:
    specs = stack_specs(model, batch_size, k, steps, data.n_train)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_stack(specs, data, [f"{tmp}/{i}" for i in range(k)], device="cpu", progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="mlp at batch 32 only, K = 1 and 12")
    parser.add_argument("--repeats", type=int, default=3, help="time each case this often and keep the fastest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("batchlab").setLevel(logging.ERROR)  # short random-data runs stall; that is not news here
    cases = [("mlp", 32)] if args.quick else [(m, b) for m in ("mlp", "cnn") for b in (8, 32, 128)] + [("resnet8", 8), ("resnet8", 32)]
    ks = (1, 12) if args.quick else (1, 4, 12, 48)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps per run (resnet8: a fifth, K <= 4), "
          f"fastest of {args.repeats}")
    print(f"{'model':8} {'batch':>5} {'how':>12} {'run-steps/s':>12} {'examples/s':>11} {'vs plain':>9}")
    for model, batch in cases:
        steps = args.steps // 5 if model.startswith("resnet") else args.steps
        data = fake_data(model)
        how = {"plain loop": lambda: plain_loop(model, data, batch, steps)}
        for k in ks if not model.startswith("resnet") else [k for k in ks if k <= 4]:  # larger ResNet stacks take minutes on a CPU
            how[f"stack K={k}"] = lambda k=k: stacked(model, data, batch, k, steps) / k
        times = {name: [] for name in how}
        for _ in range(args.repeats):  # interleaved, so that a busy spell on a shared machine slows every contender alike
            for name, run in how.items():
                times[name].append(run())
        seconds = {name: min(t) for name, t in times.items()}
        for name, s in seconds.items():
            rate = steps / s
            print(f"{model:8} {batch:5d} {name:>12} {rate:12.0f} {rate * batch:11.0f} {seconds['plain loop'] / s:9.2f}", flush=True)

if __name__ == "__main__":
    main()
