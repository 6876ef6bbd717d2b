"""Coverage of the noise-scale intervals (batchlab.analysis.noise_scale) at MNIST-1D checkpoints.

A model (default: the MLP) is trained here with SGD on freshly generated MNIST-1D (4000/1000),
and at each of `--steps` (0: the initial weights) two checks run at the same weights:

1. two_batch: over `--seeds` seeds, how often the 95% interval of the two-batch estimate holds
   the exact B_simple of the 4000 training examples, with the config's defaults (b_small 32,
   b_big 512, n_draws 10, max_draws 400, rel_error 0.1, n_bootstrap 1000) and the module's
   (min_stop_draws 50): the module's Fieller interval and, on the very same draws, the
   percentile bootstrap interval it used before; how often the error target was met
   (`rel_error_met`); and the draws taken. With `--early-stop` also the Fieller interval when
   the target may end the drawing at the first check (min_stop_draws=1, the former rule).
2. exact: over `--sets` disjoint training sets of `--n-exact` examples drawn from a fresh pool
   of MNIST-1D (another generator seed; the weights never saw it), how often the exact
   method's interval holds the pool's own B_simple, and how far the exact values lie below it.

Speed: a batch's |G_B|^2 is taken from the Gram matrix K = g g^T of the per-example gradients
(|G_B|^2 = sum_{i,j in B} K_ij / B^2), float64, and handed to `two_batch_noise_scale` as a
one-element "gradient" of that norm: the estimator uses only the squared norm. Per checkpoint,
one seed is checked against the model's own batch gradients (`model_two_batch_noise_scale`).
The trained weights depend on `--threads` (the order of floating-point sums), and so do the
late checkpoints' values. Usage (about 40 minutes on 2 shared CPU cores with the defaults and
`--early-stop`, most of it at the last checkpoint, where every run takes 400 draws):

    .venv/bin/python benchmarks/noise_scale_coverage.py [--model mlp] [--steps 0 300 3000] \\
        [--seeds 100] [--sets 40] [--n-exact 1000] [--early-stop] [--out coverage.csv]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchlab.analysis import noise_scale as ns  # noqa: E402
from batchlab.data import load_prepared  # noqa: E402
from batchlab.data.mnist1d import generate_mnist1d, prepare_mnist1d  # noqa: E402
from batchlab.models import build_model  # noqa: E402

DEFAULTS = dict(b_small=32, b_big=512, n_draws=10, max_draws=400, rel_error=0.1, n_bootstrap=1000)


def per_example_gram(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """K = g g^T (n x n, float64) over the per-example gradients g of the cross-entropy, in eval mode."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    rows = []
    for i in range(0, len(x), chunk):
        g = per_example(params, x[i : i + chunk], y[i : i + chunk])
        rows.append(torch.cat([v.reshape(len(x[i : i + chunk]), -1) for v in g.values()], 1))
    g = torch.cat(rows)  # float32, n x P
    gram = torch.empty(len(g), len(g), dtype=torch.float64)
    for i in range(0, len(g), chunk):
        block = g[i : i + chunk].double()
        for j in range(0, len(g), chunk):
            gram[i : i + chunk, j : j + chunk] = block @ g[j : j + chunk].double().T
    return gram


class GramBatches:
    """batch_grad(idx) -> a one-element tensor whose square is |G_B|^2; records each squared norm."""

    def __init__(self, gram: torch.Tensor):
        self.flat, self.n, self.seen = gram.reshape(-1), len(gram), []

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        sq = self.flat[(idx[:, None] * self.n + idx[None, :]).reshape(-1)].sum() / len(idx) ** 2
        self.seen.append(sq.item())
        return sq.clamp(min=0).sqrt().reshape(1)


def percentile_interval(draws: np.ndarray, b_simple: float, seed: int) -> tuple[float, float]:
    """The former interval: 95% percentile bootstrap of B_simple over resampled draws (same resamples)."""
    resampled = ns._bootstrap_b_simple(draws, DEFAULTS["b_small"], DEFAULTS["b_big"], DEFAULTS["n_bootstrap"], seed)
    low, high = np.quantile(resampled, [0.025, 0.975], method="inverted_cdf")
    return float(low), math.inf if b_simple == math.inf else float(high)


def train(model: nn.Module, data, steps: list[int], lr: float, batch: int):
    """Yield (step, model) at each of `steps` of SGD with momentum 0.9 on the training set."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    done = 0
    for target in sorted(steps):
        model.train()
        for _ in range(target - done):
            idx = torch.randint(data.n_train, (batch,), generator=gen)
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        done = target
        yield target, model


def two_batch_check(model, data, seeds: int, early_stop: bool) -> dict:
    exact = ns.exact_noise_scale(model, data.x_train, data.y_train).b_simple
    gram = per_example_gram(model, data.x_train, data.y_train)
    # one seed against the model's own batch gradients
    real = ns.model_two_batch_noise_scale(model, data.x_train, data.y_train, DEFAULTS["b_small"], DEFAULTS["b_big"],
                                          10, seed=0, max_draws=10)
    via = ns.two_batch_noise_scale(GramBatches(gram), data.n_train, DEFAULTS["b_small"], DEFAULTS["b_big"], 10, 0)
    agree = max(abs(real.g_small_sq / via.g_small_sq - 1), abs(real.g_big_sq / via.g_big_sq - 1))
    fieller, percentile, met, draws, unbounded, early, early_draws = [], [], [], [], [], [], []
    for seed in range(seeds):
        batches = GramBatches(gram)
        kw = {k: v for k, v in DEFAULTS.items() if k not in ("b_small", "b_big", "n_draws")}
        r = ns.two_batch_noise_scale(batches, data.n_train, DEFAULTS["b_small"], DEFAULTS["b_big"],
                                     DEFAULTS["n_draws"], seed, **kw)
        lo, hi = percentile_interval(np.asarray(batches.seen).reshape(-1, 2), r.b_simple, seed)
        fieller.append(r.ci_low <= exact <= r.ci_high)
        percentile.append(lo <= exact <= hi)
        met.append(r.rel_error_met)
        draws.append(r.n_draws)
        unbounded.append(r.ci_high == math.inf)
        if early_stop:
            e = ns.two_batch_noise_scale(GramBatches(gram), data.n_train, DEFAULTS["b_small"], DEFAULTS["b_big"],
                                         DEFAULTS["n_draws"], seed, **kw, min_stop_draws=1)
            early.append(e.ci_low <= exact <= e.ci_high)
            early_draws.append(e.n_draws)
    out = dict(exact=exact, two_batch_fieller=np.mean(fieller), two_batch_percentile=np.mean(percentile),
               two_batch_met=np.mean(met), two_batch_draws=np.median(draws), two_batch_unbounded=np.mean(unbounded),
               model_vs_gram=agree)
    if early_stop:
        out |= dict(early_stop_fieller=np.mean(early), early_stop_draws=np.median(early_draws))
    return out


def exact_check(model, pool_x, pool_y, n: int, sets: int) -> dict:
    truth = ns.exact_noise_scale(model, pool_x, pool_y).b_simple
    measured = [ns.exact_noise_scale(model, pool_x[k * n : (k + 1) * n], pool_y[k * n : (k + 1) * n], seed=k)
                for k in range(sets)]
    values = np.array([m.b_simple for m in measured])
    return dict(pool_b_simple=truth, exact_mean_value=values.mean(),
                exact_coverage=np.mean([m.ci_low <= truth <= m.ci_high for m in measured]),
                exact_unbounded=np.mean([m.ci_high == math.inf for m in measured]),
                exact_holds_value=np.mean([m.ci_low <= m.b_simple <= m.ci_high for m in measured]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--steps", type=int, nargs="+", default=[0, 300, 3000])
    p.add_argument("--seeds", type=int, default=100, help="two-batch measurements per checkpoint")
    p.add_argument("--sets", type=int, default=40, help="disjoint training sets for the exact check")
    p.add_argument("--n-exact", type=int, default=1000, help="examples in each of those sets")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--early-stop", action="store_true", help="also the former stopping rule (min_stop_draws=1)")
    p.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        prepare_mnist1d(Path(tmp) / "mnist1d.npz")
        data = load_prepared(Path(tmp) / "mnist1d.npz")
    pool = generate_mnist1d(args.sets * args.n_exact, 1, seed=7)  # another sample of the same distribution
    order = np.random.default_rng(0).permutation(args.sets * args.n_exact)  # generated class by class
    pool_x, pool_y = torch.from_numpy(pool["x_train"][order]), torch.from_numpy(pool["y_train"][order])

    torch.manual_seed(0)
    model = build_model(args.model, data.input_shape, data.num_classes)
    rows = []
    for step, model in train(model, data, args.steps, args.lr, args.batch):
        start = time.perf_counter()
        with torch.no_grad():
            model.eval()
            loss = F.cross_entropy(model(data.x_train), data.y_train).item()
        row = dict(model=args.model, step=step, train_loss=loss)
        row |= two_batch_check(model, data, args.seeds, args.early_stop)
        row |= exact_check(model, pool_x, pool_y, args.n_exact, args.sets)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{args.model}, {args.seeds} two-batch seeds per checkpoint ({DEFAULTS}), exact on {args.sets} sets of "
          f"{args.n_exact} from a pool of {args.sets * args.n_exact}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"pooled coverage: two-batch Fieller {table['two_batch_fieller'].mean():.3f}, two-batch percentile "
          f"{table['two_batch_percentile'].mean():.3f}"
          + (f", Fieller with the former stop {table['early_stop_fieller'].mean():.3f}" if args.early_stop else "")
          + f"; exact interval of the pool's value {table['exact_coverage'].mean():.3f}")
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
