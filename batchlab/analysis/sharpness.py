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

Two measures of the same phi, differing only in how hard the inner max is searched
- `eps_sharpness`: the paper's. One L-BFGS-B run of `max_iter` = 10 iterations (Keskar et
  al.: the maximisation is solved approximately, with about 10 iterations of L-BFGS-B) from a
  heuristic start. This is what `batchlab.analysis.measure` records (method "lbfgsb"), and
  what a comparison with the paper's numbers should use.
- `eps_sharpness_converged`: the max searched to the end: 24 starts (the paper's, corners of
  the top curvature directions, random ones) screened for 50 iterations, the best 3 climbed on
  until they stop gaining, with L-BFGS-B restarted every 10 iterations; ~100x the evaluations.
  Use it where the value of phi itself matters, e.g. the LB/SB ratio: on the `keskar` study's
  checkpoints the paper's search stopped at 0.74-0.995 of the maximum a long search found,
  lower for some runs than for others, which biases such ratios (see "The converged measure").
Both are lower bounds on the true maximum; with the same seed they share the box, A and the
first start, and the converged value is never below the paper's.

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
default: Keskar's "about 10 iterations"; runs of 10 in the converged measure). Its gradient
tolerance is 0 and its function tolerance ~1e-15, so a run stops on the iteration limit, on
an exact KKT point (projected gradient 0, e.g. a box corner where the ascent direction points
outwards), or when no step makes progress -- not because the gradient of a converged network
is merely small.

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

The converged measure (`eps_sharpness_converged`)
Two things stop the paper's search short of the maximum on a trained ReLU network; the
converged measure answers each (figures from the `keskar` study's final checkpoints: MNIST-1D
MLP, 15,210 weights, 512 examples, full space, 5 seeds x batch 32/400 x eps 1e-3/5e-4):
- L-BFGS-B creeps. Its curvature pairs, gathered across the kinks of a piecewise-smooth loss
  and across changes of the active bounds, make a poor model: from one start a run went on
  for 800-1000 iterations, rising ~1e-4 per 10 iterations, before jumping 3% higher. So a
  climb restarts L-BFGS-B (drops its memory) from where it stopped every
  `CONVERGED_RESTART_EVERY` = 10 iterations; the same starts then reached the top in ~150-250
  iterations. Start 1's first run of 10 is exactly the paper's run, so the converged value
  is never below the paper's. A climb stops when a run gains no more than `rtol` = 3e-5 of
  the rise so far (1e-4 stopped some climbs in a slow stretch of ~1.5e-4 per run, just before
  their jump, at 0.967 of the top) or after `max_iter` = 300 iterations.
- Local maxima. Climbs from different starts end at different heights (on the seed-1 LB
  checkpoint at eps 1e-3 from 7.9 to 9.19, the top reached by 1 random start in 6; on seed-0
  SB at 1e-3 random starts all end near 4.02, 0.91 of the top, 4.42). Corners of the top
  eigenvectors of the box-scaled curvature D A^T H A D reach those tops, at times with the
  sign that the paper's start rejects (the one against the gradient), so the starts are, in
  order: the paper's start; both corners of each of the top `CONVERGED_N_EIGENVECTORS` = 4
  eigenvectors (ARPACK Lanczos, ~20 Hessian-vector products, not counted in n_fev; a dense
  eigendecomposition for p <= 64), the gradient side first ("eigen_corner"); then random
  corners and uniform random points in turn (numpy.random.default_rng([seed, 3])), to
  `n_starts` = 24. Each climbs `screen_iter` = 50 iterations and the `n_keep` = 3 highest go
  on: over the 20 cases, the height after 50 iterations always picked a climb that ended
  within 0.1% of the best of 16 full climbs, while after 20-30 iterations it did not.
Measured over the 20 cases, against the best of 16 starts each climbed to 1000 iterations
(and the converged values): the paper's search reached 0.74-0.995 (seed 0: 0.80-0.94), the
converged measure 0.996-1.000 with each of seeds 0 and 1 (its random starts), at 1,470-2,330
evaluations (the paper's: 15), ~10 s on one busy CPU core against 0.1 s.
benchmarks/sharpness_convergence.py compares both with a 48-start search (benchmarks/README.md):
on seed 0 the converged measure reached 0.999-1.000 of it, and the LB/SB ratio at eps 5e-4
read 1.95 against the paper's search's 1.65.
Where screening fails: on a tiny 516-weight MLP at eps 1e-2, the climbs' heights after 50-100
iterations did not predict where they end, and the defaults reached 0.94 of a 64-start long
search (48 or 96 starts: the same); screen_iter=300 (every start climbed to the end) reached
it, at 3.7x the evaluations. Check a new kind of model against a long search once.

Limits. L-BFGS-B is a local method and ~10 iterations is a budget, so phi is a lower bound on
the true box maximum (as in the paper, which solves it "approximately"); the converged measure
is a tighter lower bound, not a certificate. Maximising even a convex quadratic over a box is
NP-hard; for a dense Hessian without a dominant direction the paper's search can stop at a
corner that is only a local maximum (tests/test_sharpness.py measures how often, for both).
Everything is seeded by `seed`, so one (x, eps, p, seed) always gives the same phi.

The weights of the model are never written: the objective takes flat vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from batchlab.analysis.box_lbfgsb import minimize_in_box
from batchlab.analysis.objective import Objective, hvp_operator

DEFAULT_SUBSPACE_DIM = 100  # Keskar et al.'s p for the random-subspace measure
N_RANDOM_CORNERS = 2  # seeded random box corners tried as starts
N_POWER_ITERS = 4  # Hessian-vector products spent on the curvature-corner start
LBFGSB_FTOL = 1e-15  # stop only when a step makes (essentially) no progress
LBFGSB_GTOL = 0.0  # never stop just because the gradient is small (converged nets have small gradients)
# eps_sharpness_converged (module docstring, "The converged measure")
CONVERGED_N_STARTS = 24  # starts: the paper's, 8 eigenvector corners, then random corners and points in turn
CONVERGED_SCREEN_ITER = 50  # iterations every start climbs
CONVERGED_N_KEEP = 3  # the highest climbs after screening, which go on
CONVERGED_MAX_ITER = 300  # iterations of a kept climb, at most
CONVERGED_RESTART_EVERY = 10  # L-BFGS-B is restarted from where it stopped every this many iterations
CONVERGED_RTOL = 3e-5  # a climb stops when a run raises f by no more than this fraction of the rise so far
CONVERGED_N_EIGENVECTORS = 4  # starts 2..9: both corners of each of the top 4 box-scaled curvature eigenvectors
DENSE_EIG_MAX = 64  # up to this p the box-scaled curvature is formed (p Hessian-vector products) and diagonalised
EIG_MAX_RESTARTS = 20  # ARPACK restarts at most, for those eigenvectors


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


def _top_scaled_eigenvectors(
    obj: Objective, x: torch.Tensor, A: torch.Tensor | None, b: np.ndarray, k: int, seed: int
) -> np.ndarray:
    """The top-k eigenvectors of the box-scaled curvature D A^T H(x) A D (D = diag(b)), as columns,
    highest eigenvalue first: ARPACK's Lanczos (tol 1e-3, start vector from
    numpy.random.default_rng([seed, 4])), or a dense eigendecomposition for p <= `DENSE_EIG_MAX`."""
    p = b.size
    k = min(k, p - 1) if p > DENSE_EIG_MAX else min(k, p)
    if k < 1:
        return np.zeros((p, 0))
    hvp = hvp_operator(obj, x)

    def op(v: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(b * np.ravel(v)).to(device=x.device, dtype=x.dtype)
        hv = hvp(z if A is None else A @ z)
        return b * (hv if A is None else A.T @ hv).detach().double().cpu().numpy()

    if p <= DENSE_EIG_MAX:
        M = np.column_stack([op(e) for e in np.eye(p)])
        w, V = np.linalg.eigh((M + M.T) / 2)
    else:
        v0 = np.random.default_rng([seed, 4]).normal(size=p)
        try:
            w, V = eigsh(LinearOperator((p, p), matvec=op, dtype=np.float64), k=k, which="LA", tol=1e-3, v0=v0,
                         maxiter=EIG_MAX_RESTARTS)
        except ArpackNoConvergence as err:  # keep the pairs that did converge
            w, V = err.eigenvalues, err.eigenvectors
    order = np.argsort(-w, kind="stable")[:k]
    return V[:, order]


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


def _check_converged_args(n_starts: int, screen_iter: int, n_keep: int, max_iter: int, rtol: float) -> None:
    counts = {"n_starts": n_starts, "screen_iter": screen_iter, "n_keep": n_keep, "max_iter": max_iter}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < 1:
        raise ValueError(f"rtol must be a number in [0, 1), got {rtol!r}")


@dataclass
class _Climb:
    """One start of eps_sharpness_converged: where its climb stands and how far it has gone."""

    label: str  # the kind of start
    y: np.ndarray  # its current point (the highest of its climb: L-BFGS-B only accepts rises)
    f: float = -math.inf  # f(x + A y)
    n_iter: int = 0
    done: bool = False


class _BoxSearch:
    """f(x + A y) and its y-gradient over the box |y_i| <= b_i, with the evaluations counted and the best f kept.

    The shared machinery of both measures: the box, the start candidates and the L-BFGS-B climb.
    """

    def __init__(self, obj: Objective, epsilon: float, subspace_dim: int | None, max_iter: int, seed: int):
        x = obj.params().detach()
        if x.ndim != 1 or not x.is_floating_point():
            raise ValueError(f"obj.params() must be a flat floating-point vector, got shape {tuple(x.shape)} {x.dtype}")
        n = x.numel()
        _check_args(n, epsilon, subspace_dim, max_iter, seed)
        self.obj, self.x, self.epsilon, self.subspace_dim, self.seed = obj, x, epsilon, subspace_dim, seed

        # the box, in y-space
        A = None if subspace_dim is None else random_subspace(n, subspace_dim, seed)
        self.b = box_half_widths(x, epsilon, A)  # (p,) float64
        if A is not None:
            A = A.to(device=x.device, dtype=x.dtype)
        self.A, self.x64 = A, x.double()

        # the candidates' values are kept so that L-BFGS-B's first call, at its start, costs no
        # second evaluation
        self.cache: dict[bytes, tuple[float, np.ndarray]] = {}
        self.best_f = -math.inf
        self.n_fev = 0
        self.n_iter = 0  # eps_sharpness_converged's running total
        self.label = ""  # the start whose climb is under way; `best_label` is the one that found best_f
        self.best_label = ""

    def f_and_grad(self, y: np.ndarray, remember: bool = False) -> tuple[float, np.ndarray]:
        key = y.tobytes()
        if key in self.cache:
            return self.cache[key]
        x, A = self.x, self.A
        yt = torch.from_numpy(y).to(x.device)
        delta = yt.double() if A is None else (A @ yt.to(x.dtype)).double()  # (n,)
        f, g = self.obj.loss_and_grad((self.x64 + delta).to(x.dtype))
        gy = g if A is None else A.T @ g  # chain rule: d f(x + A y) / dy = A^T grad f
        out = (float(f), gy.detach().double().cpu().numpy())
        self.n_fev += 1
        if remember:
            self.cache[key] = out
        if out[0] > self.best_f:
            self.best_f, self.best_label = out[0], self.label
        return out

    def heuristic_start(self) -> tuple[float, str, np.ndarray]:
        """f(x), and the best of the candidate starts (module docstring, "The start") with its name."""
        b = self.b
        zero = np.zeros_like(b)
        f0, g0 = self.f_and_grad(zero, remember=True)
        self.g0 = g0  # the y-gradient at y = 0
        if not 1.0 + f0 > 0:
            raise ValueError(f"phi divides by 1 + f(x), which needs f(x) > -1 (a non-negative loss); got f(x) = {f0}")
        candidates = [("zero", zero)]
        if np.any(g0 != 0):
            candidates.append(("gradient_corner", np.where(g0 < 0, -b, b)))
        if N_POWER_ITERS > 0:
            v = _top_scaled_curvature(self.obj, self.x, self.A, b, N_POWER_ITERS, self.seed)
            corner = np.where(v < 0, -b, b)
            candidates.append(("curvature_corner", corner if g0 @ corner >= 0 else -corner))
        rng = np.random.default_rng([self.seed, 1])
        for _ in range(N_RANDOM_CORNERS):
            candidates.append(("random_corner", rng.choice([-1.0, 1.0], size=b.shape) * b))
        start, y0 = candidates[0]
        for name, y in candidates[1:]:
            if self.f_and_grad(y, remember=True)[0] > self.f_and_grad(y0)[0]:
                start, y0 = name, y
        self.cache = {y0.tobytes(): self.cache[y0.tobytes()]}  # free the other candidates' gradients
        self.best_label = start  # the best candidate is y0 itself
        return f0, start, y0

    def climb(self, y0: np.ndarray, max_iter: int, label: str) -> tuple[float, int]:
        """One L-BFGS-B run on -f over the box from y0, at most max_iter iterations.

        Returns the f it ended at and the iterations used; the f of its last evaluation stays
        cached, so a run restarted from where this one ended costs no second evaluation there.
        """
        self.label = label
        last: list = [None, None]  # the key and value of the latest evaluation

        def neg(y: np.ndarray) -> tuple[float, np.ndarray]:
            y = np.ascontiguousarray(y, dtype=np.float64)
            f, g = self.f_and_grad(y)
            last[:] = [y.tobytes(), (f, g)]
            return -f, -g

        res = minimize_in_box(neg, y0, -self.b, self.b, {"maxiter": max_iter, "ftol": LBFGSB_FTOL, "gtol": LBFGSB_GTOL})
        end = np.ascontiguousarray(res.x, dtype=np.float64)
        self.cache = {last[0]: last[1]} if last[0] == end.tobytes() else {}
        self.end = end
        return -float(res.fun), int(res.nit)

    def advance(self, c: "_Climb", until: int, rtol: float, f0: float) -> None:
        """Climb c on to `until` iterations in all, or until it stops: L-BFGS-B restarted (its memory
        dropped) every `CONVERGED_RESTART_EVERY` iterations from where it stopped, ending when a run
        raises f by no more than `rtol` times the rise f - f(x) so far, or makes no step."""
        while not c.done and c.n_iter < until:
            f, nit = self.climb(c.y, min(CONVERGED_RESTART_EVERY, until - c.n_iter), c.label)
            c.n_iter += nit
            c.done = nit == 0 or f - c.f <= rtol * (f - f0)
            c.y, c.f = self.end, f
        self.cache = {}

    def result(self, f0: float, n_iter: int, start: str) -> SharpnessResult:
        return SharpnessResult(
            value=100.0 * (self.best_f - f0) / (1.0 + f0),
            epsilon=float(self.epsilon),
            subspace_dim=self.subspace_dim,
            loss=f0,
            max_loss=self.best_f,
            n_iter=n_iter,
            n_fev=self.n_fev,
            start=start,
        )


def eps_sharpness(
    obj: Objective, epsilon: float = 1e-3, subspace_dim: int | None = None, max_iter: int = 10, seed: int = 0
) -> SharpnessResult:
    """Keskar et al.'s epsilon-sharpness phi of `obj` at `obj.params()`, computed as the paper did: one
    L-BFGS-B run of at most `max_iter` (10) iterations from the heuristic start (see the module docstring)."""
    search = _BoxSearch(obj, epsilon, subspace_dim, max_iter, seed)
    f0, start, y0 = search.heuristic_start()
    _, n_iter = search.climb(y0, max_iter, start)
    return search.result(f0, n_iter, start)


def eps_sharpness_converged(
    obj: Objective,
    epsilon: float = 1e-3,
    subspace_dim: int | None = None,
    *,
    n_starts: int = CONVERGED_N_STARTS,
    screen_iter: int = CONVERGED_SCREEN_ITER,
    n_keep: int = CONVERGED_N_KEEP,
    max_iter: int = CONVERGED_MAX_ITER,
    rtol: float = CONVERGED_RTOL,
    seed: int = 0,
) -> SharpnessResult:
    """The same phi with its inner maximisation searched to the end: screened multi-start L-BFGS-B.

    Start 1 is `eps_sharpness`'s heuristic start; starts 2..n_starts alternate seeded random
    corners and seeded uniform random points of the box (numpy.random.default_rng([seed, 3])).
    Every start climbs `screen_iter` iterations; the `n_keep` highest climbs then go on to
    `max_iter` iterations each, or until they stop. A climb is L-BFGS-B restarted from where it
    stopped every `CONVERGED_RESTART_EVERY` (10) iterations, and it stops when a run raises f by
    no more than `rtol` times the rise f - f(x) so far, or makes no step (rtol=0: only then).

    The value is the best f over every evaluation; `n_fev` counts the evaluations of all starts
    together (candidates included), `n_iter` their iterations together, and `start` names the
    kind of start whose climb found the best f ("random_point" for a random interior start).
    With the same (seed, subspace_dim) the box, A and start 1 are `eps_sharpness`'s, and (for
    screen_iter and max_iter >= 10) start 1's first run is its 10-iteration run, evaluation for
    evaluation, so the value is never below `eps_sharpness(obj, epsilon, subspace_dim, seed=seed)`.
    The defaults and the measurements behind them: module docstring, "The converged measure".
    """
    _check_converged_args(n_starts, screen_iter, n_keep, max_iter, rtol)
    search = _BoxSearch(obj, epsilon, subspace_dim, max_iter, seed)
    f0, start, y0 = search.heuristic_start()
    rng = np.random.default_rng([seed, 3])
    b = search.b
    starts = [(start, y0)]
    if n_starts > 1 and CONVERGED_N_EIGENVECTORS > 0:
        g0 = search.g0
        for v in _top_scaled_eigenvectors(obj, search.x, search.A, b, CONVERGED_N_EIGENVECTORS, seed).T:
            corner = np.where(v < 0, -b, b)
            corner = corner if g0 @ corner >= 0 else -corner
            starts += [("eigen_corner", corner), ("eigen_corner", -corner)]
    kept: list[_Climb] = []  # the n_keep highest screened climbs, highest first (ties: the earlier start)
    for i in range(n_starts):
        if i < len(starts):
            c = _Climb(*starts[i])
        elif (i - len(starts)) % 2 == 0:
            c = _Climb("random_corner", rng.choice([-1.0, 1.0], size=b.shape) * b)
        else:
            c = _Climb("random_point", rng.uniform(-1.0, 1.0, size=b.shape) * b)
        search.advance(c, min(screen_iter, max_iter), rtol, f0)
        search.n_iter += c.n_iter
        kept = sorted(kept + [c], key=lambda k: -k.f)[:n_keep]
    for c in kept:
        before = c.n_iter
        search.advance(c, max_iter, rtol, f0)
        search.n_iter += c.n_iter - before
    return search.result(f0, search.n_iter, search.best_label)
