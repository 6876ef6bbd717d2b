"""The two-batch-size noise-scale estimator against linear regression, where Sigma is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from batchlab.analysis.noise_scale import NoiseScale, model_noise_scale, noise_scale_from_norms, two_batch_noise_scale
from batchlab.models import build_model

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
    ns = noise_scale_from_norms(g_small_sq=10.0, g_big_sq=0.1, b_small=1, b_big=10, n_draws=1)
    assert ns.grad_sq < 0 < ns.trace_sigma
    assert ns.b_simple == math.inf
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
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs = {"n": N, **kwargs}
    with pytest.raises(ValueError, match=message):
        two_batch_noise_scale(lambda idx: torch.zeros(3), **kwargs)


def test_model_noise_scale_on_mlp():
    torch.manual_seed(0)
    model = build_model("mlp", (40,), 10)
    model.train()
    x, y = torch.randn(256, 40), torch.randint(0, 10, (256,))
    before = [p.detach().clone() for p in model.parameters()]
    ns = model_noise_scale(model, x, y, b_small=8, b_big=64, n_draws=4)
    assert isinstance(ns, NoiseScale)
    assert math.isfinite(ns.b_simple) and ns.b_simple > 0
    assert ns.g_small_sq > ns.g_big_sq > 0  # smaller batches are noisier
    assert model.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights untouched
    with pytest.raises(ValueError, match="as many labels"):
        model_noise_scale(model, x, y[:10], b_small=8, b_big=64)
