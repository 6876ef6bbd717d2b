"""SciPy's L-BFGS-B over a box, without SciPy's per-call conversion of the bounds.

`scipy.optimize.minimize(method="L-BFGS-B", bounds=Bounds(lb, ub))` turns the bounds into a
list of n (low, high) pairs and back into arrays, in Python, on every call: about 4 s per
million variables (SciPy 1.17), before the solver takes its first step. The epsilon-sharpness
searches a box of one variable per network weight, and its converged form restarts the solver
every 10 iterations, a few hundred calls per checkpoint: on a network of a million weights
that was most of its time. `minimize_in_box` hands the solver its bounds as arrays; the
solver, its arguments and so its iterates are SciPy's own (tested equal to `minimize`).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
from scipy.optimize import Bounds, OptimizeResult, minimize
from scipy.optimize import _lbfgsb_py

try:
    from scipy.optimize._optimize import MemoizeJac
except ImportError:  # another SciPy: minimize_in_box is then minimize itself
    MemoizeJac = None


class _ArrayBounds:
    """The bounds as arrays, where the solver expects a sequence of n pairs (it asks only for its length)."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray):
        self.lower, self.upper = lower, upper

    def __len__(self) -> int:
        return len(self.lower)


@contextlib.contextmanager
def _arrays_taken_as_they_are() -> None:
    convert = _lbfgsb_py.old_bound_to_new

    def pairs_to_arrays(bounds):
        return (bounds.lower, bounds.upper) if isinstance(bounds, _ArrayBounds) else convert(bounds)

    _lbfgsb_py.old_bound_to_new = pairs_to_arrays
    try:
        yield
    finally:
        _lbfgsb_py.old_bound_to_new = convert


def minimize_in_box(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, lower: np.ndarray,
                    upper: np.ndarray, options: dict) -> OptimizeResult:
    """`minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=Bounds(lower, upper), options=options)`, the same
    iterates, without the conversion of the bounds. Where SciPy's internals are not as this module expects (another
    SciPy), it is that call."""
    solver = getattr(_lbfgsb_py, "_minimize_lbfgsb", None)
    if solver is None or MemoizeJac is None or not hasattr(_lbfgsb_py, "old_bound_to_new"):
        return minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=Bounds(lower, upper), options=options)
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    value = MemoizeJac(fun)  # as minimize(jac=True) splits a function that returns both
    with _arrays_taken_as_they_are():
        return solver(value, np.asarray(x0, dtype=np.float64), jac=value.derivative, bounds=_ArrayBounds(lower, upper),
                      **options)
