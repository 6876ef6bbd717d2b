"""Epsilon-sharpness (Keskar et al. 2017) against answers known in closed form.

The test objectives are quadratics f(z) = c + 0.5 * ||M (z - center)||^2 written directly in
torch (float64, so the checks can be tight), for which the maximum over the box is known:
rank-one and diagonal Hessians have closed forms, and a convex function on a box peaks at a
vertex, so small dense cases are solved exactly by enumerating vertices.
"""

from __future__ import annotations

import copy
import itertools
import time

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from batchlab.analysis import sharpness
from batchlab.analysis.objective import ModelObjective
from batchlab.analysis.sharpness import (
    SharpnessResult,
    box_half_widths,
    eps_sharpness,
    eps_sharpness_converged,
    random_subspace,
)
from batchlab.models import build_model


class Quadratic:
    """f(z) = c + 0.5 ||M (z - center)||^2 at the point x; counts and records every evaluation."""

    def __init__(self, x, M, c=0.0, center=None, dtype=torch.float64):
        self.x = torch.as_tensor(x, dtype=dtype)
        self.M = torch.as_tensor(M, dtype=dtype)
        self.c = c
        self.center = self.x.clone() if center is None else torch.as_tensor(center, dtype=dtype)
        self.seen: list[float] = []
        self.n_hvp = 0

    def params(self) -> torch.Tensor:
        return self.x.clone()

    def loss(self, w):
        r = self.M @ (w - self.center)
        return float(self.c + 0.5 * r @ r)

    def loss_and_grad(self, w):
        r = self.M @ (w - self.center)
        f = float(self.c + 0.5 * r @ r)
        self.seen.append(f)
        return f, self.M.T @ r

    def hvp(self, w, v):
        self.n_hvp += 1
        return self.M.T @ (self.M @ v)


def phi(max_loss, f):
    return 100.0 * (max_loss - f) / (1.0 + f)


def rng_vec(seed, n, scale=1.0):
    return np.random.default_rng(seed).normal(size=n) * scale


def full_box(x, eps):
    return eps * (np.abs(x) + 1.0)


# ---- 1. rank-one Hessian at a stationary point: the "does not stall" test ----


@pytest.mark.parametrize("eps", [1e-3, 5e-4])
def test_rank_one_matches_closed_form_from_stationary_start(eps):
    n, c = 20, 0.3
    x, u = rng_vec(1, n), rng_vec(2, n, 3.0)
    obj = Quadratic(x, u[None, :], c=c)
    b = full_box(x, eps)
    exact_max = c + 0.5 * np.sum(np.abs(u) * b) ** 2

    res = eps_sharpness(obj, epsilon=eps)

    assert isinstance(res, SharpnessResult)
    assert res.loss == c
    assert res.max_loss == pytest.approx(exact_max, rel=1e-12, abs=0)
    assert res.value == pytest.approx(phi(exact_max, c), rel=1e-6)
    assert res.value > 0
    assert (res.epsilon, res.subspace_dim) == (eps, None)
    assert res.start == "curvature_corner"  # for a rank-one Hessian this corner is the exact answer

    # L-BFGS-B plainly started at y = 0 stalls there: the gradient is exactly zero
    def neg(y):
        f, g = obj.loss_and_grad(torch.as_tensor(x + y))
        return -f, -g.numpy()

    plain = minimize(neg, np.zeros(n), jac=True, method="L-BFGS-B", bounds=list(zip(-b, b)), options={"maxiter": 10})
    assert -plain.fun == c  # phi would be reported as exactly 0
    assert np.all(plain.x == 0)


def test_rank_one_without_curvature_start_lbfgsb_climbs_from_random_corner(monkeypatch):
    """Without the Hessian-based start, L-BFGS-B itself must do the work from a random corner."""
    monkeypatch.setattr(sharpness, "N_POWER_ITERS", 0)
    n, c, eps = 20, 0.3, 1e-3
    x, u = rng_vec(1, n), rng_vec(2, n, 3.0)
    obj = Quadratic(x, u[None, :], c=c)
    exact_max = c + 0.5 * np.sum(np.abs(u) * full_box(x, eps)) ** 2

    res = eps_sharpness(obj, epsilon=eps)

    assert res.start == "random_corner"  # the gradient is exactly 0 at y = 0: no gradient corner either
    assert obj.n_hvp == 0
    assert res.n_iter >= 1
    assert max(obj.seen[:3]) < exact_max - 1e-3 * (exact_max - c)  # the starts alone were well short
    assert res.max_loss == pytest.approx(exact_max, rel=1e-12, abs=0)


# ---- 2. diagonal positive-definite Hessian ----


@pytest.mark.parametrize("eps", [1e-3, 5e-4])
def test_diagonal_quadratic_matches_closed_form(eps):
    n, c = 15, 1.7
    x = rng_vec(3, n, 2.0)
    h = np.random.default_rng(4).uniform(0.1, 50.0, n)
    obj = Quadratic(x, np.diag(np.sqrt(h)), c=c)
    b = full_box(x, eps)
    exact_max = c + 0.5 * np.sum(h * b**2)

    res = eps_sharpness(obj, epsilon=eps)

    assert res.max_loss == pytest.approx(exact_max, rel=1e-12, abs=0)
    assert res.value == pytest.approx(phi(exact_max, c), rel=1e-6)


def test_off_centre_diagonal_quadratic_uses_gradient_corner():
    """Minimiser shifted by m inside the box: the max is at y = -sign(m) b, where the gradient points."""
    n, c, eps = 12, 0.2, 1e-3
    x = rng_vec(5, n)
    b = full_box(x, eps)
    m = np.random.default_rng(6).uniform(-0.5, 0.5, n) * b
    h = np.random.default_rng(7).uniform(1.0, 10.0, n)
    obj = Quadratic(x, np.diag(np.sqrt(h)), c=c, center=x + m)
    f_x = c + 0.5 * np.sum(h * m**2)
    exact_max = c + 0.5 * np.sum(h * (b + np.abs(m)) ** 2)

    res = eps_sharpness(obj, epsilon=eps)

    assert res.loss == pytest.approx(f_x, rel=1e-12)
    assert res.start == "gradient_corner"
    assert res.max_loss == pytest.approx(exact_max, rel=1e-12, abs=0)
    assert res.value == pytest.approx(phi(exact_max, f_x), rel=1e-6)


def test_float32_objective_close_to_closed_form():
    """The float32 path (as for real networks); float32 rounding of x + y limits agreement to ~1e-4."""
    n, c, eps = 10, 0.5, 1e-3
    x = rng_vec(8, n)
    h = np.random.default_rng(9).uniform(200.0, 1000.0, n)
    obj = Quadratic(x, np.diag(np.sqrt(h)), c=c, dtype=torch.float32)
    x32 = obj.params().double().numpy()
    exact_max = c + 0.5 * np.sum(h * full_box(x32, eps) ** 2)

    res = eps_sharpness(obj, epsilon=eps)

    assert res.value == pytest.approx(phi(exact_max, c), rel=1e-3)


# ---- 3. dense PSD quadratics: exact max by vertex enumeration ----
#
# A convex function peaks over a box at a vertex, so enumerating the 2^6 vertices gives the
# exact answer. Maximising a convex quadratic over a box is NP-hard in general, and L-BFGS-B is
# a local method: it stops at a KKT vertex (a local maximum), which for a generic dense Hessian
# need not be the global one -- about half the vertices of a 6-d Wishart quadratic are local
# maxima. So per case we assert what must always hold (the answer is a local-max vertex), and
# over a fixed family of cases how often the global max is found. Measured with the shipped
# settings: spiked Hessians (a dominant direction on top of a dense bulk, like a trained net's
# spectrum) 38/40 exact, worst 94% of the max rise; plain Wishart Hessians 22/40, mean 96%,
# worst 66%.


def dense_case(seed, spike):
    n, c, eps = 6, 0.4, 1e-3
    r = np.random.default_rng(100 + seed)
    x, W, v = r.normal(size=n), r.normal(size=(n, n)), r.normal(size=n)
    M = np.vstack([np.sqrt(spike * n) * v[None, :] / np.linalg.norm(v), W]) if spike else W
    b = full_box(x, eps)
    m = r.uniform(-0.5, 0.5, n) * b if seed % 2 else np.zeros(n)  # odd seeds: off-centre, no y -> -y symmetry
    return Quadratic(x, M, c=c, center=x + m), x, b, eps


@pytest.mark.parametrize("spike, min_exact, min_mean_ratio", [(20.0, 37, 0.99), (0.0, 20, 0.95)])
def test_dense_quadratic_reaches_a_local_max_vertex_and_mostly_the_best(spike, min_exact, min_mean_ratio):
    exact, ratios = 0, []
    for seed in range(40):
        obj, x, b, eps = dense_case(seed, spike)
        vertices = [np.array(s) * b for s in itertools.product([-1.0, 1.0], repeat=len(b))]
        values = [obj.loss(torch.as_tensor(x + y)) for y in vertices]

        res = eps_sharpness(obj, epsilon=eps)

        assert res.value == pytest.approx(phi(res.max_loss, res.loss), rel=1e-12)
        # the answer is a vertex, and a local maximum there: the gradient points out of the box
        at = [y for y, f in zip(vertices, values) if f == pytest.approx(res.max_loss, rel=1e-13, abs=0)]
        assert at, f"seed {seed}: max_loss {res.max_loss} is not a vertex value"
        g = [obj.loss_and_grad(torch.as_tensor(x + y))[1].numpy() for y in at]
        assert any(np.all(y * gy >= 0) for y, gy in zip(at, g)), f"seed {seed}: stopped at a non-KKT vertex"
        exact += res.max_loss == pytest.approx(max(values), rel=1e-12, abs=0)
        ratios.append((res.max_loss - res.loss) / (max(values) - res.loss))
    assert exact >= min_exact
    assert np.mean(ratios) >= min_mean_ratio


def test_reports_best_of_all_evaluations_and_counts_them():
    n, eps = 6, 1e-3
    r = np.random.default_rng(11)
    x = r.normal(size=n)
    obj = Quadratic(x, r.normal(size=(2, n)), c=0.1, center=x + 0.3 * eps * r.uniform(-1, 1, n))

    res = eps_sharpness(obj, epsilon=eps, max_iter=3)

    assert res.n_fev == len(obj.seen)
    assert res.n_fev >= 1 + sharpness.N_RANDOM_CORNERS  # y = 0 and the random corners at least
    assert res.n_fev <= 5 + 3 * 21  # the start, 4 more candidates and 3 iterations' line searches
    assert res.max_loss == max(obj.seen)
    assert res.loss == obj.seen[0]


class Concave(Quadratic):
    """f(z) = c - 0.5 ||M (z - center)||^2: peaked at `center`, so the box max can be interior."""

    def loss(self, w):
        return 2 * self.c - super().loss(w)

    def loss_and_grad(self, w):
        f, g = super().loss_and_grad(w)
        self.seen[-1] = 2 * self.c - f
        return self.seen[-1], -g


def test_interior_maximum_of_concave_function_is_found():
    """Peak at y = m strictly inside the box: max f = c exactly, reached by L-BFGS-B's own steps."""
    n, c, eps = 6, 0.7, 1e-3
    r = np.random.default_rng(12)
    x = r.normal(size=n)
    b = full_box(x, eps)
    h, m = r.uniform(1.0, 10.0, n), r.uniform(-0.8, 0.8, n) * b
    obj = Concave(x, np.diag(np.sqrt(h)), c=c, center=x + m)
    f_x = c - 0.5 * np.sum(h * m**2)

    res = eps_sharpness(obj, epsilon=eps)

    assert res.loss == pytest.approx(f_x, rel=1e-12)
    assert res.start == "zero"  # every corner is lower than x itself
    assert res.n_iter >= 1
    assert res.max_loss - f_x == pytest.approx(c - f_x, rel=1e-6)
    assert res.value == pytest.approx(phi(c, f_x), rel=1e-6)


# ---- 4. random subspace ----


def subspace_quadratic(n, p, seed, eps, c=0.25):
    """f(z) = c + 0.5 sum_i h_i (A^+ (z - x))_i^2, so f(x + A y) = c + 0.5 sum h_i y_i^2: closed form."""
    x = rng_vec(20, n)
    A = random_subspace(n, p, seed).double().numpy()
    P = np.linalg.pinv(A)  # (p, n), independent of the module's own pseudo-inverse
    h = np.random.default_rng(21).uniform(1.0, 20.0, p)
    b = eps * (np.abs(P @ x) + 1.0)
    return Quadratic(x, np.sqrt(h)[:, None] * P, c=c), c + 0.5 * np.sum(h * b**2)


@pytest.mark.parametrize("search", [eps_sharpness, eps_sharpness_converged])  # Keskar's and the converged one
def test_subspace_diagonal_matches_closed_form(search):
    n, p, eps = 30, 5, 1e-3
    obj, exact_max = subspace_quadratic(n, p, seed=3, eps=eps)

    res = search(obj, epsilon=eps, subspace_dim=p, seed=3)

    assert res.subspace_dim == p
    assert res.max_loss == pytest.approx(exact_max, rel=1e-9, abs=0)
    assert res.value == pytest.approx(phi(exact_max, 0.25), rel=1e-6)


def test_subspace_rank_one_matches_closed_form_and_depends_on_seed():
    n, p, eps, c = 40, 7, 5e-4, 0.6
    x, w = rng_vec(30, n), rng_vec(31, n, 2.0)
    obj = Quadratic(x, w[None, :], c=c)

    def exact(seed):
        A = random_subspace(n, p, seed).double().numpy()
        b = eps * (np.abs(np.linalg.pinv(A) @ x) + 1.0)
        return c + 0.5 * np.sum(np.abs(A.T @ w) * b) ** 2

    r0 = eps_sharpness(obj, epsilon=eps, subspace_dim=p, seed=0)
    r0_again = eps_sharpness(obj, epsilon=eps, subspace_dim=p, seed=0)
    r1 = eps_sharpness(obj, epsilon=eps, subspace_dim=p, seed=1)

    assert r0.max_loss == pytest.approx(exact(0), rel=1e-9, abs=0)
    assert r1.max_loss == pytest.approx(exact(1), rel=1e-9, abs=0)
    assert r0 == r0_again
    assert not torch.equal(random_subspace(n, p, 0), random_subspace(n, p, 1))
    assert torch.equal(random_subspace(n, p, 0), random_subspace(n, p, 0))
    assert r0.value != r1.value
    assert random_subspace(n, p, 0).dtype == torch.float32
    assert random_subspace(n, p, 0).std().item() == pytest.approx(1.0, abs=0.15)  # standard normal entries


def test_square_subspace_box_uses_pseudo_inverse_of_x():
    n, eps = 8, 1e-3
    x = torch.as_tensor(rng_vec(40, n))
    A = random_subspace(n, n, seed=5)
    A_inv_x = np.linalg.solve(A.double().numpy(), x.numpy())

    b = box_half_widths(x, eps, A)

    np.testing.assert_allclose(b, eps * (np.abs(A_inv_x) + 1.0), rtol=1e-10)
    assert not np.allclose(b, eps * (np.abs(x.numpy()) + 1.0))  # not the full-space box
    np.testing.assert_array_equal(box_half_widths(x, eps), eps * (np.abs(x.numpy()) + 1.0))

    # end to end: f(x + A y) = c + 0.5 sum h_i y_i^2 with the box built from A^{-1} x
    h = np.random.default_rng(41).uniform(1.0, 5.0, n)
    obj = Quadratic(x, np.sqrt(h)[:, None] * np.linalg.inv(A.double().numpy()), c=0.0)
    exact_max = 0.5 * np.sum(h * (eps * (np.abs(A_inv_x) + 1.0)) ** 2)
    res = eps_sharpness(obj, epsilon=eps, subspace_dim=n, seed=5)
    assert res.max_loss == pytest.approx(exact_max, rel=1e-9, abs=0)


# ---- 5. normalisation by 1 + f(x) ----


def test_value_is_normalised_by_one_plus_loss():
    n, eps = 10, 1e-3
    x, u = rng_vec(50, n), rng_vec(51, n)
    res0 = eps_sharpness(Quadratic(x, u[None, :], c=0.0), epsilon=eps)
    res3 = eps_sharpness(Quadratic(x, u[None, :], c=3.0), epsilon=eps)

    rise = 0.5 * np.sum(np.abs(u) * full_box(x, eps)) ** 2
    assert res0.value == pytest.approx(100.0 * rise, rel=1e-9)
    assert res3.value == pytest.approx(100.0 * rise / 4.0, rel=1e-9)
    assert res3.value == pytest.approx(100.0 * (res3.max_loss - res3.loss) / (1.0 + res3.loss), rel=1e-12)
    assert res3.loss == 3.0


def test_loss_at_or_below_minus_one_is_rejected():
    with pytest.raises(ValueError, match=r"1 \+ f\(x\), which needs f\(x\) > -1"):
        eps_sharpness(Quadratic(np.ones(3), np.eye(3), c=-1.0))


# ---- 6. a real network ----


# torch loads its forward-AD decompositions (via the deprecated torch.jit.script) on the first hvp
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_mlp_sharpness_is_sane_fast_and_leaves_model_alone():
    torch.manual_seed(0)
    model = build_model("mlp", (40,), 10)
    xs, ys = torch.randn(64, 40), torch.randint(0, 10, (64,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = ModelObjective(model, xs, ys)
    obj.hvp(obj.params(), obj.params())  # that one-off load takes ~1.5 s: keep it out of the timing

    # only the subspace run is timed: in the full space (15k variables) L-BFGS-B's own BLAS calls
    # dominate, and multi-threaded OpenBLAS on a busy 2-core machine makes them slow and erratic
    for subspace_dim, time_limit in ((100, 2.0), (None, 20.0)):
        t0 = time.perf_counter()
        res = eps_sharpness(obj, epsilon=1e-3, subspace_dim=subspace_dim, max_iter=10)
        elapsed = time.perf_counter() - t0

        assert elapsed < time_limit
        assert np.isfinite(res.value) and res.value > 0
        assert res.max_loss > res.loss
        assert res.loss == pytest.approx(obj.loss(obj.params()), rel=1e-5)
        assert 1 <= res.n_iter <= 10
        assert res.subspace_dim == subspace_dim

    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(obj.params(), torch.cat([p.detach().reshape(-1) for p in model.parameters()]))


# ---- 7. bad arguments ----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0, got 0.0"),
        ({"epsilon": -1e-3}, "epsilon must be a finite number > 0, got -0.001"),
        ({"epsilon": float("nan")}, "epsilon must be a finite number > 0, got nan"),
        ({"subspace_dim": 0}, r"subspace_dim must be None \(full space\) or an integer in \[1, n=5\], got 0"),
        ({"subspace_dim": 6}, r"subspace_dim must be None \(full space\) or an integer in \[1, n=5\], got 6"),
        ({"subspace_dim": 2.0}, r"subspace_dim must be .* got 2.0"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1, got 0"),
        ({"max_iter": 2.5}, "max_iter must be an integer >= 1, got 2.5"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    obj = Quadratic(np.ones(5), np.eye(5))
    with pytest.raises(ValueError, match=message):
        eps_sharpness(obj, **kwargs)
    assert obj.seen == []  # rejected before any evaluation


# ---- 8. the converged measure: multi-start, restarted L-BFGS-B ----


def test_converged_first_start_retraces_the_paper_run_and_never_falls_below_it():
    """Start 1 is eps_sharpness's start and its first run is eps_sharpness's run, evaluation for evaluation."""
    n, eps = 6, 1e-3
    r = np.random.default_rng(13)
    x, M, m = r.normal(size=n), r.normal(size=(3, n)), r.uniform(-1, 1, n)
    paper_obj, conv_obj = (Quadratic(x, M, c=0.1, center=x + 0.3 * eps * m) for _ in range(2))

    paper = eps_sharpness(paper_obj, epsilon=eps)
    conv = eps_sharpness_converged(conv_obj, epsilon=eps)

    assert conv_obj.seen[: len(paper_obj.seen)] == paper_obj.seen
    assert conv.n_fev > paper.n_fev
    assert conv.max_loss >= paper.max_loss
    assert conv.loss == paper.loss


@pytest.mark.parametrize("spike", [20.0, 0.0])
def test_converged_beats_paper_on_dense_quadratics(spike):
    """Same 40 cases as section 3: the paper's search finds the best vertex in 38 and 22 of them
    (worst 94% and 66% of the rise); the converged one found it in all 40 of each."""
    exact, ratios = 0, []
    for seed in range(40):
        obj, x, b, eps = dense_case(seed, spike)
        vertices = itertools.product([-1.0, 1.0], repeat=len(b))
        best = max(obj.loss(torch.as_tensor(x + np.array(s) * b)) for s in vertices)
        paper = eps_sharpness(obj, epsilon=eps)
        conv = eps_sharpness_converged(obj, epsilon=eps)

        assert conv.max_loss >= paper.max_loss
        assert conv.max_loss <= best * (1 + 1e-12)  # a convex f peaks at a vertex
        exact += conv.max_loss == pytest.approx(best, rel=1e-12, abs=0)
        ratios.append((conv.max_loss - conv.loss) / (best - conv.loss))
    assert exact >= (40 if spike else 38)
    assert min(ratios) >= (1.0 - 1e-9 if spike else 0.95)
    assert np.mean(ratios) >= 0.995


def test_converged_reports_best_of_all_evaluations_counts_them_and_is_deterministic():
    n, eps = 8, 1e-3
    r = np.random.default_rng(14)
    x, M, m = r.normal(size=n), r.normal(size=(4, n)), r.uniform(-1, 1, n)
    make = lambda: Quadratic(x, M, c=0.2, center=x + 0.3 * eps * m)  # noqa: E731
    kwargs = dict(epsilon=eps, n_starts=12, screen_iter=20, n_keep=2, max_iter=60)  # 1 + 8 eigen + 3 random starts
    obj = make()

    res = eps_sharpness_converged(obj, **kwargs)

    assert res.n_fev == len(obj.seen)
    assert res.max_loss == max(obj.seen)
    assert res.loss == obj.seen[0]
    assert res.value == pytest.approx(phi(res.max_loss, res.loss), rel=1e-12)
    assert res.start in ("zero", "gradient_corner", "curvature_corner", "eigen_corner", "random_corner", "random_point")
    assert res.n_iter <= 12 * 20 + 2 * 40  # 12 screened climbs, 2 of them on to 60 iterations
    again = make()
    assert eps_sharpness_converged(again, **kwargs) == res
    assert again.seen == obj.seen
    other = make()
    eps_sharpness_converged(other, **kwargs, seed=1)
    assert other.seen != obj.seen  # other random starts


@pytest.mark.parametrize("n", [12, 80])  # a dense eigendecomposition (p <= 64), ARPACK's Lanczos (p > 64)
def test_eigen_corners_come_from_the_top_box_scaled_curvature(n):
    """For f = c + 0.5 sum h_i z_i^2 the box-scaled curvature is diag(b_i^2 h_i): its top
    eigenvectors are the unit vectors of the 4 largest b_i^2 h_i, highest first."""
    eps = 1e-3
    r = np.random.default_rng(15)
    x, h = r.normal(size=n), r.uniform(1.0, 100.0, n)
    obj = Quadratic(x, np.diag(np.sqrt(h)), c=0.3)
    b = full_box(x, eps)

    V = sharpness._top_scaled_eigenvectors(obj, obj.params(), None, b, 4, seed=0)

    top = np.argsort(-(b**2 * h))[:4]
    assert V.shape == (n, 4)
    np.testing.assert_allclose(np.abs(V[top, range(4)]), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, atol=1e-9)
    assert obj.n_hvp <= (n if n <= sharpness.DENSE_EIG_MAX else 100)  # 34 measured for n = 80


class MLPObjective:
    """Mean cross-entropy of a Linear/ReLU nn.Sequential as a function of its flat weights, by plain autograd.

    The same function as ModelObjective (checked below) at a sixth of its cost per evaluation on
    a model this small, which lets the long reference search run inside the test's time budget.
    """

    def __init__(self, model, x, y):
        self.shapes = [(m.weight.shape, m.bias.shape) for m in model if isinstance(m, torch.nn.Linear)]
        self.x, self.y = x, y
        self.w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def params(self):
        return self.w0.clone()

    def _loss(self, w):
        h, i = self.x, 0
        for k, (ws, bs) in enumerate(self.shapes):
            W = w[i : i + ws.numel()].view(ws)
            b = w[i + ws.numel() : i + ws.numel() + bs.numel()]
            i += ws.numel() + bs.numel()
            h = h @ W.T + b
            if k < len(self.shapes) - 1:
                h = torch.relu(h)
        return torch.nn.functional.cross_entropy(h, self.y)

    def loss(self, w):
        with torch.no_grad():
            return float(self._loss(w))

    def loss_and_grad(self, w):
        w = w.detach().requires_grad_(True)
        loss = self._loss(w)
        (g,) = torch.autograd.grad(loss, w)
        return float(loss.detach()), g

    def hvp(self, w, v):
        w = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self._loss(w), w, create_graph=True)
        (hv,) = torch.autograd.grad(g @ v, w)
        return hv


def train_tiny_mlp(batch_size: int):
    """A 10-12-12-4 ReLU MLP (364 weights) trained 300 Adam steps (lr 1e-2) on 48 synthetic examples
    at `batch_size`: 48 (full batch) gives a large-batch minimum, 8 a small-batch one."""
    g = torch.Generator().manual_seed(1000)
    W = torch.randn(10, 4, generator=g)
    xs = torch.randn(48, 10, generator=g)
    ys = (xs @ W + 0.5 * torch.randn(48, 4, generator=g)).argmax(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12), torch.nn.ReLU(),
                                torch.nn.Linear(12, 4))
    # Adam written out: torch.optim's first use imports torch._dynamo, seconds of the time budget
    params = list(model.parameters())
    m1, m2 = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    batches = torch.Generator().manual_seed(0)
    for t in range(1, 301):
        idx = torch.randperm(48, generator=batches)[:batch_size]
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx]), params)
        with torch.no_grad():
            for p, gr, a, v in zip(params, grads, m1, m2):
                a.mul_(0.9).add_(gr, alpha=0.1)
                v.mul_(0.999).addcmul_(gr, gr, value=0.001)
                p -= 1e-2 * (a / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    return model, MLPObjective(model, xs, ys)


@pytest.fixture(scope="module")
def tiny_mlps():
    torch.set_num_threads(1)
    return {bs: train_tiny_mlp(bs) for bs in (48, 8)}


def sign_ascent(obj, eps, n_starts, steps, seed=5):
    """An independent reference search: projected sign-gradient ascent over the box (the L-inf
    "PGD" of adversarial attacks) from uniform random points, step from 0.5 down to 0.002 of
    the box (cosine); the best f seen, as phi."""
    x = obj.params().double()
    b = box_half_widths(x, eps)
    rng = np.random.default_rng(seed)
    f0 = best = obj.loss(x.float())
    for _ in range(n_starts):
        u = rng.uniform(-1.0, 1.0, b.shape)
        for k in range(steps):
            f, g = obj.loss_and_grad((x + torch.from_numpy(u * b)).float())
            best = max(best, f)
            u = np.clip(u + (0.25 * (1 + np.cos(np.pi * k / steps)) + 2e-3) * np.sign(g.double().numpy()), -1, 1)
    return phi(best, f0)


def test_tiny_mlp_objective_is_model_objective(tiny_mlps):
    model, obj = tiny_mlps[48]
    ref = ModelObjective(model, obj.x, obj.y)
    w = obj.params() + 0.01 * torch.randn(obj.params().shape, generator=torch.Generator().manual_seed(0))
    f, g = obj.loss_and_grad(w)
    f_ref, g_ref = ref.loss_and_grad(w)
    assert torch.equal(obj.params(), ref.params())
    assert f == pytest.approx(f_ref, rel=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)
    # its Hessian-vector product against central differences of its gradient (float64 copy)
    obj64 = MLPObjective(copy.deepcopy(model).double(), obj.x.double(), obj.y)
    v, h = torch.randn(w.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 1e-5
    fd = (obj64.loss_and_grad(w.double() + h * v)[1] - obj64.loss_and_grad(w.double() - h * v)[1]) / (2 * h)
    torch.testing.assert_close(obj64.hvp(w.double(), v), fd, rtol=1e-4, atol=1e-8)


@pytest.mark.slow  # several seconds: `make test`, not `make check`
@pytest.mark.parametrize("batch_size, eps", [(48, 5e-3), (8, 2e-2)])
def test_converged_reaches_a_long_search_on_a_tiny_mlp(tiny_mlps, batch_size, eps):
    """The reference: the best of a long search (24 starts, each climbed until 10 iterations gain
    nothing, up to 600) and 16 x 150 steps of sign-gradient ascent. Measured, as fractions of it:
    the paper's 10 iterations 0.51 (batch 48) and 0.61 (batch 8); one start climbed to the end
    0.54 and 0.61; the converged defaults 0.998 and 1.000."""
    _, obj = tiny_mlps[batch_size]
    t0 = time.perf_counter()
    conv = eps_sharpness_converged(obj, epsilon=eps)
    t_conv = time.perf_counter() - t0
    paper = eps_sharpness(obj, epsilon=eps)
    one = eps_sharpness_converged(obj, epsilon=eps, n_starts=1)
    long = eps_sharpness_converged(obj, epsilon=eps, n_starts=24, screen_iter=600, n_keep=1, max_iter=600, rtol=0.0)
    best = max(long.value, sign_ascent(obj, eps, n_starts=16, steps=150))

    assert conv.value >= 0.97 * best
    # what it is measured against is no pushover: the paper's search and a single start fall short
    assert paper.value < 0.8 * best
    assert one.value < 0.8 * best
    assert conv.value >= one.value >= paper.value
    assert conv.loss == paper.loss == long.loss
    assert long.n_fev > 2 * conv.n_fev > 20 * paper.n_fev
    assert t_conv < 10.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_starts": 0}, "n_starts must be an integer >= 1, got 0"),
        ({"n_starts": 2.0}, "n_starts must be an integer >= 1, got 2.0"),
        ({"n_starts": True}, "n_starts must be an integer >= 1, got True"),
        ({"screen_iter": 0}, "screen_iter must be an integer >= 1, got 0"),
        ({"n_keep": -1}, "n_keep must be an integer >= 1, got -1"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1, got 0"),
        ({"max_iter": None}, "max_iter must be an integer >= 1, got None"),
        ({"rtol": -1e-5}, r"rtol must be a number in \[0, 1\), got -1e-05"),
        ({"rtol": 1.0}, r"rtol must be a number in \[0, 1\), got 1.0"),
        ({"rtol": float("nan")}, r"rtol must be a number in \[0, 1\), got nan"),
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0, got 0.0"),
        ({"subspace_dim": 6}, r"subspace_dim must be None \(full space\) or an integer in \[1, n=5\], got 6"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ],
)
def test_converged_bad_arguments_raise_clear_errors(kwargs, message):
    obj = Quadratic(np.ones(5), np.eye(5))
    with pytest.raises(ValueError, match=message):
        eps_sharpness_converged(obj, **kwargs)
    assert obj.seen == []  # rejected before any evaluation
