"""The noise scale B_simple: the two-batch estimator against linear regression, where Sigma is known
exactly; the exact per-example method against a brute-force covariance; the adaptive number of
draws and its interval; and the choice between the two methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.analysis.noise_scale import (
    NoiseScale,
    b_simple_of,
    exact_noise_scale,
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


def brute_force_b_simple(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from each example's gradient by plain autograd and numpy's population covariance."""
    model.eval()
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy().copy())
    g = np.stack(rows)  # (n, P)
    sigma = np.cov(g, rowvar=False, bias=True)  # bias=True: normalised by n, the population covariance
    return float(np.sum(g.mean(0) ** 2)), float(np.trace(sigma))


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
    # an exact value: no draws, an interval of width zero
    assert (ns.method, ns.n_examples, ns.n_draws) == ("exact", N_TINY, 0)
    assert ns.ci_low == ns.b_simple == ns.ci_high
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


# ---------------------------------------------------------------- adaptive two-batch draws and interval


def test_interval_covers_the_exact_value():
    """The 95% bootstrap interval of the adaptive estimate covers the exact B_simple for most seeds."""
    model = tiny_net()
    x, y = tiny_data(64)
    exact = exact_noise_scale(model, x, y).b_simple
    assert 4 < exact < 64  # inside what b_small=4 and b_big=64 resolve
    hits = []
    for seed in range(10):
        ns = model_two_batch_noise_scale(model, x, y, b_small=4, b_big=64, n_draws=10, seed=seed,
                                         max_draws=400, rel_error=0.1)
        assert ns.ci_low < ns.b_simple < ns.ci_high
        hits.append(ns.ci_low <= exact <= ns.ci_high)
    assert sum(hits) >= 8


def test_draws_follow_the_requested_error(regression):
    g, _, _ = regression
    measure = lambda rel_error, max_draws, seed=3: two_batch_noise_scale(  # noqa: E731
        batch_grad_of(g), N, 2, 8, n_draws=10, seed=seed, max_draws=max_draws, rel_error=rel_error, n_bootstrap=200)
    loose, medium, tight = measure(100.0, 5000), measure(0.3, 5000), measure(1e-4, 37)
    assert loose.n_draws == 10  # the first block already meets a loose error
    assert 10 < medium.n_draws < 5000
    assert tight.n_draws == 37  # never more than max_draws, even off the block sizes
    # the interval reflects the error aimed at (half-width about 1.96 standard errors)
    assert (medium.ci_high - medium.ci_low) / 2 < 2.5 * 0.3 * medium.b_simple
    assert loose.ci_high - loose.ci_low > medium.ci_high - medium.ci_low  # 10 draws against hundreds
    # more draws extend the same sequence: the first ten are those of the loose measurement
    assert measure(100.0, 5000) == loose
    # a negative or infinite estimate is noise however small its bootstrap error looks: keep drawing
    for seed in (1, 2):
        assert not 0 <= measure(100.0, 10, seed).b_simple < math.inf
        assert measure(100.0, 5000, seed).n_draws > 10


def test_unresolved_signal_gives_an_open_interval():
    signs = torch.tensor([1.0, -1.0]).repeat(N // 2)[:, None] * torch.ones(N, 3)  # G = 0, tr(Sigma) = 3
    for seed in range(50):
        ns = two_batch_noise_scale(batch_grad_of(signs), N, 2, 8, n_draws=3, seed=seed)
        if ns.grad_sq <= 0:
            break
    assert ns.grad_sq <= 0 < ns.trace_sigma
    assert ns.b_simple == math.inf and ns.ci_high == math.inf
    # an infinite noise scale is never resolved, so every allowed draw is spent
    assert two_batch_noise_scale(batch_grad_of(signs), N, 2, 8, n_draws=5, max_draws=60, rel_error=1.0).n_draws == 60


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
    x, y = tiny_data(40)
    assert model_noise_scale(model, x, y, ns_cfg, bn_mode="eval") == exact_noise_scale(
        model, x, y, chunk_size=ns_cfg["chunk_size"])
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
