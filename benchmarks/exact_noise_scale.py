"""Exact B_simple (batchlab.analysis.noise_scale.exact_noise_scale) against the same sums made the
plain way, side by side in one process: every chunk's per-example gradients widened to float64,
squared, summed, and added row by row into all the groups' sums. Same model, data, chunks and
groups; prints both times, their ratio and the two values.

    .venv/bin/python benchmarks/exact_noise_scale.py [--n 12000] [--hidden 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.func import grad, vmap

from batchlab.analysis.noise_scale import N_GROUPS, _groups, b_simple_of, exact_noise_scale
from batchlab.analysis.objective import ModelObjective


def plain_b_simple(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int, seed: int) -> float:
    """The reduction as written before: float64 chunks, squared twice, index_add_ into every group's row."""
    n, n_params = len(x), sum(p.numel() for p in model.parameters())
    m, group_of = _groups(n, n_params, N_GROUPS, 2**28, seed)
    obj = ModelObjective(model, x, y, chunk_size=chunk_size)
    w = obj.params()
    per_example = vmap(grad(lambda w, xi, yi: obj._sum_loss(w, xi[None], yi[None])), in_dims=(None, 0, 0))
    grad_sum = torch.zeros(w.numel(), dtype=torch.float64)
    sq_norm_sum = torch.zeros((), dtype=torch.float64)
    group_sums = torch.zeros(m, w.numel(), dtype=torch.float64)
    group_sq = torch.zeros(m, dtype=torch.float64)
    for start in range(0, n, chunk_size):
        g = per_example(w, x[start : start + chunk_size], y[start : start + chunk_size]).double()
        grad_sum += g.sum(0)
        sq_norm_sum += g.pow(2).sum()
        ids = group_of[start : start + chunk_size]
        group_sums.index_add_(0, ids, g)
        group_sq.index_add_(0, ids, g.pow(2).sum(1))
    grad_sq = (grad_sum / n).pow(2).sum().item()
    return b_simple_of(sq_norm_sum.item() / n - grad_sq, grad_sq)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.n, 784, generator=g), torch.randint(0, 10, (args.n,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden), nn.ReLU(),
                          nn.Linear(args.hidden, 10))
    started = time.perf_counter()
    plain = plain_b_simple(model, x, y, 256, seed=0)
    t_plain = time.perf_counter() - started
    started = time.perf_counter()
    ours = exact_noise_scale(model, x, y, chunk_size=256, seed=0).b_simple
    t_ours = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    print(f"exact B_simple, {args.n} examples, MLP of {params:,} parameters, {args.threads} thread(s)")
    print(f"plain float64 reduction {t_plain:6.2f} s   B_simple {plain:.6f}")
    print(f"batchlab                {t_ours:6.2f} s   B_simple {ours:.6f}")
    print(f"speed-up {t_plain / t_ours:.2f}x, relative difference {abs(ours - plain) / abs(plain):.1e}")


if __name__ == "__main__":
    main()
