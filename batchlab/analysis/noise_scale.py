"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 at one parameter point (McCandlish et al. 2018).

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training": with G
the full-batch gradient and Sigma the covariance of per-example gradients, B_simple
approximates the critical batch size, below which larger batches cut the number of steps
almost proportionally and above which they stop helping.

The training set of n examples is the population: G = mean_i g_i over the per-example
gradients g_i of the mean cross-entropy, and Sigma is their population covariance
(normalised by n). Everything is measured at *one* parameter point (not along consecutive
steps, whose gradients differ). Two methods:

**exact** (`exact_noise_scale`): every per-example gradient, by `torch.func`
(`vmap(grad(...))` over the `ModelObjective`'s functional loss), streamed in chunks; only
the running sum of the g_i and the sum of their squared norms are kept (in float64), never
the n x P matrix of gradients. Then

    |G|^2 = |sum_i g_i / n|^2,   tr(Sigma) = mean_i |g_i|^2 - |G|^2.

Cost: about one forward and backward pass per example, in chunks of `chunk_size`. It is an
exact value, not an estimate (its interval has width zero). Per-example gradients exist
only when examples do not interact: BatchNorm must use its running statistics (bn_mode
"eval") or be absent, and `torch.func.vmap` must support every layer (it has no batching
rule for the fused recurrent kernels of nn.GRU / nn.LSTM / nn.RNN).

**two_batch** (`two_batch_noise_scale`, their Appendix A): the mean gradient G_B of a batch
of B examples drawn WITH replacement satisfies, exactly for a finite training set,

    E |G_B|^2 = |G|^2 + tr(Sigma) / B,

so squared norms measured at two batch sizes B_small < B_big give unbiased estimates

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big).

(Without replacement the noise term picks up the factor (n - B) / (n - 1).) Each draw takes
one small and one big batch. |G_small|^2 and |G_big|^2 are averaged over the draws *first*,
and only then are the two estimates formed and divided: the ratio of averages, as McCandlish
et al. advise, since the average of per-draw ratios is dominated by draws whose |G|^2
estimate is near zero. At these batch sizes the |G|^2 estimate is very noisy (a coefficient
of variation of 1 to 9 per draw on MNIST-1D), so the number of draws is adaptive: at least
`n_draws`, then more in blocks until B_simple is finite and non-negative and its bootstrap
standard error (resampling the draws, `n_bootstrap` times) is at most `rel_error` *
B_simple, or `max_draws` is reached. The reported interval is the 95% percentile bootstrap interval of B_simple over
those resamples (order statistics, so resamples with an infinite B_simple take part). The
bootstrap is seeded, so a measurement is reproducible from its `seed`. With few draws the
bootstrap's error is itself unreliable (on MNIST-1D, intervals from 10 draws covered the
exact value in only 70-85% of cases), hence a negative or infinite estimate never ends the
drawing, and `n_draws` should not be set very low. Stopping on the
data's own standard error makes the estimate very slightly dependent on the stopping rule;
with a fixed number of draws (`max_draws` = `n_draws`) both estimates are exactly unbiased.

**auto** (`model_noise_scale` with method "auto") is exact where it exists and the training
set has at most `exact_max_examples` examples, else two_batch.

When |G|^2 (or its estimate) is not positive, B_simple is +inf: the noise scale is then
larger than can be resolved (near a minimum, or with too few draws), and tr(Sigma) / |G|^2
tends to +inf as |G|^2 falls to zero; the two-batch interval's upper end is then +inf as
well. B_simple is nan only when both are zero (every gradient is zero: nothing to measure).
A negative tr(Sigma) estimate (noise below resolution) gives a negative B_simple, left as
measured; the raw estimates are kept in the result either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import grad, vmap

from batchlab.analysis.objective import ModelObjective

METHODS = ("auto", "exact", "two_batch")
CI_LEVEL = 0.95


@dataclass
class NoiseScale:
    """One noise-scale measurement: the value, its two parts, its interval and what it came from."""

    b_simple: float  # tr(Sigma) / |G|^2 (see the module docstring for inf and nan)
    grad_sq: float  # |G|^2: exact, or its unbiased two-batch estimate
    trace_sigma: float  # tr(Sigma): exact, or its unbiased two-batch estimate
    method: str  # "exact" or "two_batch"
    n_examples: int  # training-set size n (the population)
    n_draws: int  # two_batch: (small, big) batch pairs drawn; exact: 0
    ci_low: float  # 95% interval of b_simple: width zero for exact, percentile bootstrap for two_batch
    ci_high: float
    g_small_sq: float | None = None  # two_batch: mean over draws of |G_B|^2 at B = b_small
    g_big_sq: float | None = None  # two_batch: mean over draws of |G_B|^2 at B = b_big
    b_small: int | None = None
    b_big: int | None = None


# ---------------------------------------------------------------- shared arithmetic


def b_simple_of(trace_sigma, grad_sq):
    """tr(Sigma) / |G|^2 with the module's conventions: +inf for |G|^2 <= 0 < tr(Sigma), nan if both <= 0.

    Works on floats and, elementwise, on numpy arrays (the bootstrap uses that).
    """
    trace_sigma, grad_sq = np.asarray(trace_sigma, dtype=float), np.asarray(grad_sq, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        resolved = trace_sigma / grad_sq
    out = np.where(grad_sq > 0, resolved, np.where(trace_sigma > 0, np.inf, np.nan))
    return float(out) if out.ndim == 0 else out


def two_batch_estimates(g_small_sq, g_big_sq, b_small: int, b_big: int):
    """(|G|^2, tr(Sigma), B_simple) from mean squared gradient norms at two batch sizes.

    Works on floats and, elementwise, on numpy arrays of resampled means.
    """
    g_small_sq, g_big_sq = np.asarray(g_small_sq, dtype=float), np.asarray(g_big_sq, dtype=float)
    grad_sq = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    trace_sigma = (g_small_sq - g_big_sq) / (1 / b_small - 1 / b_big)
    b_simple = b_simple_of(trace_sigma, grad_sq)
    if grad_sq.ndim == 0:
        return float(grad_sq), float(trace_sigma), b_simple
    return grad_sq, trace_sigma, b_simple


# ---------------------------------------------------------------- exact


def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if len(x) < 1:
        raise ValueError(f"need at least one training example, got n={len(x)}")
    if len(x) != len(y):
        raise ValueError(f"need as many labels as inputs: got {len(x)} and {len(y)}")


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def why_no_per_example_gradients(model: nn.Module, bn_mode: str) -> str | None:
    """Why the exact method cannot run on this model, or None when it can."""
    if bn_mode == "batch" and _has_batchnorm(model):
        return "BatchNorm with batch statistics couples the examples of a batch (use bn_mode='eval')"
    if any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return "torch.func.vmap has no batching rule for the fused recurrent kernels of nn.RNN/GRU/LSTM"
    return None


def _per_example_gradient_sums(obj: ModelObjective, chunk_size: int) -> tuple[torch.Tensor, float]:
    """(sum_i g_i, sum_i |g_i|^2) in float64 over the objective's examples, chunk by chunk.

    Only one chunk's per-example gradients (chunk_size x P) exist at a time.
    """
    w = obj.params()

    def example_loss(w: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        # the objective's own functional loss on a batch of one: the same loss and BN handling
        return obj._sum_loss(w, xi[None], yi[None])

    per_example_grads = vmap(grad(example_loss), in_dims=(None, 0, 0))
    grad_sum = torch.zeros(w.numel(), dtype=torch.float64, device=w.device)
    sq_norm_sum = torch.zeros((), dtype=torch.float64, device=w.device)
    for start in range(0, obj.n, chunk_size):
        g = per_example_grads(w, obj.x[start : start + chunk_size], obj.y[start : start + chunk_size]).double()
        grad_sum += g.sum(0)
        sq_norm_sum += g.pow(2).sum()
    return grad_sum, sq_norm_sum.item()


def exact_noise_scale(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bn_mode: str = "eval", chunk_size: int = 256
) -> NoiseScale:
    """B_simple of a model's mean cross-entropy on (x, y) from every per-example gradient.

    Sigma is the population covariance of the n per-example gradients (see the module
    docstring). Raises ValueError where per-example gradients do not exist. The model's
    weights are not changed, and its train/eval mode is restored.
    """
    _check_data(x, y)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    reason = why_no_per_example_gradients(model, bn_mode)
    if reason:
        raise ValueError(f"the exact noise scale needs per-example gradients, but {reason}")
    was_training = model.training
    try:
        obj = ModelObjective(model, x, y, bn_mode=bn_mode, chunk_size=chunk_size)
        grad_sum, sq_norm_sum = _per_example_gradient_sums(obj, chunk_size)
    finally:
        model.train(was_training)
    n = len(x)
    grad_sq = (grad_sum / n).pow(2).sum().item()
    trace_sigma = sq_norm_sum / n - grad_sq
    b_simple = b_simple_of(trace_sigma, grad_sq)
    return NoiseScale(b_simple, grad_sq, trace_sigma, "exact", n, 0, b_simple, b_simple)


# ---------------------------------------------------------------- two batch sizes


def _check_two_batch_args(n: int, b_small: int, b_big: int, n_draws: int, max_draws: int, rel_error: float,
                          n_bootstrap: int) -> None:
    if n < 1:
        raise ValueError(f"need at least one training example, got n={n}")
    if b_small < 1:
        raise ValueError(f"b_small must be at least 1, got {b_small}")
    if b_big <= b_small:
        raise ValueError(f"b_big must be larger than b_small, got b_small={b_small} and b_big={b_big}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}")
    if max_draws < n_draws:
        raise ValueError(f"max_draws must be at least n_draws, got max_draws={max_draws} and n_draws={n_draws}")
    if not rel_error > 0:
        raise ValueError(f"rel_error must be positive, got {rel_error}")
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be at least 2, got {n_bootstrap}")


def _draw_squared_norms(batch_grad: Callable[[torch.Tensor], torch.Tensor], n: int, b_small: int, b_big: int,
                        count: int, gen: torch.Generator) -> list[tuple[float, float]]:
    """`count` draws of (|G_small|^2, |G_big|^2), each batch drawn with replacement from `gen`."""
    draws = []
    for _ in range(count):
        small = batch_grad(torch.randint(n, (b_small,), generator=gen)).double().pow(2).sum().item()
        big = batch_grad(torch.randint(n, (b_big,), generator=gen)).double().pow(2).sum().item()
        draws.append((small, big))
    return draws


def _bootstrap_b_simple(draws: np.ndarray, b_small: int, b_big: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """B_simple (ratio of averages) of `n_bootstrap` resamples of the draws, taken as (small, big) pairs.

    Seeded afresh from `seed`, so an interval depends only on the draws it summarises.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(draws), size=(n_bootstrap, len(draws)))
    means = draws[idx].mean(axis=1)  # (n_bootstrap, 2)
    return two_batch_estimates(means[:, 0], means[:, 1], b_small, b_big)[2]


def _standard_error(resampled: np.ndarray) -> float:
    """Bootstrap standard error; infinite when some resamples cannot resolve B_simple."""
    return float(resampled.std(ddof=1)) if np.isfinite(resampled).all() else math.inf


def _percentile_interval(resampled: np.ndarray, b_simple: float) -> tuple[float, float]:
    """The 95% percentile interval, as order statistics so that infinite resamples keep their place."""
    tail = (1 - CI_LEVEL) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail], method="inverted_cdf")
    if b_simple == math.inf:
        high = math.inf  # an unresolved point estimate cannot have a finite upper end
    return float(low), float(high)


def _resolved(b_simple: float) -> bool:
    """Whether an estimate can end the drawing: B_simple is never negative or infinite, so
    such an estimate is noise (its bootstrap error can look small when the draws are few)."""
    return 0 <= b_simple < math.inf


def _draws_to_add(done: int, se: float, target: float, n_draws: int, max_draws: int) -> int:
    """Size of the next block of draws: where SE ~ 1/sqrt(draws) would meet the target.

    At least `n_draws` (the estimate of SE is itself noisy) and at most doubling, so a
    poor projection costs at most twice the draws needed.
    """
    projected = done * (se / target) ** 2 if 0 < target < math.inf and math.isfinite(se) else math.inf
    wanted = min(done, max(n_draws, math.ceil(projected) - done)) if math.isfinite(projected) else done
    return min(max_draws - done, wanted)


def two_batch_noise_scale(
    batch_grad: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    b_small: int,
    b_big: int,
    n_draws: int = 10,
    seed: int = 0,
    *,
    max_draws: int | None = None,
    rel_error: float = 0.1,
    n_bootstrap: int = 1000,
) -> NoiseScale:
    """B_simple from the two-batch-size estimator of McCandlish et al. 2018 (Appendix A), with a bootstrap interval.

    `batch_grad(indices)` returns the mean gradient (flat) over those examples of an
    n-example training set; `indices` (int64, on the CPU) may repeat, since each batch is
    drawn with replacement from a torch.Generator seeded with `seed`. Each draw takes one
    small and one big batch. At least `n_draws` draws are taken, then more until B_simple
    is finite and non-negative with a bootstrap standard error of at most `rel_error` *
    B_simple, or `max_draws` draws are spent (default: `n_draws`, a fixed number). The
    interval is the 95% percentile bootstrap interval over `n_bootstrap` resamples.
    """
    max_draws = n_draws if max_draws is None else max_draws
    _check_two_batch_args(n, b_small, b_big, n_draws, max_draws, rel_error, n_bootstrap)
    gen = torch.Generator().manual_seed(seed)
    draws = _draw_squared_norms(batch_grad, n, b_small, b_big, n_draws, gen)
    while True:
        g_small_sq, g_big_sq = np.mean(draws, axis=0)
        grad_sq, trace_sigma, b_simple = two_batch_estimates(g_small_sq, g_big_sq, b_small, b_big)
        resampled = _bootstrap_b_simple(np.asarray(draws), b_small, b_big, n_bootstrap, seed)
        se, target = _standard_error(resampled), rel_error * abs(b_simple)
        if (_resolved(b_simple) and se <= target) or len(draws) >= max_draws:
            break
        draws += _draw_squared_norms(batch_grad, n, b_small, b_big,
                                     _draws_to_add(len(draws), se, target, n_draws, max_draws), gen)
    ci_low, ci_high = _percentile_interval(resampled, b_simple)
    return NoiseScale(b_simple, grad_sq, trace_sigma, "two_batch", n, len(draws), ci_low, ci_high,
                      float(g_small_sq), float(g_big_sq), b_small, b_big)


def model_two_batch_noise_scale(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    b_small: int = 32,
    b_big: int = 512,
    n_draws: int = 10,
    seed: int = 0,
    bn_mode: str = "eval",
    *,
    max_draws: int | None = None,
    rel_error: float = 0.1,
    n_bootstrap: int = 1000,
) -> NoiseScale:
    """`two_batch_noise_scale` of a model's mean cross-entropy on (x, y), at its current weights.

    Each batch's gradient comes from a `ModelObjective` on that batch with `bn_mode`
    ("eval": BN running statistics; "batch": the statistics of each batch). No augmentation
    is applied. The model's weights are not changed, and its train/eval mode is restored.
    """
    _check_data(x, y)
    was_training = model.training

    def batch_grad(idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(x.device)
        # chunk_size=len(idx): in batch mode BN must see the whole batch at once
        obj = ModelObjective(model, x[idx], y[idx], bn_mode=bn_mode, chunk_size=len(idx))
        return obj.loss_and_grad(obj.params())[1]

    try:
        return two_batch_noise_scale(batch_grad, len(x), b_small, b_big, n_draws, seed,
                                     max_draws=max_draws, rel_error=rel_error, n_bootstrap=n_bootstrap)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- dispatch


def noise_scale_method(model: nn.Module, n: int, cfg: dict, bn_mode: str = "eval") -> str:
    """"exact" or "two_batch": the method `model_noise_scale` uses for `cfg` (the config's analysis.noise_scale).

    "auto" is exact when per-example gradients exist and n <= exact_max_examples. An
    explicit "exact" where per-example gradients do not exist is a ValueError.
    """
    method = cfg["method"]
    if method not in METHODS:
        raise ValueError(f"unknown noise-scale method {method!r}; choose one of {', '.join(METHODS)}")
    reason = why_no_per_example_gradients(model, bn_mode)
    if method == "exact" and reason:
        raise ValueError(f"noise-scale method 'exact' needs per-example gradients, but {reason}")
    if method == "auto":
        return "exact" if reason is None and n <= cfg["exact_max_examples"] else "two_batch"
    return method


def model_noise_scale(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict, seed: int = 0, bn_mode: str = "eval"
) -> NoiseScale:
    """B_simple of a model's mean cross-entropy on (x, y) by the method `cfg` asks for (see `noise_scale_method`).

    `cfg` is the config's analysis.noise_scale section (method, exact_max_examples,
    chunk_size, b_small, b_big, n_draws, max_draws, rel_error, n_bootstrap).
    """
    if noise_scale_method(model, len(x), cfg, bn_mode) == "exact":
        return exact_noise_scale(model, x, y, bn_mode=bn_mode, chunk_size=cfg["chunk_size"])
    return model_two_batch_noise_scale(
        model, x, y, cfg["b_small"], cfg["b_big"], cfg["n_draws"], seed, bn_mode,
        max_draws=cfg["max_draws"], rel_error=cfg["rel_error"], n_bootstrap=cfg["n_bootstrap"],
    )
