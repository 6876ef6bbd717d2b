"""B_noise = tr(H Sigma) / (G^T H G): the exact method against an explicitly formed Hessian and
per-example gradients; the probes' vectors (exact on average over every sign pattern), their
interval's coverage and unbiasedness; an LSTM language model (probes only) and a segmentation
net with ignored pixels; B_noise = B_simple for an isotropic Hessian, and the conventions for
G^T H G <= 0; the model left unchanged; and the configuration's checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from batchlab.analysis.b_noise import (
    DEFAULTS,
    BNoise,
    ModelPoint,
    b_noise_config,
    b_noise_method,
    exact_b_noise,
    model_b_noise,
    probe_b_noise,
    probe_vectors,
)
from batchlab.analysis.noise_scale import exact_noise_scale
from batchlab.analysis.objective import ModelObjective
from batchlab.data import IGNORE_INDEX
from batchlab.models.lstm import LSTMLanguageModel

EXACT = {"method": "exact"}


# ---------------------------------------------------------------- brute force, independent of the module


def flat_params(model: nn.Module) -> tuple[torch.Tensor, list[str], list[torch.Size]]:
    named = [(n, p) for n, p in model.named_parameters()]
    return torch.cat([p.detach().reshape(-1) for _, p in named]), [n for n, _ in named], [p.shape for _, p in named]


def example_losses(model: nn.Module, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each example's summed cross-entropy (ignored targets excluded), one example at a time."""
    _, names, shapes = flat_params(model)
    sizes = [math.prod(s) for s in shapes]
    params = {n: t.view(s) for n, t, s in zip(names, w.split(sizes), shapes)}
    buffers = dict(model.named_buffers())
    out = []
    for i in range(len(x)):
        logits = functional_call(model, (params, buffers), (x[i : i + 1],))
        out.append(F.cross_entropy(logits, y[i : i + 1], reduction="sum", ignore_index=IGNORE_INDEX))
    return torch.stack(out)


def brute_force(model: nn.Module, x: torch.Tensor, y: torch.Tensor, full_hessian: bool = True) -> dict:
    """tr(H Sigma), G^T H G, |G|^2, tr(Sigma) from explicit per-example gradients and H (or exact HVPs)."""
    model.eval()
    w, _, _ = flat_params(model)
    J = torch.autograd.functional.jacobian(lambda p: example_losses(model, p, x, y), w)  # (n, P): rows g_i
    G = J.mean(0)
    D = J - G
    mean_loss = lambda p: example_losses(model, p, x, y).mean()  # noqa: E731
    if full_hessian:
        H = torch.autograd.functional.hessian(mean_loss, w)
        HD, HG = D @ H, H @ G
    else:
        HD = torch.stack([torch.autograd.functional.hvp(mean_loss, w, d)[1] for d in D])
        HG = torch.autograd.functional.hvp(mean_loss, w, G)[1]
    t = (D * HD).sum(1).mean().item()
    ghg = (G @ HG).item()
    return dict(trace_h_sigma=t, g_h_g=ghg, grad_sq=G.pow(2).sum().item(), trace_sigma=D.pow(2).sum(1).mean().item(),
                b_noise=t / ghg)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------- models and data


def tiny_mlp(n: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (n,), generator=gen)
    return model, x, y


class TinySegmenter(nn.Module):
    """Per-pixel classes (B, C, H, W) from (B, 2, H, W) images, as the segmentation models' outputs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 1), nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def tiny_segmentation(n: int = 6):
    torch.manual_seed(1)
    model = TinySegmenter().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, 3, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (n, 3, 3), generator=gen)
    y[0, 0, :] = IGNORE_INDEX  # a boundary
    y[1] = IGNORE_INDEX  # an example with no labelled pixel: l_1 = 0, g_1 = 0, still one of the n
    return model, x, y


def tiny_lm(n: int = 6, vocab: int = 11, length: int = 5):
    torch.manual_seed(2)
    model = LSTMLanguageModel(vocab, embedding=5, hidden=6, layers=1).double()
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(vocab, (n, length + 1), generator=gen)
    return model, tokens[:, :-1], tokens[:, 1:]  # (N, T) windows and their next tokens


@pytest.fixture(scope="module")
def mlp_case():
    model, x, y = tiny_mlp()
    return model, x, y, brute_force(model, x, y)


# ---------------------------------------------------------------- exact


@pytest.mark.parametrize("extra", [{}, {"chunk_size": 5, "data_chunk_size": 5, "hvp_batch": 3},
                                   {"retain_graph": False, "data_chunk_size": 7, "hvp_batch": 4}])
def test_exact_matches_explicit_hessian(mlp_case, extra):
    model, x, y, truth = mlp_case
    r = model_b_noise(model, x, y, {**EXACT, **extra})
    assert r.method == "exact" and r.n_examples == len(x) and r.n_hvp == len(x) + 1 and r.n_probes == 0
    for key in ("trace_h_sigma", "g_h_g", "grad_sq", "trace_sigma", "b_noise"):
        assert rel(getattr(r, key), truth[key]) < 1e-6, key
    assert truth["g_h_g"] > 0 and truth["trace_h_sigma"] > 0  # a resolved case
    assert r.ci_low == r.ci_high == r.b_noise and r.stderr == 0 and r.rel_error_met
    assert r.b_simple == pytest.approx(truth["trace_sigma"] / truth["grad_sq"], rel=1e-9)


def test_exact_segmentation_with_ignored_pixels_and_same_b_simple_as_noise_scale():
    model, x, y = tiny_segmentation()
    truth = brute_force(model, x, y)
    r = model_b_noise(model, x, y, {**EXACT, "chunk_size": 4})
    for key in ("trace_h_sigma", "g_h_g", "grad_sq", "trace_sigma", "b_noise"):
        assert rel(getattr(r, key), truth[key]) < 1e-6, key
    ns = exact_noise_scale(model, x, y, chunk_size=4)  # B_simple's own measurement: the same g_i, G and Sigma
    assert rel(r.grad_sq, ns.grad_sq) < 1e-10 and rel(r.trace_sigma, ns.trace_sigma) < 1e-10
    assert rel(r.b_simple, ns.b_simple) < 1e-10


def test_exact_refuses_recurrent_models_and_auto_falls_back_to_probes():
    model, x, y = tiny_lm()
    with pytest.raises(ValueError, match="'exact' needs per-example gradients.*LSTM"):
        model_b_noise(model, x, y, EXACT)
    assert b_noise_method(model, len(x), {"method": "auto"}) == "probes"


# ---------------------------------------------------------------- probes


def all_sign_patterns(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=n)), dtype=torch.float64)


def every_probe(model, x, y, retain_graph=True, data_chunk_size=4096):
    """tr(H Sigma) and tr(Sigma) averaged over all 2^n sign patterns: exactly their expectations."""
    point = ModelPoint(ModelObjective(model, x, y, chunk_size=data_chunk_size), data_chunk_size, retain_graph)
    V = probe_vectors(point, all_sign_patterns(len(x)), point.mean_grad())
    q = (V * point.hvp(V)).sum(1)
    return q.mean().item(), V.pow(2).sum(1).mean().item()


@pytest.mark.parametrize("retain_graph", [True, False])
def test_probe_vectors_average_exactly_over_every_sign_pattern(mlp_case, retain_graph):
    model, x, y, _ = mlp_case
    x, y = x[:8], y[:8]
    truth = brute_force(model, x, y)
    t, s = every_probe(model, x, y, retain_graph, data_chunk_size=3)
    assert rel(t, truth["trace_h_sigma"]) < 1e-9 and rel(s, truth["trace_sigma"]) < 1e-9


def test_probes_on_segmentation_average_exactly():
    model, x, y = tiny_segmentation()
    truth = brute_force(model, x, y)
    t, s = every_probe(model, x, y)
    assert rel(t, truth["trace_h_sigma"]) < 1e-9 and rel(s, truth["trace_sigma"]) < 1e-9


def test_probes_on_an_lstm_language_model():
    model, x, y = tiny_lm()
    truth = brute_force(model, x, y, full_hessian=False)  # per-example autograd and HVPs: no vmap
    t, s = every_probe(model, x, y)
    assert rel(t, truth["trace_h_sigma"]) < 1e-9 and rel(s, truth["trace_sigma"]) < 1e-9
    r = model_b_noise(model, x, y, {"n_probes": 4, "max_probes": 4})
    assert r.method == "probes" and r.n_probes == 4 and r.n_hvp == 5
    assert rel(r.g_h_g, truth["g_h_g"]) < 1e-9 and rel(r.grad_sq, truth["grad_sq"]) < 1e-9  # exact parts
    assert math.isfinite(r.trace_h_sigma) and r.ci_low <= r.b_noise <= r.ci_high


@pytest.fixture(scope="module")
def probe_repeats(mlp_case):
    """60 measurements (seeds) of 10 probes each on the tiny MLP."""
    model, x, y, _ = mlp_case
    point = ModelPoint(ModelObjective(model, x, y))
    return [probe_b_noise(point, 10, seed=s) for s in range(60)]


def test_probe_intervals_cover_the_exact_value(mlp_case, probe_repeats):
    truth = mlp_case[3]["b_noise"]
    covered = np.mean([r.ci_low <= truth <= r.ci_high for r in probe_repeats])
    assert covered >= 0.85, covered
    assert all(r.n_probes == 10 and r.n_hvp == 11 for r in probe_repeats)


def test_probe_estimates_are_unbiased(mlp_case, probe_repeats):
    truth = mlp_case[3]
    for name in ("trace_h_sigma", "trace_sigma"):
        values = np.array([getattr(r, name) for r in probe_repeats])
        se = values.std(ddof=1) / math.sqrt(len(values))
        assert abs(values.mean() - truth[name]) < 4 * se, name
    # the exact parts are exact in every repeat
    assert all(rel(r.g_h_g, truth["g_h_g"]) < 1e-9 and rel(r.grad_sq, truth["grad_sq"]) < 1e-9 for r in probe_repeats)


def test_adaptive_probes_stop_on_the_target_or_the_maximum(mlp_case):
    model, x, y, _ = mlp_case
    point = ModelPoint(ModelObjective(model, x, y))
    loose = probe_b_noise(point, 4, seed=0, max_probes=200, rel_error=0.5)
    assert loose.rel_error_met and loose.stderr <= 0.5 * abs(loose.trace_h_sigma) and loose.n_probes < 200
    tight = probe_b_noise(point, 4, seed=0, max_probes=12, rel_error=1e-6)
    assert not tight.rel_error_met and tight.n_probes == 12 and tight.n_hvp == 13
    again = probe_b_noise(point, 4, seed=0, max_probes=12, rel_error=1e-6)
    assert again.trace_h_sigma == tight.trace_h_sigma  # reproducible from its seed


# ---------------------------------------------------------------- quadratic losses: H known


class QuadraticPoint:
    """l_i(w) = (w - a_i)^T A (w - a_i) / 2: g_i = A (w - a_i), H = A, Sigma = A cov(a) A."""

    def __init__(self, A: torch.Tensor, a: torch.Tensor, w: torch.Tensor):
        self.A, self.a, self.w, self.n = A, a, w, len(a)

    def mean_grad(self):
        return (self.w - self.a.mean(0)) @ self.A

    def hvp(self, V):
        return V @ self.A

    def signed_grads(self, R):
        return (R @ (self.w - self.a)) @ self.A

    def example_grads(self, start, stop):
        return (self.w - self.a[start:stop]) @ self.A


def quadratic(diag, w, n=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, len(diag), generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.3, 2.0, 0.5])[: len(diag)]
    return QuadraticPoint(torch.diag(torch.tensor(diag, dtype=torch.float64)), a, torch.tensor(w, dtype=torch.float64))


def test_b_noise_is_b_simple_when_the_hessian_is_isotropic():
    iso = exact_b_noise(quadratic([2.5] * 4, [1.0, -0.5, 0.2, 0.7]), chunk_size=7)
    assert iso.b_noise == pytest.approx(iso.b_simple, rel=1e-12)
    # and the probes' average: the same value in expectation
    probes = probe_b_noise(quadratic([2.5] * 4, [1.0, -0.5, 0.2, 0.7]), 2000, seed=0)
    assert abs(probes.b_noise - iso.b_noise) < 4 * probes.stderr / probes.g_h_g
    # not so for an anisotropic Hessian, where curvature reweights the directions: here G lies
    # mostly along a flat direction and the noise mostly along a sharp one
    point = quadratic([0.1, 1.0, 5.0, 1.0], [3.0, 0.0, 0.0, 0.0])
    point.a -= point.a.mean(0)  # G = A w: along the flat first axis only
    aniso = exact_b_noise(point)
    h, m, var = point.A.diagonal(), point.w - point.a.mean(0), point.a.var(0, unbiased=False)
    assert aniso.b_noise == pytest.approx(((h**3 * var).sum() / (h**3 * m**2).sum()).item(), rel=1e-12)
    assert aniso.b_simple == pytest.approx(((h**2 * var).sum() / (h**2 * m**2).sum()).item(), rel=1e-12)
    assert aniso.b_noise > 10 * aniso.b_simple


def test_non_positive_curvature_along_the_gradient():
    # G along the first axis, where H has curvature -1: G^T H G < 0 < tr(H Sigma)
    point = quadratic([-1.0, 2.0, 2.0, 2.0], [3.0, 0.0, 0.0, 0.0], n=40)
    point.a -= point.a.mean(0)  # mean of the a_i at the origin: G = A w along e_1 exactly
    r = exact_b_noise(point)
    assert r.g_h_g < 0 < r.trace_h_sigma and r.b_noise == math.inf
    p = probe_b_noise(point, 50, seed=0)
    assert p.b_noise == math.inf and (p.ci_low, p.ci_high) == (math.inf, math.inf)
    # tr(H Sigma) <= 0 as well: nothing resolved
    point = quadratic([-1.0, -2.0, -2.0, -2.0], [3.0, 0.0, 0.0, 0.0])
    r = exact_b_noise(point)
    assert r.g_h_g < 0 and r.trace_h_sigma < 0 and math.isnan(r.b_noise)


# ---------------------------------------------------------------- the model left as it was


class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.bn(self.a(x))))


@pytest.mark.parametrize("method", ["exact", "probes"])
@pytest.mark.parametrize("training", [True, False])
def test_model_weights_buffers_and_mode_unchanged(method, training):
    torch.manual_seed(3)
    model = TinyBN().double()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(3, (10,))
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = model_b_noise(model, x, y, {"method": method, "n_probes": 3, "max_probes": 3})
    assert isinstance(r, BNoise) and r.method == method and math.isfinite(r.b_noise)
    assert model.training == training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batchnorm_in_batch_mode_is_refused():
    model = TinyBN().double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(3, (10,))
    for method in ("auto", "exact", "probes"):
        with pytest.raises(ValueError, match="couples the examples.*bn_mode='eval'"):
            model_b_noise(model, x, y, {"method": method}, bn_mode="batch")
    mlp, x, y = tiny_mlp(6)  # no BatchNorm: batch mode is the same loss, and allowed
    assert model_b_noise(mlp, x, y, EXACT, bn_mode="batch").b_noise == pytest.approx(
        model_b_noise(mlp, x, y, EXACT).b_noise, rel=1e-12)


# ---------------------------------------------------------------- configuration


def test_auto_chooses_exact_up_to_exact_max_examples():
    model, _, _ = tiny_mlp()
    assert b_noise_method(model, 12, {"exact_max_examples": 12}) == "exact"
    assert b_noise_method(model, 13, {"exact_max_examples": 12}) == "probes"
    assert b_noise_method(model, 5, {"method": "probes"}) == "probes"
    assert b_noise_config(None) == DEFAULTS


@pytest.mark.parametrize("cfg, match", [
    ({"methd": "exact"}, "unknown B_noise config key"),
    ({"method": "hutchinson"}, "unknown B_noise method"),
    ({"n_probes": 1}, "n_probes must be at least 2"),
    ({"n_probes": 20, "max_probes": 10}, "max_probes must be at least n_probes"),
    ({"n_probes": 2.5}, "n_probes must be a positive integer"),
    ({"rel_error": 0}, "rel_error must be a positive number"),
    ({"rel_error": float("nan")}, "rel_error must be a positive number"),
    ({"rel_error": "0.1"}, "rel_error must be a positive number"),
    ({"chunk_size": 0}, "chunk_size must be a positive integer"),
    ({"hvp_batch": 0}, "hvp_batch must be a positive integer"),
    ({"data_chunk_size": -1}, "data_chunk_size must be a positive integer"),
    ({"exact_max_examples": -1}, "exact_max_examples must be a non-negative integer"),
    ({"exact_max_examples": True}, "exact_max_examples must be a non-negative integer"),
    ({"retain_graph": "yes"}, "retain_graph must be true or false"),
])
def test_bad_config_is_refused(cfg, match):
    model, x, y = tiny_mlp(4)
    with pytest.raises(ValueError, match=match):
        model_b_noise(model, x, y, cfg)


def test_bad_data_is_refused():
    model, x, y = tiny_mlp(4)
    with pytest.raises(ValueError, match="as many labels as inputs"):
        model_b_noise(model, x, y[:3], EXACT)
