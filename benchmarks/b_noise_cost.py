"""Benchmark: the cost and accuracy of B_noise's two methods (batchlab.analysis.b_noise) on MNIST-1D.

For each model (mlp, cnn) at a freshly initialised and a briefly trained point (SGD on all
4000 training examples, momentum 0.9, lr 0.05, batch 64, --steps steps), measured on the
first --n-train training examples of the default MNIST-1D (4000 x 40, generated here):
- exact: every per-example gradient and n + 1 HVPs; seconds and the value (the reference);
- probes, fixed: --fixed-probes probes with seed 0; the per-probe coefficient of variation
  of v^T H v (cv), hence about ceil((cv / 0.1)^2) probes for a 10% relative standard error;
- probes, adaptive: the defaults' rule (n_probes, then more until rel_error 0.1, at most
  --max-probes), once per seed in --seeds: probes taken, seconds, whether the target was met,
  the estimate's relative error against exact and whether its 95% interval covers exact.
Timings are time.perf_counter around model_b_noise (setup included), --threads torch threads.

Run:
    .venv/bin/python benchmarks/b_noise_cost.py [--models mlp cnn] [--n-train 4000] [--no-exact-for cnn:fresh]

At n = 4000 on one CPU thread exact costs about 1 CPU minute (MLP) and 4-5 (CNN) per point.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from batchlab.analysis.b_noise import model_b_noise  # noqa: E402
from batchlab.data.mnist1d import generate_mnist1d  # noqa: E402
from batchlab.models import build_model  # noqa: E402


def train_briefly(model, x, y, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def timed(model, x, y, cfg, seed=0):
    """The result and its wall-clock seconds; the process's CPU seconds are printed beside them,
    a fairer measure on a shared machine with --threads 1."""
    t0, c0 = time.perf_counter(), time.process_time()
    r = model_b_noise(model, x, y, cfg, seed=seed)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    CPU_SECONDS.append(cpu)
    return r, wall


CPU_SECONDS: list[float] = []


def cpu() -> str:
    return f"cpu {CPU_SECONDS[-1]:.1f} s"



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--fixed-probes", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-probes", type=int, default=200)
    ap.add_argument("--no-exact-for", nargs="*", default=[],
                    help="no exact value for these: a model (cnn) or a model at one state (cnn:fresh)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    d = generate_mnist1d()
    x_all, y_all = torch.from_numpy(d["x_train"]), torch.from_numpy(d["y_train"])
    x, y = x_all[: args.n_train], y_all[: args.n_train]  # measured on these; trained on all 4000
    test_x, test_y = torch.from_numpy(d["x_test"]), torch.from_numpy(d["y_test"])
    print(f"MNIST-1D, n = {len(x)}, torch {torch.__version__}, {args.threads} thread(s)")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, (x.shape[1],), 10)
        n_params = sum(p.numel() for p in model.parameters())
        for state in ("fresh", "trained"):
            if state == "trained":
                train_briefly(model, x_all, y_all, args.steps)
            with torch.no_grad():
                acc = (model(test_x).argmax(1) == test_y).float().mean().item()
                loss = F.cross_entropy(model(x), y).item()
            steps = f" ({args.steps} SGD steps)" if state == "trained" else ""
            print(f"\n== {name} ({n_params} parameters), {state}{steps}: train loss {loss:.3f}, test acc {acc:.3f}")
            exact = None
            if name not in args.no_exact_for and f"{name}:{state}" not in args.no_exact_for:
                exact, secs = timed(model, x, y, {"method": "exact"})
                print(f"exact: B_noise {exact.b_noise:.4g} = tr(H Sigma) {exact.trace_h_sigma:.4g} / G^T H G "
                      f"{exact.g_h_g:.4g}; B_simple {exact.b_simple:.4g}; {exact.n_hvp} HVPs, {secs:.1f} s ({cpu()})")
            fixed, secs = timed(model, x, y, {"method": "probes", "n_probes": args.fixed_probes,
                                              "max_probes": args.fixed_probes})
            cv = fixed.stderr * math.sqrt(fixed.n_probes) / abs(fixed.trace_h_sigma)
            vs = f", {fixed.b_noise / exact.b_noise - 1:+.3f} vs exact" if exact else ""
            print(f"probes x{fixed.n_probes}: B_noise {fixed.b_noise:.4g} [{fixed.ci_low:.4g}, {fixed.ci_high:.4g}]"
                  f"{vs}; B_simple {fixed.b_simple:.4g}; per-probe cv {cv:.2f} -> ~{math.ceil((cv / 0.1) ** 2)} "
                  f"probes for 10%; {secs:.1f} s ({cpu()}, {secs / fixed.n_hvp * 1000:.0f} ms per probe)")
            rows = []
            for seed in range(args.seeds):
                r, secs = timed(model, x, y, {"method": "probes", "max_probes": args.max_probes}, seed=seed)
                err = r.b_noise / exact.b_noise - 1 if exact else math.nan
                cover = (r.ci_low <= exact.b_noise <= r.ci_high) if exact else None
                rows.append((r.n_probes, secs, r.rel_error_met, err, cover))
                versus = f" ({err:+.3f} vs exact), covers exact {cover}" if exact else ""
                print(f"  adaptive seed {seed}: {r.n_probes} probes, {secs:.1f} s ({cpu()}), met {r.rel_error_met}, "
                      f"B_noise {r.b_noise:.4g}{versus}")
            probes, secs, met, err, cover = zip(*rows)
            versus = (f"|error| vs exact median {np.median(np.abs(err)):.3f} max {np.max(np.abs(err)):.3f}, "
                      f"covered {sum(cover)}/{len(cover)}") if exact else "no exact value"
            print(f"adaptive (rel_error 0.1, max {args.max_probes}): probes median {int(np.median(probes))}, "
                  f"seconds median {np.median(secs):.1f}, met {sum(met)}/{len(met)}, {versus}")

if __name__ == "__main__":
    main()
