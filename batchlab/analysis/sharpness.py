"""Epsilon-sharpness of a minimiser (Keskar et al. 2017, "On Large-Batch Training for Deep
Learning: Generalization Gap and Sharp Minima", the section on the sharpness of minima).

What it computes
    phi(x, eps, A) = 100 * (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x))
    C_eps = { z in R^p : |z_i| <= eps * (|(A^+ x)_i| + 1) }

f is the objective's loss (for `ModelObjective`, the mean training cross-entropy), x its
weights, A^+ the Moore-Penrose pseudo-inverse of A. phi is the largest relative rise of the
loss, in percent, that a perturbation inside a small box around x can cause: a box scaled
per coordinate by the weight's own size (the "+1" keeps a floor for weights near zero). Flat
minima (loss nearly constant around x) give small phi, sharp ones large phi; Keskar et al.
find large-batch solutions 1 to 2 orders of magnitude sharper than small-batch ones.

The two variants
- full space: A = I (p = n), so A^+ x = x; `subspace_dim=None`.
- random subspace: A is n x p (`DEFAULT_SUBSPACE_DIM` = 100 in the paper) with i.i.d.
  standard normal entries drawn from a CPU `torch.Generator` seeded with `seed` (float32, so
  the same seed gives the same A on every device and for every objective dtype); see
  `random_subspace`. Gaussian entries make range(A) a uniformly random p-dimensional subspace
  and A full column rank with probability 1, so A^+ A = I_p. The entries' scale is harmless
  for the x-dependent part of the box: replacing A by cA maps A^+x to A^+x / c, so the
  perturbation set A diag(|A^+ x|) [-eps, eps]^p does not change; the scale only sets the
  size of the "+1" floor (with unit-variance entries each coordinate of A y is of order
  eps * sqrt(p)). Compare subspace values only at the same (eps, p).
  A^+ x is computed in float64 on the CPU from a thin SVD of A (n x p), never forming an
  n x n matrix.

The inner maximisation
SciPy's L-BFGS-B maximises f(x + A y) over the box (it minimises -f), with exact gradients
A^T grad f(x + A y) from the objective, float64 on the SciPy side, `maxiter=max_iter` (10 by
default: Keskar's "about 10 iterations"). Its gradient tolerance is 0 and its function
tolerance ~1e-15, so it stops on the iteration limit, on an exact KKT point (projected
gradient 0, e.g. a box corner where the ascent direction points outwards), or when no step
makes progress -- not because the gradient of a converged network is merely small.

The start (why not y = 0)
A converged full-batch solution is (nearly) stationary, so at y = 0 the gradient vanishes and
L-BFGS-B started there stops at once, reporting phi = 0 for any sharpness. Instead a few
candidates inside the box are evaluated, in this order:
  "zero"              y = 0 (this evaluation also gives f(x));
  "gradient_corner"   y = sign(A^T grad f(x)) * b, the highest corner of the first-order model
                      (only when that gradient is not exactly zero; zero entries take +);
  "curvature_corner"  y = +-sign(v) * b, v the top eigenvector of the box-scaled curvature
                      D A^T H(x) A D, D = diag(b), from `N_POWER_ITERS` power iterations with
                      Hessian-vector products (start vector from numpy.random.default_rng([seed, 2]));
                      the sign is the one with A^T grad f(x) . y >= 0. Rounding the top
                      eigenvector is the classic heuristic for maximising a quadratic form over a
                      box: exact for a rank-one Hessian, and good when a few sharp directions
                      dominate, as in trained networks;
  "random_corner"     `N_RANDOM_CORNERS` corners with signs from numpy.random.default_rng([seed, 1]).
L-BFGS-B starts from the best of them (ties go to the earlier), and the result reports the best
f seen over *all* evaluations, candidates included, so max_loss >= f(x) and phi >= 0 always.
Corners are the candidates because a convex f peaks over a box at a corner. `n_fev` counts the
function+gradient evaluations (candidates included); the `N_POWER_ITERS` Hessian-vector
products (each ~2-3 gradients' cost) are not in it.

Limits. L-BFGS-B is a local method and ~10 iterations is a budget, so phi is a lower bound on
the true box maximum (as in the paper, which solves it "approximately"). Maximising even a
convex quadratic over a box is NP-hard; for a dense Hessian without a dominant direction it can
stop at a corner that is only a local maximum (tests/test_sharpness.py measures how often).
Everything is seeded by `seed`, so one (x, eps, p, seed) always gives the same phi.

The weights of the model are never written: the objective takes flat vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import Bounds, minimize

from batchlab.analysis.objective import Objective, hvp_operator

DEFAULT_SUBSPACE_DIM = 100  # Keskar et al.'s p for the random-subspace measure
N_RANDOM_CORNERS = 2  # seeded random box corners tried as starts
N_POWER_ITERS = 4  # Hessian-vector products spent on the curvature-corner start
LBFGSB_FTOL = 1e-15  # stop only when a step makes (essentially) no progress
LBFGSB_GTOL = 0.0  # never stop just because the gradient is small (converged nets have small gradients)


@dataclass
class SharpnessResult:
    value: float  # phi, in percent
    epsilon: float
    subspace_dim: int | None  # None for the full space (A = I)
    loss: float  # f(x)
    max_loss: float  # the max of f over the box that was found
    n_iter: int  # L-BFGS-B iterations used
    n_fev: int  # function+gradient evaluations, including the start candidates
    start: str  # which start L-BFGS-B ran from: "zero", "gradient_corner", "curvature_corner" or "random_corner"


def random_subspace(n: int, p: int, seed: int = 0) -> torch.Tensor:
    """The n x p matrix A of the random-subspace measure: i.i.d. N(0, 1) float32 entries, CPU, seeded."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(n, p, generator=gen, dtype=torch.float32)


def pinv_apply(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A^+ x (float64, CPU) for a tall A via its thin SVD; singular values below the usual cutoff are dropped."""
    A64, x64 = A.detach().double().cpu(), x.detach().double().cpu()
    U, S, Vh = torch.linalg.svd(A64, full_matrices=False)  # (n, p), (p,), (p, p)
    cutoff = max(A64.shape) * torch.finfo(torch.float64).eps * S.max()
    inv_s = torch.where(S > cutoff, 1.0 / S, torch.zeros_like(S))
    return Vh.T @ (inv_s * (U.T @ x64))  # (p,)


def box_half_widths(x: torch.Tensor, epsilon: float, A: torch.Tensor | None = None) -> np.ndarray:
    """b with C_eps = {|y_i| <= b_i}: b = eps * (|A^+ x| + 1), A^+ x = x for the full space (float64)."""
    ax = x.detach().double().cpu() if A is None else pinv_apply(A, x)
    return (epsilon * (ax.abs() + 1.0)).numpy()


def _top_scaled_curvature(
    obj: Objective, x: torch.Tensor, A: torch.Tensor | None, b: np.ndarray, n_iter: int, seed: int
) -> np.ndarray:
    """Power iteration for the top eigenvector of D A^T H(x) A D, D = diag(b): the box-scaled curvature."""
    v = np.random.default_rng([seed, 2]).normal(size=b.shape)
    hvp = hvp_operator(obj, x)
    for _ in range(n_iter):
        z = torch.from_numpy(b * v / np.linalg.norm(v)).to(device=x.device, dtype=x.dtype)  # D v, in y-space
        hv = hvp(z if A is None else A @ z)  # (n,)
        v = b * (hv if A is None else A.T @ hv).detach().double().cpu().numpy()
        if not np.any(v):  # zero curvature along v: keep the corner of the last direction
            return z.double().cpu().numpy()
    return v


def _check_args(n: int, epsilon: float, subspace_dim: int | None, max_iter: int, seed: int) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if subspace_dim is not None:
        if isinstance(subspace_dim, bool) or not isinstance(subspace_dim, int) or not 1 <= subspace_dim <= n:
            raise ValueError(
                f"subspace_dim must be None (full space) or an integer in [1, n={n}], got {subspace_dim!r}"
            )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def eps_sharpness(
    obj: Objective, epsilon: float = 1e-3, subspace_dim: int | None = None, max_iter: int = 10, seed: int = 0
) -> SharpnessResult:
    """Keskar et al.'s epsilon-sharpness phi of `obj` at `obj.params()` (see the module docstring)."""
    x = obj.params().detach()
    if x.ndim != 1 or not x.is_floating_point():
        raise ValueError(f"obj.params() must be a flat floating-point vector, got shape {tuple(x.shape)} {x.dtype}")
    n = x.numel()
    _check_args(n, epsilon, subspace_dim, max_iter, seed)

    # the box, in y-space
    A = None if subspace_dim is None else random_subspace(n, subspace_dim, seed)
    b = box_half_widths(x, epsilon, A)  # (p,) float64
    if A is not None:
        A = A.to(device=x.device, dtype=x.dtype)
    x64 = x.double()

    # f and its y-gradient, counted and tracking the best f seen; the candidates' values are kept
    # so that L-BFGS-B's first call, at its start, costs no second evaluation
    cache: dict[bytes, tuple[float, np.ndarray]] = {}
    best = {"f": -math.inf}
    n_fev = 0

    def f_and_grad(y: np.ndarray, remember: bool = False) -> tuple[float, np.ndarray]:
        nonlocal n_fev
        key = y.tobytes()
        if key in cache:
            return cache[key]
        yt = torch.from_numpy(y).to(x.device)
        delta = yt.double() if A is None else (A @ yt.to(x.dtype)).double()  # (n,)
        f, g = obj.loss_and_grad((x64 + delta).to(x.dtype))
        gy = g if A is None else A.T @ g  # chain rule: d f(x + A y) / dy = A^T grad f
        out = (float(f), gy.detach().double().cpu().numpy())
        n_fev += 1
        if remember:
            cache[key] = out
        if out[0] > best["f"]:
            best["f"] = out[0]
        return out

    # candidate starts
    zero = np.zeros_like(b)
    f0, g0 = f_and_grad(zero, remember=True)
    if not 1.0 + f0 > 0:
        raise ValueError(f"phi divides by 1 + f(x), which needs f(x) > -1 (a non-negative loss); got f(x) = {f0}")
    candidates = [("zero", zero)]
    if np.any(g0 != 0):
        candidates.append(("gradient_corner", np.where(g0 < 0, -b, b)))
    if N_POWER_ITERS > 0:
        v = _top_scaled_curvature(obj, x, A, b, N_POWER_ITERS, seed)
        corner = np.where(v < 0, -b, b)
        candidates.append(("curvature_corner", corner if g0 @ corner >= 0 else -corner))
    rng = np.random.default_rng([seed, 1])
    for _ in range(N_RANDOM_CORNERS):
        candidates.append(("random_corner", rng.choice([-1.0, 1.0], size=b.shape) * b))
    start, y0 = candidates[0]
    for name, y in candidates[1:]:
        if f_and_grad(y, remember=True)[0] > f_and_grad(y0)[0]:
            start, y0 = name, y
    cache = {y0.tobytes(): cache[y0.tobytes()]}  # free the other candidates' gradients

    # L-BFGS-B on -f over the box
    def neg(y: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = f_and_grad(np.ascontiguousarray(y, dtype=np.float64))
        return -f, -g

    res = minimize(
        neg, y0, jac=True, method="L-BFGS-B", bounds=Bounds(-b, b),
        options={"maxiter": max_iter, "ftol": LBFGSB_FTOL, "gtol": LBFGSB_GTOL},
    )
    max_loss = best["f"]
    return SharpnessResult(
        value=100.0 * (max_loss - f0) / (1.0 + f0),
        epsilon=float(epsilon),
        subspace_dim=subspace_dim,
        loss=f0,
        max_loss=max_loss,
        n_iter=int(res.nit),
        n_fev=n_fev,
        start=start,
    )
