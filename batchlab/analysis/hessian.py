"""Hessian spectrum of the training loss: top eigenvalue (Lanczos) and trace (Hutchinson).

What: at the point `obj.params()` of an `Objective`, the largest algebraic eigenvalue of
the Hessian H of the loss, and an unbiased estimate of tr(H) with its standard error.
Both touch H only through Hessian-vector products (`obj.hvp`), so H (P x P for P
parameters) is never formed.

Why Lanczos: power iteration (as in PyHessian's `eigenvalues`) converges at the rate
lambda_2 / lambda_1, which is slow when the top of the spectrum is crowded, and it finds
the eigenvalue of largest *magnitude*, which need not be the largest one when H has
negative eigenvalues. Lanczos builds a Krylov subspace instead, converges much faster for
the same number of HVPs, and can target the algebraically largest eigenvalue. We use the
implicitly restarted Lanczos of ARPACK through `scipy.sparse.linalg.eigsh`, as in the
edge-of-stability code (Cohen et al. 2021), rather than a hand-written loop.

References:
- Yao, Gholami, Keutzer, Mahoney 2020, "PyHessian: Neural Networks Through the Lens of
  the Hessian": top eigenvalues by power iteration, trace by Hutchinson's method.
- Ghorbani, Krishnan, Xiao 2019, "An Investigation into Neural Net Optimization via
  Hessian Eigenvalue Density": Lanczos on HVPs for deep networks.
- Hutchinson 1989, "A stochastic estimator of the trace of the influence matrix".

The loss is the Objective's: a fixed data set with no augmentation (every HVP sees the
same examples, so H is one well-defined matrix), and the BatchNorm mode (running statistics
or batch statistics) is whatever the Objective was built with; `ModelObjective` states it
in its `bn_mode`.

Precision: SciPy works in float64; the HVPs are computed in the model's float32 and
converted at the boundary, so eigenvalues are good to about float32 round-off relative to
the largest |eigenvalue|.
"""

from __future__ import annotations

import logging
import math
from collections import deque

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from batchlab.analysis.objective import Objective, hvp_operator

log = logging.getLogger(__name__)

LANCZOS_NCV = 20  # Lanczos basis size: SciPy's default for k=1


class _BudgetSpent(Exception):
    """Raised from inside the matvec once max_hvp HVPs are spent, to stop ARPACK."""


class _CountedHVP:
    """H v at a fixed w as a float64 numpy matvec; counts calls and keeps the last pairs (v, Hv)."""

    def __init__(self, obj: Objective, w: torch.Tensor, budget: int, keep: int):
        self.w, self.budget = w, budget
        self.hvp = hvp_operator(obj, w)
        self.count = 0
        self.recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=keep)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.count >= self.budget:
            raise _BudgetSpent
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1)).to(self.w.device, self.w.dtype)
        hv = self.hvp(v).detach()
        self.count += 1
        self.recent.append((v, hv))
        return hv.to("cpu", torch.float64).numpy()


def _ritz_max(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Largest Ritz value of H on span{v_i}, from pairs (v_i, H v_i) (Rayleigh-Ritz).

    With V = QR, the projection of H onto span(Q) is Q^T H Q = Q^T (H V) R^-1. Its largest
    eigenvalue is a lower bound on lambda_max(H), and the best one the subspace offers.
    """
    V = torch.stack([v for v, _ in pairs], 1).to("cpu", torch.float64).numpy()  # (P, m)
    HV = torch.stack([hv for _, hv in pairs], 1).to("cpu", torch.float64).numpy()  # (P, m)
    Q, R = np.linalg.qr(V)
    # drop directions that are numerically dependent (restarted Lanczos reuses vectors)
    keep = np.abs(np.diag(R)) > 1e-10 * np.abs(np.diag(R)).max()
    Q, R, HV = Q[:, keep], R[np.ix_(keep, keep)], HV[:, keep]
    T = Q.T @ np.linalg.solve(R.T, HV.T).T  # (m, m) = Q^T H V R^-1
    return float(np.linalg.eigvalsh(0.5 * (T + T.T)).max())


def top_eigenvalue(obj: Objective, tol: float = 1e-3, max_hvp: int = 300, seed: int = 0) -> tuple[float, int]:
    """Largest (algebraic) Hessian eigenvalue at obj.params(), by Lanczos, and the number of HVPs used.

    `scipy.sparse.linalg.eigsh(k=1, which="LA")` on a LinearOperator whose matvec is
    `obj.hvp`, from a start vector drawn from `seed`. `tol` is ARPACK's: the Ritz residual
    must fall below tol * |eigenvalue| (the eigenvalue itself is then usually far more
    accurate). At most `max_hvp` HVPs are spent; if Lanczos has not converged by then, the
    largest Ritz value of the last Lanczos vectors is returned, with a logged warning.
    """
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if max_hvp < 1:
        raise ValueError(f"max_hvp must be at least 1, got {max_hvp}")
    w = obj.params()
    n = w.numel()
    if n == 0:
        raise ValueError("the objective has no parameters")
    ncv = min(n, LANCZOS_NCV)
    hvp = _CountedHVP(obj, w, max_hvp, keep=ncv)
    if n == 1:  # ARPACK needs n >= 2; a 1x1 Hessian is one HVP
        return float(hvp(np.ones(1))[0]), hvp.count

    v0 = np.random.default_rng(seed).standard_normal(n)
    op = LinearOperator((n, n), matvec=hvp, dtype=np.float64)
    try:
        # maxiter counts ARPACK restarts; the HVP budget is enforced in the matvec instead
        vals = eigsh(op, k=1, which="LA", v0=v0, ncv=ncv, tol=tol, maxiter=max_hvp, return_eigenvectors=False)
        return float(vals.max()), hvp.count
    except ArpackNoConvergence as exc:
        # ARPACK only hands back converged Ritz values, so with k=1 this is usually empty
        ritz = float(exc.eigenvalues.real.max()) if len(exc.eigenvalues) else _ritz_max(list(hvp.recent))
    except _BudgetSpent:
        ritz = _ritz_max(list(hvp.recent))
    log.warning(
        "Lanczos did not reach tol=%g within %d HVPs; returning the best Ritz value %.6g "
        "(a lower bound on the top eigenvalue)", tol, hvp.count, ritz,
    )
    return ritz, hvp.count


def rademacher(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A vector of n independent +-1 signs, each with probability 1/2."""
    return torch.randint(0, 2, (n,), generator=generator).to(dtype).mul_(2).sub_(1)


def hutchinson_trace(obj: Objective, n_probes: int = 50, seed: int = 0) -> tuple[float, float]:
    """Hutchinson's estimate of tr(H) at obj.params(), and its standard error (Hutchinson 1989).

    tr(H) ~ mean_i v_i^T H v_i over `n_probes` Rademacher probes v_i, which are drawn on the
    CPU from a torch.Generator seeded with `seed` (so the probes do not depend on the device).
    Each term is unbiased, with variance 2 * sum_{i != j} H_ij^2, so the estimate is exact
    for a diagonal H. The standard error is the sample standard deviation of the terms over
    sqrt(n_probes); it is nan for a single probe.
    """
    if n_probes < 1:
        raise ValueError(f"n_probes must be at least 1, got {n_probes}")
    w = obj.params()
    if w.numel() == 0:
        raise ValueError("the objective has no parameters")
    gen = torch.Generator().manual_seed(seed)
    hvp = hvp_operator(obj, w)
    terms = np.empty(n_probes)
    for i in range(n_probes):
        v = rademacher(w.numel(), gen, w.dtype).to(w.device)
        terms[i] = torch.dot(v.double(), hvp(v).detach().double()).item()
    se = float(terms.std(ddof=1) / math.sqrt(n_probes)) if n_probes > 1 else math.nan
    return float(terms.mean()), se
