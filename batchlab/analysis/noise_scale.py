"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 at one parameter point (McCandlish et al. 2018).

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training": with G
the full-batch gradient and Sigma the covariance of per-example gradients, B_simple
approximates the critical batch size, below which larger batches cut the number of steps
almost proportionally and above which they stop helping.

The training set of n examples is the population: G = mean_i g_i over the per-example
gradients g_i of the mean cross-entropy, and Sigma is their population covariance
(normalised by n). Everything is measured at *one* parameter point (not along consecutive
steps, whose gradients differ). The value of either method is (an estimate of) this
training set's B_simple. The intervals differ in what they are for: the two-batch interval
is for the training set's value (the estimator's own error), the exact method's for the
noise scale of the data distribution the training set was drawn from (see below). Two methods:

**exact** (`exact_noise_scale`): every per-example gradient, by `torch.func`
(`vmap(grad(...))` over the `ModelObjective`'s functional loss), streamed in chunks; only
running sums are kept (in float64), never the n x P matrix of gradients. Then

    |G|^2 = |sum_i g_i / n|^2,   tr(Sigma) = mean_i |g_i|^2 - |G|^2.

Cost: about one forward and backward pass per example, in chunks of `chunk_size`. The value
is exact for this training set. Per-example gradients exist only when examples do not
interact: BatchNorm must use its running statistics (bn_mode "eval") or be absent, and
`torch.func.vmap` must support every layer (it has no batching rule for the fused recurrent
kernels of nn.GRU / nn.LSTM / nn.RNN).

*Its interval* is for the noise scale of the data distribution the n examples were drawn
from, at the same weights: the exact value has sampling uncertainty over examples. The
examples are dealt at random (seeded by `seed`) into M groups (`n_groups`, 64; every example
its own group when n <= 64) of sizes differing by at most one, and while streaming the sums
S_c = sum of g_i and Q_c = sum of |g_i|^2 over each group are kept too: M x P float64 on the
model's device, which `max_group_bytes` bounds (256 MiB by default; fewer groups when P is
large, and with fewer than 3 no interval: [min(0, value), +inf]). From these come the
unbiased estimates of the distribution's |G|^2 (the mean of g_i . g_j over pairs i != j) and
tr(Sigma) (normalised by n - 1), and their covariance by the delete-a-group jackknife; both
need only the M x M Gram matrix of the S_c. The interval is Fieller's for their ratio
(`fieller_interval`, t quantiles with M - 1 degrees of freedom); with M = n it is the
ordinary delete-one jackknife over examples, and with 64 groups it agrees with Fieller's
interval from an example-level bootstrap covariance to within a few percent of its width
(tests/test_noise_scale.py). Why not the percentile bootstrap of the exact value over
resampled examples: |G|^2 = |mean g_i|^2 is biased upwards by tr(Sigma) / n, so the exact
value estimates the distribution's B_simple about 1 / (1 + B_simple / n) too low, and a
percentile interval repeats that bias once more; on a tiny net with fixed weights and
training sets drawn from a large pool, its coverage of the pool's value fell from 93% at
B_simple / n = 1% to 77% at 10% and 17% at 70% (86%, 44% and 0% at 1%, 6% and 63% for a
wider net), while the Fieller interval on the unbiased estimates covered 93-100% in the
same cases. So where B_simple is
not small against n the exact value can be the interval's lower end (the interval is
widened to hold it; it is never narrowed), and where |G|^2 is not resolved from the
examples the upper end is +inf. It says nothing about weights trained on these very
examples being atypical of the distribution (training drives the training set's |G|^2
down): it is the spread over other samples of n examples at these weights.

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
`n_draws` (and `min_stop_draws`, see below), then more in blocks until B_simple is finite
and non-negative and its bootstrap standard error (resampling the draws, `n_bootstrap` times,
seeded) is at most `rel_error` * B_simple, or `max_draws` is reached; `rel_error_met`
records whether the target was met (False where max_draws stopped the drawing first, or the
estimate stayed negative or infinite). A negative or infinite estimate never ends the
drawing (its bootstrap error can look small when the draws are few). Stopping on the data's
own standard error makes the estimate slightly dependent on the stopping rule (below); with
a fixed number of draws (`max_draws` = `n_draws`) both estimates are exactly unbiased.

*Its interval* is Fieller's (`draws_interval`): both estimates are linear in the mean of the
draws' (|G_small|^2, |G_big|^2), whose covariance is the draws' sample covariance over their
number, so the set of B for which tr(Sigma) - B |G|^2 is not significantly non-zero (t
quantiles, draws - 1 degrees of freedom) is a 95% interval for the ratio that stays valid
when the |G|^2 estimate is noisy: bounded when |G|^2 is significantly positive, else with
upper end +inf. It replaced the percentile bootstrap over resampled draws, which covered the
exact value in only about 90% of cases (72 of 80 runs at three MNIST-1D checkpoints; 89% at
10 draws on a tiny net): the ratio of two noisy means is skewed, and the percentile interval
follows the skew too little. On the very same draws Fieller's covered 92-95% at fixed numbers
of draws on MNIST-1D checkpoints (the t statistic of the draws is slightly heavier-tailed than
t: its spread was 1.05-1.13) and 94-96% on the tiny net (tests/test_noise_scale.py,
benchmarks/noise_scale_coverage.py; a studentized bootstrap of the same statistic did no
better). A stop on the target must wait for `min_stop_draws` (50) draws: the rule stops most
readily where the |G|^2 estimate happens to be high, so an early stop leaves B_simple and its
interval too low. At MNIST-1D's initial weights, where the target is met early, runs that
stopped at the first check (10 draws) covered the exact value in 78% of cases and at 20
draws in 91% (92% overall); with no stop before 50 draws, 95% (400 runs each).

**auto** (`model_noise_scale` with method "auto") is exact where it exists and the training
set has at most `exact_max_examples` examples, else two_batch.

When |G|^2 (or its estimate) is not positive, B_simple is +inf: the noise scale is then
larger than can be resolved (near a minimum, or with too few draws), and tr(Sigma) / |G|^2
tends to +inf as |G|^2 falls to zero; the interval's upper end is then +inf as well.
B_simple is nan only when both are zero (every gradient is zero: nothing to measure), and so
is its interval. A negative tr(Sigma) estimate (noise below resolution) gives a negative
B_simple, left as measured; the raw estimates are kept in the result either way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.func import grad, vmap

from batchlab.analysis.objective import ModelObjective

log = logging.getLogger(__name__)

METHODS = ("auto", "exact", "two_batch")
CI_LEVEL = 0.95
N_GROUPS = 64  # exact: groups of examples for the jackknife interval (fewer when n or memory is smaller)
MAX_GROUP_BYTES = 2**28  # exact: memory for the groups' gradient sums (float64, n_groups x P): 256 MiB
MIN_STOP_DRAWS = 50  # two_batch: the error target may end the drawing only from this many draws on
MIN_GROUPS = 3  # exact: fewer groups than this give no interval (ci = [min(0, value), +inf])


@dataclass
class NoiseScale:
    """One noise-scale measurement: the value, its two parts, its interval and what it came from."""

    b_simple: float  # tr(Sigma) / |G|^2 (see the module docstring for inf and nan)
    grad_sq: float  # |G|^2: exact, or its unbiased two-batch estimate
    trace_sigma: float  # tr(Sigma): exact, or its unbiased two-batch estimate
    method: str  # "exact" or "two_batch"
    n_examples: int  # training-set size n (the population)
    n_draws: int  # two_batch: (small, big) batch pairs drawn; exact: 0
    ci_low: float  # 95% interval (see the module docstring): exact: Fieller's for the data distribution's
    ci_high: float  # B_simple, by a jackknife over groups of examples; two_batch: Fieller's from the draws
    g_small_sq: float | None = None  # two_batch: mean over draws of |G_B|^2 at B = b_small
    g_big_sq: float | None = None  # two_batch: mean over draws of |G_B|^2 at B = b_big
    b_small: int | None = None
    b_big: int | None = None
    rel_error_met: bool | None = None  # two_batch: whether the draws met the error target (False: max_draws
    # stopped them first, or the estimate stayed negative or infinite); None for exact
    n_groups: int | None = None  # exact: groups the interval's jackknife leaves out in turn (0: no interval)


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


def fieller_interval(grad_sq: float, trace_sigma: float, cov: np.ndarray, dof: float, b_simple: float,
                     level: float = CI_LEVEL) -> tuple[float, float]:
    """Fieller's interval for tr(Sigma) / |G|^2 from two jointly normal estimates, as this module reports it.

    `grad_sq` and `trace_sigma` are estimates of |G|^2 and tr(Sigma) with the 2 x 2 covariance
    `cov` (order: |G|^2, tr(Sigma)), estimated with `dof` degrees of freedom (t quantiles).
    Fieller's set is every theta whose linear combination tr(Sigma) - theta |G|^2 is not
    significantly non-zero:

        (trace_sigma - theta grad_sq)^2 <= t^2 (v_tt - 2 theta v_gt + theta^2 v_gg).

    It is a bounded interval when |G|^2 is significantly positive, and unbounded (it
    contains +inf) otherwise. Since the true tr(Sigma) and |G|^2 are never negative, the
    true B_simple lies in [0, +inf]: the reported interval is the smallest one that holds
    the part of Fieller's set in [0, +inf] and the point value `b_simple` (which may be
    negative, or +inf by the module's conventions). If the whole set is negative with |G|^2
    positive (tr(Sigma) significantly negative, e.g. zero noise up to round-off), the part is
    {0}; if no B >= 0 is consistent with the estimates otherwise, or `dof` < 1, the interval
    is [min(0, b_simple), +inf]: nothing resolved. (nan, nan) when `b_simple` is nan.
    """
    if math.isnan(b_simple):
        return math.nan, math.nan
    lo, hi = 0.0, math.inf  # nothing resolved unless the set says more
    if dof >= 1 and np.all(np.isfinite(cov)):
        t = float(stats.t.ppf(0.5 + level / 2, dof))
        v_gg, v_gt, v_tt = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
        # the set is {theta: a theta^2 - 2 b theta + c <= 0}
        a = grad_sq * grad_sq - t * t * v_gg
        b = grad_sq * trace_sigma - t * t * v_gt
        c = trace_sigma * trace_sigma - t * t * v_tt
        disc = b * b - a * c
        if a > 0:  # |G|^2 significantly non-zero: a bounded interval
            root = math.sqrt(max(disc, 0.0))
            low, high = (b - root) / a, (b + root) / a
            if high >= 0:
                lo, hi = max(low, 0.0), high
            elif grad_sq > 0:  # tr(Sigma) significantly negative (noise below round-off): B = 0 is nearest
                lo, hi = 0.0, 0.0
        elif a < 0 and disc >= 0:  # (-inf, r1] and [r2, +inf): |G|^2 may be zero
            r1, r2 = (b + math.sqrt(disc)) / a, (b - math.sqrt(disc)) / a
            lo = 0.0 if r1 >= 0 else max(r2, 0.0)
        # else a whole line (a < 0, disc < 0, or a == 0): nothing resolved
    return min(lo, b_simple), max(hi, b_simple)


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


def _per_example_gradient_sums(obj: ModelObjective, chunk_size: int, group_of: torch.Tensor | None = None,
                               n_groups: int = 0) -> tuple[torch.Tensor, float, torch.Tensor | None, torch.Tensor | None]:
    """(sum_i g_i, sum_i |g_i|^2, group gradient sums, group squared-norm sums), float64, chunk by chunk.

    Only one chunk's per-example gradients (chunk_size x P) exist at a time. With `group_of`
    (the group, in [0, n_groups), of each example, in non-decreasing order: obj's examples sorted
    by group) the sums of g_i (n_groups x P) and of |g_i|^2 (n_groups) over each group's examples
    are kept too; else those two are None.

    Why the chunk is reduced in its own dtype and only its sums are widened to float64: a float64
    copy of every chunk, squared twice and added row by row into all the groups' sums took three
    quarters of the time (23 s for 12,000 examples of a 118k-parameter MLP, against 6 s now).
    Sorted by group, a chunk touches two or three groups' rows.
    """
    w = obj.params()

    def example_loss(w: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        # the objective's own functional loss on a batch of one: the same loss and BN handling
        return obj._sum_loss(w, xi[None], yi[None])

    per_example_grads = vmap(grad(example_loss), in_dims=(None, 0, 0))
    grad_sum = torch.zeros(w.numel(), dtype=torch.float64, device=w.device)
    sq_norm_sum = torch.zeros((), dtype=torch.float64, device=w.device)
    group_sums = group_sq_norms = None
    if group_of is not None:
        group_of = group_of.to(w.device)
        if bool((group_of.diff() < 0).any()):
            raise ValueError("group_of must be sorted: the examples in the order of their groups")
        group_sums = torch.zeros(n_groups, w.numel(), dtype=torch.float64, device=w.device)
        group_sq_norms = torch.zeros(n_groups, dtype=torch.float64, device=w.device)
    for start in range(0, obj.n, chunk_size):
        g = per_example_grads(w, obj.x[start : start + chunk_size], obj.y[start : start + chunk_size])
        sq_norms = torch.linalg.vector_norm(g, dim=1).double().pow(2)
        sq_norm_sum += sq_norms.sum()
        if group_of is None:
            grad_sum += g.sum(0).double()
            continue
        ids = group_of[start : start + chunk_size]
        first, last = int(ids[0]), int(ids[-1])
        chunk_sums = torch.zeros(last - first + 1, w.numel(), dtype=g.dtype, device=w.device)
        chunk_sums.index_add_(0, ids - first, g)
        group_sums[first : last + 1] += chunk_sums.double()
        group_sq_norms.index_add_(0, ids, sq_norms)
    if group_sums is not None:
        grad_sum = group_sums.sum(0)
    return grad_sum, sq_norm_sum.item(), group_sums, group_sq_norms


def _groups(n: int, n_params: int, n_groups: int, max_group_bytes: int, seed: int) -> tuple[int, torch.Tensor]:
    """(M, the group of each example): n examples dealt at random (seeded) into M groups whose
    sizes differ by at most one; M = min(n_groups, n, what max_group_bytes holds of M x P float64)."""
    by_memory = max_group_bytes // (8 * max(n_params, 1))
    m = int(min(n_groups, n, by_memory))
    if by_memory < min(n_groups, n, MIN_GROUPS):
        log.warning("exact noise scale: %d bytes hold only %d group sums of %d parameters; no interval "
                    "(raise max_group_bytes)", max_group_bytes, by_memory, n_params)
    m = max(m, 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    group_of = torch.empty(n, dtype=torch.int64)
    group_of[perm] = torch.arange(n) % m
    return m, group_of


def _unbiased_estimates(sum_sq: np.ndarray, sq_norm_sum: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased estimates of the data distribution's (|G|^2, tr(Sigma)) from n examples drawn from it:

        |G|^2     ~ sum_{i != j} g_i . g_j / (n (n - 1)) = (|sum_i g_i|^2 - sum_i |g_i|^2) / (n (n - 1))
        tr(Sigma) ~ (sum_i |g_i|^2 - |sum_i g_i|^2 / n) / (n - 1)

    from `sum_sq` = |sum_i g_i|^2 and `sq_norm_sum` = sum_i |g_i|^2 (elementwise on arrays).
    """
    return (sum_sq - sq_norm_sum) / (n * (n - 1)), (sq_norm_sum - sum_sq / n) / (n - 1)


def group_jackknife(group_sums: np.ndarray | torch.Tensor, group_sq_norms, counts) -> tuple[float, float, np.ndarray]:
    """(|G|^2, tr(Sigma), their 2 x 2 covariance) for the data distribution, from groups of examples.

    `group_sums` (M x P) are the sums of g_i over each group, `group_sq_norms` (M) the sums
    of |g_i|^2, `counts` (M) the group sizes. The estimates are `_unbiased_estimates` over
    all n examples; the covariance is the delete-a-group jackknife's, (M - 1) / M times the
    sum of the outer products of the leave-one-group-out estimates about their mean. It
    needs only the M x M Gram matrix of the group sums: |S - S_c|^2 = |S|^2 - 2 S . S_c + |S_c|^2.
    With one example a group it is the ordinary delete-one jackknife over examples.
    """
    sums = torch.as_tensor(group_sums, dtype=torch.float64)
    gram = (sums @ sums.T).cpu().numpy()
    q = np.asarray(torch.as_tensor(group_sq_norms, dtype=torch.float64).cpu().numpy(), dtype=float)
    counts = np.asarray(counts, dtype=float)
    m, n = len(counts), counts.sum()
    total_sq, total_q = gram.sum(), q.sum()
    grad_sq, trace_sigma = _unbiased_estimates(total_sq, total_q, n)
    left_out = np.stack(_unbiased_estimates(total_sq - 2 * gram.sum(1) + np.diag(gram), total_q - q, n - counts), 1)
    dev = left_out - left_out.mean(0)
    return float(grad_sq), float(trace_sigma), (m - 1) / m * dev.T @ dev


def exact_noise_scale(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bn_mode: str = "eval", chunk_size: int = 256,
    *, seed: int = 0, n_groups: int = N_GROUPS, max_group_bytes: int = MAX_GROUP_BYTES,
) -> NoiseScale:
    """B_simple of a model's mean cross-entropy on (x, y) from every per-example gradient.

    Sigma is the population covariance of the n per-example gradients (see the module
    docstring). The interval is for the data distribution's B_simple at these weights:
    Fieller's, from a jackknife over `n_groups` random groups of examples (dealt by `seed`;
    fewer groups when n or `max_group_bytes`, the memory for their gradient sums, is
    smaller). Raises ValueError where per-example gradients do not exist. The model's
    weights are not changed, and its train/eval mode is restored.
    """
    _check_data(x, y)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if n_groups < 1:
        raise ValueError(f"n_groups must be at least 1, got {n_groups}")
    reason = why_no_per_example_gradients(model, bn_mode)
    if reason:
        raise ValueError(f"the exact noise scale needs per-example gradients, but {reason}")
    n = len(x)
    n_params = sum(p.numel() for p in model.parameters())
    m, group_of = _groups(n, n_params, n_groups, max_group_bytes, seed)
    was_training = model.training
    try:
        order = torch.argsort(group_of, stable=True)  # each group's examples together
        obj = ModelObjective(model, x[order.to(x.device)], y[order.to(y.device)], bn_mode=bn_mode, chunk_size=chunk_size)
        grad_sum, sq_norm_sum, group_sums, group_sq_norms = _per_example_gradient_sums(
            obj, chunk_size, group_of[order] if m >= MIN_GROUPS else None, m)
    finally:
        model.train(was_training)
    grad_sq = (grad_sum / n).pow(2).sum().item()
    trace_sigma = sq_norm_sum / n - grad_sq
    b_simple = b_simple_of(trace_sigma, grad_sq)
    if m >= MIN_GROUPS:
        counts = np.bincount(group_of.numpy(), minlength=m)
        ci = fieller_interval(*group_jackknife(group_sums, group_sq_norms, counts), dof=m - 1, b_simple=b_simple)
    else:
        ci = fieller_interval(grad_sq, trace_sigma, np.full((2, 2), np.nan), 0, b_simple)  # nothing resolved
    return NoiseScale(b_simple, grad_sq, trace_sigma, "exact", n, 0, *ci, n_groups=m if m >= MIN_GROUPS else 0)


# ---------------------------------------------------------------- two batch sizes


def _check_two_batch_args(n: int, b_small: int, b_big: int, n_draws: int, max_draws: int, rel_error: float,
                          n_bootstrap: int, min_stop_draws: int = 1) -> None:
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
    if min_stop_draws < 1:
        raise ValueError(f"min_stop_draws must be at least 1, got {min_stop_draws}")


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


def draws_interval(draws: np.ndarray, b_small: int, b_big: int, b_simple: float) -> tuple[float, float]:
    """Fieller's 95% interval of B_simple from the draws of (|G_small|^2, |G_big|^2), see `fieller_interval`.

    Both estimates are linear in the draws' mean, whose covariance is the draws' sample
    covariance over their number (t quantiles with draws - 1 degrees of freedom).
    """
    k = len(draws)
    if k < 2:
        return fieller_interval(0.0, 0.0, np.full((2, 2), np.nan), 0, b_simple)
    # rows: the |G|^2 and tr(Sigma) estimates as combinations of (mean |G_small|^2, mean |G_big|^2)
    combine = np.array([[-b_small, b_big], [1.0, -1.0]]) / np.array([[b_big - b_small], [1 / b_small - 1 / b_big]])
    grad_sq, trace_sigma = combine @ draws.mean(0)
    cov = combine @ np.cov(draws, rowvar=False, ddof=1) @ combine.T / k
    return fieller_interval(float(grad_sq), float(trace_sigma), cov, k - 1, b_simple)


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
    min_stop_draws: int = MIN_STOP_DRAWS,
) -> NoiseScale:
    """B_simple from the two-batch-size estimator of McCandlish et al. 2018 (Appendix A), with Fieller's interval.

    `batch_grad(indices)` returns the mean gradient (flat) over those examples of an
    n-example training set; `indices` (int64, on the CPU) may repeat, since each batch is
    drawn with replacement from a torch.Generator seeded with `seed`. Each draw takes one
    small and one big batch. At least `n_draws` draws are taken, then more until B_simple
    is finite and non-negative with a bootstrap standard error of at most `rel_error` *
    B_simple, or `max_draws` draws are spent (default: `n_draws`, a fixed number);
    `rel_error_met` says whether the final draws meet that target. The target can end the
    drawing only from `min_stop_draws` draws on (never beyond `max_draws`; 1: from the
    first check, as before), since stopping on a lucky early estimate biases its interval
    (module docstring). The standard error is the bootstrap's over `n_bootstrap` resamples
    of the draws; the interval is Fieller's from the draws (`draws_interval`).
    """
    max_draws = n_draws if max_draws is None else max_draws
    _check_two_batch_args(n, b_small, b_big, n_draws, max_draws, rel_error, n_bootstrap, min_stop_draws)
    gen = torch.Generator().manual_seed(seed)
    # no stop before min_stop_draws, so no check either: the first block is at least that long
    draws = _draw_squared_norms(batch_grad, n, b_small, b_big, min(max_draws, max(n_draws, min_stop_draws)), gen)
    while True:
        g_small_sq, g_big_sq = np.mean(draws, axis=0)
        grad_sq, trace_sigma, b_simple = two_batch_estimates(g_small_sq, g_big_sq, b_small, b_big)
        resampled = _bootstrap_b_simple(np.asarray(draws), b_small, b_big, n_bootstrap, seed)
        se, target = _standard_error(resampled), rel_error * abs(b_simple)
        met = _resolved(b_simple) and se <= target
        if met or len(draws) >= max_draws:
            break
        draws += _draw_squared_norms(batch_grad, n, b_small, b_big,
                                     _draws_to_add(len(draws), se, target, n_draws, max_draws), gen)
    ci_low, ci_high = draws_interval(np.asarray(draws), b_small, b_big, b_simple)
    return NoiseScale(b_simple, grad_sq, trace_sigma, "two_batch", n, len(draws), ci_low, ci_high,
                      float(g_small_sq), float(g_big_sq), b_small, b_big, rel_error_met=bool(met))


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
    min_stop_draws: int = MIN_STOP_DRAWS,
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
                                     max_draws=max_draws, rel_error=rel_error, n_bootstrap=n_bootstrap,
                                     min_stop_draws=min_stop_draws)
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
        return exact_noise_scale(model, x, y, bn_mode=bn_mode, chunk_size=cfg["chunk_size"], seed=seed)
    return model_two_batch_noise_scale(
        model, x, y, cfg["b_small"], cfg["b_big"], cfg["n_draws"], seed, bn_mode,
        max_draws=cfg["max_draws"], rel_error=cfg["rel_error"], n_bootstrap=cfg["n_bootstrap"],
    )
