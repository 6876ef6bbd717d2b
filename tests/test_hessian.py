"""Top Hessian eigenvalue (Lanczos) and Hutchinson trace against explicit Hessians."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from batchlab.analysis.hessian import hutchinson_trace, top_eigenvalue
from batchlab.analysis.objective import ModelObjective
from batchlab.models import build_model


class Quadratic:
    """0.5 w^T A w for an explicit symmetric A: an Objective whose Hessian is A everywhere."""

    def __init__(self, A: torch.Tensor):
        self.A = A.float()
        self.n_hvp = 0

    def params(self) -> torch.Tensor:
        return torch.ones(len(self.A))

    def loss(self, w: torch.Tensor) -> float:
        return 0.5 * float(w @ self.A @ w)

    def loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        return self.loss(w), self.A @ w

    def hvp(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.n_hvp += 1
        return self.A @ v


@pytest.fixture(scope="module")
def tiny_net():
    """A 39-parameter network on fixed random data, its Objective, and its explicit float64 Hessian."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    obj = ModelObjective(net, x, y)

    def loss(w: torch.Tensor) -> torch.Tensor:  # float64 throughout: the reference must beat float32
        return F.cross_entropy(functional_call(net, obj.unflatten(w), (x.double(),)), y)

    H = torch.autograd.functional.hessian(loss, obj.params().double())
    return obj, H


def test_top_eigenvalue_matches_explicit_hessian(tiny_net):
    obj, H = tiny_net
    eigs = torch.linalg.eigvalsh(H)
    assert eigs.min() < -0.1  # indefinite, as a network's Hessian is away from a minimum
    lam, n_hvp = top_eigenvalue(obj)
    assert lam == pytest.approx(eigs.max().item(), rel=1e-4)
    assert 1 <= n_hvp <= 300


def test_hutchinson_trace_through_model_objective(tiny_net):
    obj, H = tiny_net
    est, se = hutchinson_trace(obj, n_probes=300)
    assert abs(est - torch.trace(H).item()) < 4 * se


def test_hutchinson_trace_and_standard_error_are_calibrated(tiny_net):
    # the tiny net's Hessian as an explicit quadratic: 2000 probes cost milliseconds
    _, H = tiny_net
    n_probes = 2000
    est, se = hutchinson_trace(Quadratic(H), n_probes=n_probes)
    # Rademacher probes: Var(v^T H v) = 2 * sum_{i != j} H_ij^2 exactly
    true_se = math.sqrt(2 * (H.pow(2).sum() - H.diag().pow(2).sum()).item() / n_probes)
    assert abs(est - torch.trace(H).item()) < 4 * true_se
    assert se == pytest.approx(true_se, rel=0.1)


def test_diagonal_quadratic_is_exact():
    d = torch.linspace(-5.0, 3.0, 50)  # the most negative entry dominates in magnitude
    quad = Quadratic(torch.diag(d))
    lam, n_hvp = top_eigenvalue(quad, tol=1e-8)
    assert lam == pytest.approx(3.0, rel=1e-6)
    assert n_hvp == quad.n_hvp  # every HVP is counted
    # v^T D v = sum_i d_i v_i^2 = tr(D) for any sign vector: one probe is exact
    est, se = hutchinson_trace(Quadratic(torch.diag(d)), n_probes=1)
    assert est == pytest.approx(d.sum().item(), abs=1e-4)
    assert math.isnan(se)
    est, se = hutchinson_trace(Quadratic(torch.diag(d)), n_probes=5)
    assert est == pytest.approx(d.sum().item(), abs=1e-4) and se < 1e-5


def test_one_parameter():
    lam, n_hvp = top_eigenvalue(Quadratic(torch.tensor([[-2.5]])))
    assert (lam, n_hvp) == (pytest.approx(-2.5), 1)


def test_out_of_budget_returns_ritz_value_with_warning(tiny_net, caplog):
    obj, H = tiny_net
    top = torch.linalg.eigvalsh(H).max().item()
    with caplog.at_level(logging.WARNING, logger="batchlab.analysis.hessian"):
        lam, n_hvp = top_eigenvalue(obj, tol=1e-10, max_hvp=5)
    assert n_hvp == 5
    assert "did not reach tol" in caplog.text
    # a Ritz value is a lower bound on the top eigenvalue; five Krylov vectors already get close
    assert 0.8 * top < lam <= top * (1 + 1e-5)


def test_seeding_is_reproducible(tiny_net):
    obj, _ = tiny_net
    quad = Quadratic(_sym(30))
    assert hutchinson_trace(quad, n_probes=4, seed=3) == hutchinson_trace(quad, n_probes=4, seed=3)
    assert hutchinson_trace(quad, n_probes=4, seed=3) != hutchinson_trace(quad, n_probes=4, seed=4)
    assert top_eigenvalue(obj, max_hvp=6, seed=1) == top_eigenvalue(obj, max_hvp=6, seed=1)


def _sym(n: int) -> torch.Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    return a + a.T


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda q: top_eigenvalue(q, tol=0.0), "tol must be positive"),
        (lambda q: top_eigenvalue(q, max_hvp=0), "max_hvp must be at least 1"),
        (lambda q: hutchinson_trace(q, n_probes=0), "n_probes must be at least 1"),
        (lambda q: top_eigenvalue(Quadratic(torch.zeros(0, 0))), "no parameters"),
        (lambda q: hutchinson_trace(Quadratic(torch.zeros(0, 0))), "no parameters"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(Quadratic(torch.eye(3)))


def test_mnist1d_mlp():
    torch.manual_seed(0)
    model = build_model("mlp", (40,), 10)
    obj = ModelObjective(model, torch.randn(64, 40), torch.randint(0, 10, (64,)))
    lam, n_hvp = top_eigenvalue(obj, max_hvp=100)
    est, se = hutchinson_trace(obj, n_probes=10)
    assert math.isfinite(lam) and lam > 0 and n_hvp <= 100
    assert math.isfinite(est) and math.isfinite(se) and se > 0
    # every probe has |v|^2 = P, so each term v^T H v is at most lambda_max * P
    assert est <= lam * obj.params().numel()


def test_graph_reusing_operator_matches_fresh_hvps():
    from batchlab.analysis.objective import ModelObjective, hvp_operator
    from batchlab.models import build_model

    torch.manual_seed(1)
    obj = ModelObjective(build_model("cnn", (40,), 10), torch.randn(50, 40), torch.randint(0, 10, (50,)), chunk_size=16)
    w = obj.params()
    op = hvp_operator(obj, w)
    for _ in range(3):  # the retained graph serves many products
        v = torch.randn_like(w)
        torch.testing.assert_close(op(v), obj.hvp(w, v), rtol=1e-4, atol=1e-6)
