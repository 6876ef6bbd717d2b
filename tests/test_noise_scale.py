"""The noise scale B_simple: the two-batch estimator against linear regression, where Sigma is known
exactly; the exact per-example method against a brute-force covariance, its jackknife interval
against an example-level bootstrap and its coverage of a known population value; Fieller's
interval; the adaptive number of draws, whether it met its error target, and the two-batch
interval's coverage of the exact value; and the choice between the two methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.analysis.noise_scale import (
    MIN_STOP_DRAWS,
    NoiseScale,
    b_simple_of,
    exact_noise_scale,
    fieller_interval,
    group_jackknife,
    model_noise_scale,
    model_two_batch_noise_scale,
    noise_scale_method,
    two_batch_estimates,
    two_batch_noise_scale,
)
from batchlab.config import check_config
from batchlab.models import build_model
from tests.conftest import TINY_CONFIG

N, D = 20, 3  # a small training set, so sampling with or without replacement differs clearly


@pytest.fixture(scope="module")
def regression():
    """Per-example gradients g_i = (w.x_i - t_i) x_i of 0.5 (w.x_i - t_i)^2, and the true G, tr(Sigma)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    t = torch.randn(N, generator=gen, dtype=torch.float64)
    w = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)  # far from the least-squares fit: |G| > 0
    g = (x @ w - t)[:, None] * x  # (N, D)
    G = g.mean(0)
    trace_sigma = (g - G).pow(2).sum(1).mean().item()  # population covariance: divide by N
    return g, G.pow(2).sum().item(), trace_sigma


def batch_grad_of(g: torch.Tensor):
    return lambda idx: g[idx].mean(0)


@pytest.fixture(scope="module")
def repeats(regression) -> list[NoiseScale]:
    """300 independent measurements (seeds) of 20 draws each at batch sizes 2 and 8."""
    g, _, _ = regression
    return [two_batch_noise_scale(batch_grad_of(g), N, 2, 8, n_draws=20, seed=s) for s in range(300)]


def test_estimates_are_unbiased(regression, repeats):
    _, grad_sq, trace_sigma = regression
    for name, truth in (("grad_sq", grad_sq), ("trace_sigma", trace_sigma)):
        values = np.array([getattr(r, name) for r in repeats])
        se = values.std(ddof=1) / math.sqrt(len(values))
        assert abs(values.mean() - truth) < 4 * se, name
        if name == "grad_sq":
            # batches drawn without replacement would bias this estimate by -tr(Sigma)/(N - 1)
            # (E|G_B|^2 gets the factor (N - B)/(N - 1) on its noise term): the test must see that
            assert 4 * se < trace_sigma / (N - 1)


def test_b_simple_is_close_to_the_truth(regression, repeats):
    g, grad_sq, trace_sigma = regression
    truth = trace_sigma / grad_sq
    assert 1 < truth < 100  # a regime the batch sizes 2 and 8 can measure
    # one measurement with as many draws as all the repeats together (300 x 20) ...
    ns = two_batch_noise_scale(batch_grad_of(g), N, 2, 8, n_draws=6000, seed=12345)
    assert ns.b_simple == ns.trace_sigma / ns.grad_sq
    assert (ns.b_small, ns.b_big, ns.n_draws) == (2, 8, 6000)
    # ... whose standard error follows from the repeats' spread by the delta method:
    # ts/gs - truth ~ (ts - truth * gs) / |G|^2
    gs = np.array([r.grad_sq for r in repeats])
    ts = np.array([r.trace_sigma for r in repeats])
    se = (ts - truth * gs).std(ddof=1) / math.sqrt(len(repeats)) / grad_sq
    assert se < 0.15 * truth  # a test that can tell a biased B_simple apart
    assert abs(ns.b_simple - truth) < 4 * se


def test_zero_noise():
    g = torch.tensor([1.0, -2.0, 0.5]).repeat(N, 1)  # every example has the same gradient
    ns = two_batch_noise_scale(batch_grad_of(g), N, 2, 8, n_draws=5)
    assert ns.trace_sigma == pytest.approx(0.0, abs=1e-5)
    assert ns.grad_sq == pytest.approx(5.25, rel=1e-6)
    assert ns.b_simple == pytest.approx(0.0, abs=1e-5)


def test_non_positive_signal():
    # |G|^2 estimate <= 0 while noise is measured: the noise scale is beyond resolution
    grad_sq, trace_sigma, b_simple = two_batch_estimates(g_small_sq=10.0, g_big_sq=0.1, b_small=1, b_big=10)
    assert grad_sq < 0 < trace_sigma
    assert b_simple == math.inf
    assert b_simple_of(1.0, 0.0) == math.inf  # exact |G|^2 = 0 at a stationary point
    # all gradients zero: nothing measured
    ns = two_batch_noise_scale(lambda idx: torch.zeros(3), N, 2, 8)
    assert (ns.grad_sq, ns.trace_sigma) == (0.0, 0.0)
    assert math.isnan(ns.b_simple)


def test_seeding_is_reproducible(regression):
    g, _, _ = regression
    first = two_batch_noise_scale(batch_grad_of(g), N, 2, 8, n_draws=3, seed=7)
    assert first == two_batch_noise_scale(batch_grad_of(g), N, 2, 8, n_draws=3, seed=7)
    assert first != two_batch_noise_scale(batch_grad_of(g), N, 2, 8, n_draws=3, seed=8)


def test_batches_are_drawn_with_replacement():
    seen: list[torch.Tensor] = []

    def record(idx: torch.Tensor) -> torch.Tensor:
        seen.append(idx)
        return torch.ones(2)

    two_batch_noise_scale(record, 4, 2, 16, n_draws=2)
    assert [len(i) for i in seen] == [2, 16, 2, 16]  # a small and a big batch per draw
    assert all(0 <= i.min() and i.max() < 4 for i in seen)
    assert len(seen[1].unique()) < 16  # 16 indices out of 4 examples: only with replacement


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(b_small=0, b_big=8), "b_small must be at least 1"),
        (dict(b_small=8, b_big=8), "b_big must be larger than b_small"),
        (dict(b_small=8, b_big=2), "b_big must be larger than b_small"),
        (dict(b_small=2, b_big=8, n_draws=0), "n_draws must be at least 1"),
        (dict(b_small=2, b_big=8, n=0), "at least one training example"),
        (dict(b_small=2, b_big=8, n_draws=10, max_draws=5), "max_draws must be at least n_draws"),
        (dict(b_small=2, b_big=8, rel_error=0.0), "rel_error must be positive"),
        (dict(b_small=2, b_big=8, n_bootstrap=1), "n_bootstrap must be at least 2"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs = {"n": N, **kwargs}
    with pytest.raises(ValueError, match=message):
        two_batch_noise_scale(lambda idx: torch.zeros(3), **kwargs)


def test_model_two_batch_noise_scale_on_mlp():
    torch.manual_seed(0)
    model = build_model("mlp", (40,), 10)
    model.train()
    x, y = torch.randn(256, 40), torch.randint(0, 10, (256,))
    before = [p.detach().clone() for p in model.parameters()]
    ns = model_two_batch_noise_scale(model, x, y, b_small=8, b_big=64, n_draws=4)
    assert isinstance(ns, NoiseScale)
    assert (ns.method, ns.n_examples, ns.n_draws) == ("two_batch", 256, 4)
    assert math.isfinite(ns.b_simple) and ns.b_simple > 0
    assert ns.g_small_sq > ns.g_big_sq > 0  # smaller batches are noisier
    assert model.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights untouched
    with pytest.raises(ValueError, match="as many labels"):
        model_two_batch_noise_scale(model, x, y[:10], b_small=8, b_big=64)


# ---------------------------------------------------------------- the exact method

N_TINY = 13  # not a multiple of the chunk size below, so a partial chunk is exercised


def tiny_net(batchnorm: bool = False) -> nn.Module:
    """A float64 two-layer net; with BatchNorm, running statistics far from their defaults."""
    torch.manual_seed(0)
    layers = [nn.Linear(5, 4)] + ([nn.BatchNorm1d(4)] if batchnorm else []) + [nn.Tanh(), nn.Linear(4, 3)]
    model = nn.Sequential(*layers).double()
    if batchnorm:
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model


def tiny_data(n: int = N_TINY) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # a learnable rule: |G| > 0 at init


def per_example_matrix(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The (n, P) gradients of each example's cross-entropy by plain autograd, in eval mode."""
    model.eval()
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy().copy())
    return np.stack(rows)


def brute_force_b_simple(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from each example's gradient by plain autograd and numpy's population covariance."""
    g = per_example_matrix(model, x, y)  # (n, P)
    sigma = np.cov(g, rowvar=False, bias=True)  # bias=True: normalised by n, the population covariance
    return float(np.sum(g.mean(0) ** 2)), float(np.trace(sigma))


def unbiased_pair_estimates(g: np.ndarray) -> tuple[float, float]:
    """The data distribution's (|G|^2, tr(Sigma)) estimated without bias from n examples, by their definitions:
    the mean of g_i . g_j over pairs i != j, and the sample covariance's trace (normalised by n - 1)."""
    n = len(g)
    return float((g @ g.T)[~np.eye(n, dtype=bool)].mean()), float(np.trace(np.cov(g, rowvar=False, ddof=1)))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_exact_matches_brute_force_covariance(batchnorm):
    model = tiny_net(batchnorm)
    x, y = tiny_data()
    grad_sq, trace_sigma = brute_force_b_simple(model, x, y)
    assert trace_sigma > 0 and grad_sq > 0
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    ns = exact_noise_scale(model, x, y, bn_mode="eval", chunk_size=5)
    assert ns.grad_sq == pytest.approx(grad_sq, rel=1e-10)
    assert ns.trace_sigma == pytest.approx(trace_sigma, rel=1e-10)
    assert ns.b_simple == pytest.approx(trace_sigma / grad_sq, rel=1e-10)
    # exact for this training set, no draws; the interval (for the data distribution's value) has width
    assert (ns.method, ns.n_examples, ns.n_draws) == ("exact", N_TINY, 0)
    # (the value may be the lower end: B_simple ~ n here, where it is biased low for the distribution's)
    assert ns.ci_low <= ns.b_simple < ns.ci_high == math.inf
    assert ns.n_groups == N_TINY and ns.rel_error_met is None  # n < 64: one example a group
    assert model.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights untouched


def test_exact_does_not_depend_on_chunk_size():
    model = tiny_net()
    x, y = tiny_data()
    values = [exact_noise_scale(model, x, y, chunk_size=c) for c in (1, 4, N_TINY, 100)]
    for ns in values[1:]:
        assert ns.grad_sq == pytest.approx(values[0].grad_sq, rel=1e-12)
        assert ns.trace_sigma == pytest.approx(values[0].trace_sigma, rel=1e-12)


def test_exact_refuses_batchnorm_with_batch_statistics():
    x, y = tiny_data()
    with pytest.raises(ValueError, match="per-example gradients.*BatchNorm"):
        exact_noise_scale(tiny_net(batchnorm=True), x, y, bn_mode="batch")
    with pytest.raises(ValueError, match="chunk_size"):
        exact_noise_scale(tiny_net(), x, y, chunk_size=0)


def test_exact_interval_has_width_and_holds_the_value():
    model = tiny_net()
    for n in (13, 64, 500):
        x, y = tiny_data(n)
        ns = exact_noise_scale(model, x, y)
        assert 0 < ns.ci_low < ns.b_simple < ns.ci_high, n
        assert ns.n_groups == min(n, 64)
        if n == 13:
            assert ns.ci_high == math.inf  # 13 examples do not resolve |G|^2 > 0 at B_simple ~ 11
    assert ns.ci_high < 2 * ns.b_simple  # 500 examples do
    # the grouping (seeded) moves the interval a little and the value not at all
    other = exact_noise_scale(model, x, y, seed=1)
    assert (other.b_simple, other.grad_sq, other.trace_sigma) == (ns.b_simple, ns.grad_sq, ns.trace_sigma)
    assert other.ci_low != ns.ci_low and other.ci_low == pytest.approx(ns.ci_low, rel=0.1)
    assert exact_noise_scale(model, x, y, seed=1) == other


def test_group_jackknife_with_one_example_a_group_is_the_delete_one_jackknife():
    model = tiny_net()
    x, y = tiny_data(40)
    g = per_example_matrix(model, x, y)
    n = len(g)
    full = unbiased_pair_estimates(g)
    left_out = np.array([unbiased_pair_estimates(np.delete(g, i, axis=0)) for i in range(n)])
    dev = left_out - left_out.mean(0)
    grad_sq, trace_sigma, cov = group_jackknife(torch.from_numpy(g), (g * g).sum(1), np.ones(n))
    assert (grad_sq, trace_sigma) == pytest.approx(full, rel=1e-9)
    np.testing.assert_allclose(cov, (n - 1) / n * dev.T @ dev, rtol=1e-7)
    ns = exact_noise_scale(model, x, y, n_groups=n)
    assert ns.n_groups == n
    assert (ns.ci_low, ns.ci_high) == pytest.approx(fieller_interval(grad_sq, trace_sigma, cov, n - 1, ns.b_simple))


def test_exact_interval_matches_an_example_level_bootstrap():
    """64 random groups of 600 examples: the interval is what an example-level bootstrap's covariance gives."""
    model = tiny_net()
    x, y = tiny_data(600)
    g = per_example_matrix(model, x, y)
    rng = np.random.default_rng(0)
    boot = np.array([sum_estimates(g[rng.integers(len(g), size=len(g))]) for _ in range(2000)])
    grad_sq, trace_sigma = unbiased_pair_estimates(g)
    assert (grad_sq, trace_sigma) == pytest.approx(sum_estimates(g), rel=1e-9)
    b_simple = exact_noise_scale(model, x, y).b_simple
    reference = fieller_interval(grad_sq, trace_sigma, np.cov(boot, rowvar=False), math.inf, b_simple)
    assert 0 < reference[0] < b_simple < reference[1] < math.inf
    width = reference[1] - reference[0]
    for seed in range(3):
        ns = exact_noise_scale(model, x, y, seed=seed)
        assert ns.n_groups == 64
        assert abs(ns.ci_low - reference[0]) < 0.1 * width and abs(ns.ci_high - reference[1]) < 0.1 * width
        _, _, cov = group_jackknife(*_groups_of(g, 64, seed))
        assert np.sqrt(np.diag(cov)) == pytest.approx(boot.std(0, ddof=1), rel=0.25)


def sum_estimates(g: np.ndarray) -> tuple[float, float]:
    """`unbiased_pair_estimates` from |sum_i g_i|^2 and sum_i |g_i|^2 alone (fast enough to bootstrap)."""
    n, total = len(g), g.sum(0)
    sum_sq, sq_norms = total @ total, (g * g).sum()
    return (sum_sq - sq_norms) / (n * (n - 1)), (sq_norms - sum_sq / n) / (n - 1)


def _groups_of(g: np.ndarray, m: int, seed: int):
    """The module's grouping of the rows of g: (group sums, group squared-norm sums, group sizes)."""
    perm = torch.randperm(len(g), generator=torch.Generator().manual_seed(seed)).numpy()
    group = np.empty(len(g), dtype=int)
    group[perm] = np.arange(len(g)) % m
    sums = np.zeros((m, g.shape[1]))
    np.add.at(sums, group, g)
    return torch.from_numpy(sums), np.bincount(group, (g * g).sum(1), m), np.bincount(group, minlength=m)


def test_exact_interval_covers_the_population_value():
    """Training sets of 200 drawn from one large pool at fixed weights: the interval is for the pool's B_simple.

    At B_simple ~ 40 against n = 200 the exact value is biased low as an estimate of the pool's
    (by about 1 / (1 + B/n)); an interval around the training set's own value would miss it.
    """
    model = tiny_net()
    n, sets = 200, 120
    x, y = tiny_data(n * sets)
    truth = exact_noise_scale(model, x, y).b_simple
    measured = [exact_noise_scale(model, x[k * n : (k + 1) * n], y[k * n : (k + 1) * n], seed=k) for k in range(sets)]
    values = np.array([m.b_simple for m in measured])
    assert values.mean() < truth - 3 * values.std(ddof=1) / math.sqrt(sets)  # the bias is real here
    hits = [m.ci_low <= truth <= m.ci_high for m in measured]
    assert np.mean(hits) >= 0.9


def test_exact_memory_bound_limits_the_groups(caplog):
    model = tiny_net()
    n_params = sum(p.numel() for p in model.parameters())
    x, y = tiny_data(500)
    ten = exact_noise_scale(model, x, y, max_group_bytes=8 * n_params * 10 + 7)
    assert ten.n_groups == 10 and 0 < ten.ci_low < ten.b_simple < ten.ci_high < math.inf
    assert "no interval" not in caplog.text
    two = exact_noise_scale(model, x, y, max_group_bytes=8 * n_params * 2)
    assert two.n_groups == 0 and (two.ci_low, two.ci_high) == (0.0, math.inf)  # nothing resolved
    assert "no interval" in caplog.text
    # the grouping moves only the interval: the value, summed group by group, to rounding
    assert two.b_simple == pytest.approx(ten.b_simple, rel=1e-12)
    assert ten.b_simple == pytest.approx(exact_noise_scale(model, x, y).b_simple, rel=1e-12)
    with pytest.raises(ValueError, match="n_groups"):
        exact_noise_scale(model, x, y, n_groups=0)


def test_fieller_interval():
    z = 1.959963984540054  # the normal quantile: dof = inf
    cov = np.diag([0.01, 1.0])  # (|G|^2, tr(Sigma)) estimates' covariance
    lo, hi = fieller_interval(1.0, 10.0, cov, math.inf, 10.0)
    assert 0 < lo < 10 < hi < math.inf
    for theta in (lo, hi):  # the boundary: tr - theta |G|^2 is exactly z standard errors from zero
        assert (10 - theta) ** 2 == pytest.approx(z**2 * (1 + 0.01 * theta**2))
    # t quantiles widen it
    t_lo, t_hi = fieller_interval(1.0, 10.0, cov, 5, 10.0)
    assert t_lo < lo and t_hi > hi
    # |G|^2 within two standard errors of zero: no upper end, a lower end from the other root
    lo, hi = fieller_interval(0.15, 10.0, cov, math.inf, 10.0 / 0.15)
    assert hi == math.inf and 0 < lo < 10.0 / 0.15
    assert (10 - lo * 0.15) ** 2 == pytest.approx(z**2 * (1 + 0.01 * lo**2))
    # an estimate of |G|^2 <= 0 (point value +inf) keeps the upper end +inf
    assert fieller_interval(-0.05, 10.0, cov, math.inf, math.inf)[1] == math.inf
    # tr(Sigma) significantly negative with |G|^2 positive (zero noise up to round-off): B = 0 is nearest
    assert fieller_interval(1.0, -1e-3, np.diag([1e-8, 1e-10]), math.inf, -1e-3) == (-1e-3, 0.0)
    # nothing known (no degrees of freedom), and nothing to measure
    assert fieller_interval(1.0, 10.0, cov, 0, 10.0) == (0.0, math.inf)
    assert all(math.isnan(v) for v in fieller_interval(0.0, 0.0, cov, math.inf, math.nan))


# ---------------------------------------------------------------- adaptive two-batch draws and interval


@pytest.fixture(scope="module")
def tiny_gradients():
    """A tiny net on 64 examples: every per-example gradient, and the exact B_simple."""
    model = tiny_net()
    x, y = tiny_data(64)
    return model, x, y, torch.from_numpy(per_example_matrix(model, x, y)), exact_noise_scale(model, x, y).b_simple


@pytest.mark.parametrize("b_small, b_big, n_draws, max_draws, seeds", [
    (4, 64, 10, 10, 400),  # few draws: the former percentile bootstrap interval covered 90% here
    (4, 64, 10, 400, 300),  # adaptive, as configured by default: the target is met (about 140 draws)
    (2, 4, 100, 100, 300),  # batches far below B_simple: a very noisy |G|^2 estimate
])
def test_two_batch_interval_covers_the_exact_value(tiny_gradients, b_small, b_big, n_draws, max_draws, seeds):
    """Fieller's 95% interval covers the exact B_simple for at least 93% of the seeds."""
    model, x, y, g, exact = tiny_gradients
    assert b_small < exact < 64  # resolvable, yet above b_big for the last case
    hits = []
    for seed in range(seeds):
        # the batch gradient as the mean of per-example gradients: what the model gives, only faster
        ns = two_batch_noise_scale(lambda idx: g[idx].mean(0), len(g), b_small, b_big, n_draws, seed,
                                   max_draws=max_draws, rel_error=0.1, n_bootstrap=200)
        if ns.rel_error_met:
            assert ns.ci_low < ns.b_simple < ns.ci_high
        hits.append(ns.ci_low <= exact <= ns.ci_high)
    assert np.mean(hits) >= 0.93


def test_two_batch_on_the_model_matches_its_per_example_gradients(tiny_gradients):
    model, x, y, g, _ = tiny_gradients
    on_model = model_two_batch_noise_scale(model, x, y, b_small=4, b_big=64, n_draws=10, seed=3, max_draws=400)
    on_rows = two_batch_noise_scale(lambda idx: g[idx].mean(0), len(g), 4, 64, 10, 3, max_draws=400)
    assert on_model.n_draws == on_rows.n_draws and on_model.rel_error_met and on_rows.rel_error_met
    for field in ("b_simple", "ci_low", "ci_high"):
        assert getattr(on_model, field) == pytest.approx(getattr(on_rows, field), rel=1e-9)


def test_draws_follow_the_requested_error(regression):
    g, _, _ = regression
    # min_stop_draws=1: the target may end the drawing at the first check, after n_draws
    measure = lambda rel_error, max_draws, seed=3, min_stop_draws=1: two_batch_noise_scale(  # noqa: E731
        batch_grad_of(g), N, 2, 8, n_draws=10, seed=seed, max_draws=max_draws, rel_error=rel_error, n_bootstrap=200,
        min_stop_draws=min_stop_draws)
    loose, medium, tight = measure(100.0, 5000), measure(0.3, 5000), measure(1e-4, 37)
    assert loose.n_draws == 10  # the first block already meets a loose error
    assert 10 < medium.n_draws < 5000
    assert tight.n_draws == 37  # never more than max_draws, even off the block sizes
    # whether the error target was met: yes, yes, and no (max_draws stopped the drawing)
    assert (loose.rel_error_met, medium.rel_error_met, tight.rel_error_met) == (True, True, False)
    assert measure(100.0, 10).rel_error_met is True  # a fixed number of draws that happens to meet it
    assert measure(0.3, 10).rel_error_met is False
    # the interval reflects the error aimed at (half-width about 1.96 standard errors)
    assert (medium.ci_high - medium.ci_low) / 2 < 2.5 * 0.3 * medium.b_simple
    assert loose.ci_high - loose.ci_low > medium.ci_high - medium.ci_low  # 10 draws against hundreds
    # more draws extend the same sequence: the first ten are those of the loose measurement
    assert measure(100.0, 5000) == loose
    # a negative or infinite estimate is noise however small its bootstrap error looks: keep drawing
    for seed in (1, 2):
        unresolved = measure(100.0, 10, seed)
        assert not 0 <= unresolved.b_simple < math.inf
        assert unresolved.rel_error_met is False  # its small bootstrap error does not count
        assert measure(100.0, 5000, seed).n_draws > 10
    # by default the target ends the drawing only from MIN_STOP_DRAWS draws on, never past max_draws
    floored = two_batch_noise_scale(batch_grad_of(g), N, 2, 8, n_draws=10, seed=3, max_draws=5000, rel_error=100.0,
                                    n_bootstrap=200)
    assert floored.n_draws >= MIN_STOP_DRAWS > loose.n_draws and floored.rel_error_met
    assert measure(100.0, 37, min_stop_draws=MIN_STOP_DRAWS).n_draws == 37
    assert measure(100.0, 5000, min_stop_draws=25).n_draws >= 25
    with pytest.raises(ValueError, match="min_stop_draws must be at least 1"):
        measure(100.0, 5000, min_stop_draws=0)


def test_unresolved_signal_gives_an_open_interval():
    signs = torch.tensor([1.0, -1.0]).repeat(N // 2)[:, None] * torch.ones(N, 3)  # G = 0, tr(Sigma) = 3
    for seed in range(50):
        ns = two_batch_noise_scale(batch_grad_of(signs), N, 2, 8, n_draws=3, seed=seed)
        if ns.grad_sq <= 0:
            break
    assert ns.grad_sq <= 0 < ns.trace_sigma
    assert ns.b_simple == math.inf and ns.ci_high == math.inf
    # an infinite noise scale is never resolved, so every allowed draw is spent, and the target is not met
    spent = two_batch_noise_scale(batch_grad_of(signs), N, 2, 8, n_draws=5, max_draws=60, rel_error=1.0)
    assert spent.n_draws == 60 and spent.rel_error_met is False


# ---------------------------------------------------------------- choosing the method


@pytest.fixture
def ns_cfg() -> dict:
    """The tiny study's checked analysis.noise_scale: every key, schema defaults included."""
    return check_config(TINY_CONFIG)["studies"]["tiny"]["analysis"]["noise_scale"]


def test_auto_picks_exact_where_it_exists(ns_cfg):
    plain, bn = tiny_net(), tiny_net(batchnorm=True)
    assert ns_cfg["method"] == "auto"
    limit = ns_cfg["exact_max_examples"]
    assert noise_scale_method(plain, limit, ns_cfg, "eval") == "exact"
    assert noise_scale_method(plain, limit, ns_cfg, "batch") == "exact"  # no BN: both modes are per-example
    assert noise_scale_method(plain, limit + 1, ns_cfg, "eval") == "two_batch"
    assert noise_scale_method(bn, 10, ns_cfg, "eval") == "exact"
    assert noise_scale_method(bn, 10, ns_cfg, "batch") == "two_batch"
    assert noise_scale_method(build_model("gru", (40,), 10), 10, ns_cfg, "eval") == "two_batch"  # no vmap for GRU
    assert noise_scale_method(plain, 10, {**ns_cfg, "method": "two_batch"}, "eval") == "two_batch"


def test_model_noise_scale_dispatches(ns_cfg):
    model = tiny_net(batchnorm=True)
    x, y = tiny_data(100)
    assert model_noise_scale(model, x, y, ns_cfg, bn_mode="eval") == exact_noise_scale(
        model, x, y, chunk_size=ns_cfg["chunk_size"])
    # the seed reaches the exact method's grouping: the same value, another interval
    seeded = model_noise_scale(model, x, y, ns_cfg, seed=5, bn_mode="eval")
    assert seeded == exact_noise_scale(model, x, y, seed=5)
    # the seed deals the groups: it moves the interval, and the value only by the order of its sums
    assert seeded.b_simple == pytest.approx(exact_noise_scale(model, x, y).b_simple, rel=1e-12)
    assert seeded.ci_low != exact_noise_scale(model, x, y).ci_low
    cfg = {**ns_cfg, "b_small": 2, "b_big": 8, "n_draws": 4, "max_draws": 8, "n_bootstrap": 50}
    auto = model_noise_scale(model, x, y, cfg, seed=1, bn_mode="batch")
    assert auto.method == "two_batch" and 4 <= auto.n_draws <= 8
    assert auto == model_two_batch_noise_scale(model, x, y, 2, 8, 4, seed=1, bn_mode="batch", max_draws=8,
                                               n_bootstrap=50, rel_error=cfg["rel_error"])
    with pytest.raises(ValueError, match="'exact' needs per-example gradients.*BatchNorm"):
        model_noise_scale(model, x, y, {**cfg, "method": "exact"}, bn_mode="batch")
    with pytest.raises(ValueError, match="'exact' needs per-example gradients.*GRU"):
        noise_scale_method(build_model("gru", (40,), 10), 10, {**cfg, "method": "exact"})
    with pytest.raises(ValueError, match="unknown noise-scale method"):
        noise_scale_method(model, 10, {**cfg, "method": "magic"})
