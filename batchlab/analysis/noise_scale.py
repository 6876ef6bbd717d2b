"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 at one parameter point (McCandlish et al. 2018).

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training": with G
the full-batch gradient and Sigma the covariance of per-example gradients, B_simple
approximates the critical batch size, below which larger batches cut the number of steps
almost proportionally and above which they stop helping.

Estimator (their Appendix A): the mean gradient G_B of a batch of B examples satisfies

    E |G_B|^2 = |G|^2 + tr(Sigma) / B,

so squared norms measured at two batch sizes B_small < B_big give unbiased estimates

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big).

Everything is measured at *one* parameter point (not along consecutive steps, whose
gradients differ). |G_small|^2 and |G_big|^2 are each averaged over `n_draws` independent
batches *first*, and only then are the two estimates formed and divided: the ratio of
averages, as McCandlish et al. advise, since the average of per-draw ratios is dominated by
draws whose |G|^2 estimate is near zero.

Batches are drawn WITH replacement from the n training examples. The identity above then
holds exactly for a finite training set, with Sigma the population covariance of the n
per-example gradients (normalised by n), so both estimates are exactly unbiased. (Without
replacement the noise term picks up the factor (n - B) / (n - 1).)

When the |G|^2 estimate is not positive (noise swamped the signal: it happens near a
minimum, or with too few draws), `b_simple` is +inf: the noise scale is then larger than
these batch sizes can resolve, and tr(Sigma) / |G|^2 tends to +inf as |G|^2 falls to zero.
It is nan only when both estimates are zero (every gradient is zero: nothing to measure).
A negative tr(Sigma) estimate (noise below resolution) gives a negative `b_simple`, left
as measured; the raw estimates are kept in the result either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from batchlab.analysis.objective import ModelObjective


@dataclass
class NoiseScale:
    """One noise-scale measurement: the estimate, its two parts, and what they came from."""

    b_simple: float  # tr(Sigma) / |G|^2 (see the module docstring for inf and nan)
    grad_sq: float  # unbiased estimate of |G|^2
    trace_sigma: float  # unbiased estimate of tr(Sigma)
    g_small_sq: float  # mean over draws of |G_B|^2 at B = b_small
    g_big_sq: float  # mean over draws of |G_B|^2 at B = b_big
    b_small: int
    b_big: int
    n_draws: int


def _check_args(n: int, b_small: int, b_big: int, n_draws: int) -> None:
    if n < 1:
        raise ValueError(f"need at least one training example, got n={n}")
    if b_small < 1:
        raise ValueError(f"b_small must be at least 1, got {b_small}")
    if b_big <= b_small:
        raise ValueError(f"b_big must be larger than b_small, got b_small={b_small} and b_big={b_big}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}")


def noise_scale_from_norms(g_small_sq: float, g_big_sq: float, b_small: int, b_big: int, n_draws: int) -> NoiseScale:
    """The two unbiased estimates and their ratio, from mean squared gradient norms at two batch sizes."""
    grad_sq = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    trace_sigma = (g_small_sq - g_big_sq) / (1 / b_small - 1 / b_big)
    if grad_sq > 0:
        b_simple = trace_sigma / grad_sq
    elif trace_sigma > 0:
        b_simple = math.inf  # signal below the noise: B_simple beyond what these batches resolve
    else:
        b_simple = math.nan  # all gradients zero
    return NoiseScale(b_simple, grad_sq, trace_sigma, g_small_sq, g_big_sq, b_small, b_big, n_draws)


def two_batch_noise_scale(
    batch_grad: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    b_small: int,
    b_big: int,
    n_draws: int = 10,
    seed: int = 0,
) -> NoiseScale:
    """B_simple from the two-batch-size estimator of McCandlish et al. 2018 (Appendix A).

    `batch_grad(indices)` returns the mean gradient (flat) over those examples of an
    n-example training set; `indices` (int64, on the CPU) may repeat, since each batch is
    drawn with replacement from a torch.Generator seeded with `seed`. Each of the `n_draws`
    draws takes one small and one big batch.
    """
    _check_args(n, b_small, b_big, n_draws)
    gen = torch.Generator().manual_seed(seed)
    small, big = 0.0, 0.0
    for _ in range(n_draws):
        small += batch_grad(torch.randint(n, (b_small,), generator=gen)).double().pow(2).sum().item()
        big += batch_grad(torch.randint(n, (b_big,), generator=gen)).double().pow(2).sum().item()
    return noise_scale_from_norms(small / n_draws, big / n_draws, b_small, b_big, n_draws)


def model_noise_scale(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    b_small: int = 32,
    b_big: int = 512,
    n_draws: int = 10,
    seed: int = 0,
    bn_mode: str = "eval",
) -> NoiseScale:
    """B_simple of a model's mean cross-entropy on (x, y), at its current weights (McCandlish et al. 2018).

    Each batch's gradient comes from a `ModelObjective` on that batch with `bn_mode`
    ("eval": BN running statistics; "batch": the statistics of each batch). No augmentation
    is applied. The model's weights are not changed, and its train/eval mode is restored.
    """
    _check_args(len(x), b_small, b_big, n_draws)
    if len(x) != len(y):
        raise ValueError(f"need as many labels as inputs: got {len(x)} and {len(y)}")
    was_training = model.training

    def batch_grad(idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(x.device)
        # chunk_size=len(idx): in batch mode BN must see the whole batch at once
        obj = ModelObjective(model, x[idx], y[idx], bn_mode=bn_mode, chunk_size=len(idx))
        return obj.loss_and_grad(obj.params())[1]

    try:
        return two_batch_noise_scale(batch_grad, len(x), b_small, b_big, n_draws, seed)
    finally:
        model.train(was_training)
