"""minimize_in_box: SciPy's L-BFGS-B without its per-call conversion of the bounds, iterate for iterate."""

import numpy as np
import pytest
from scipy.optimize import Bounds, minimize

from batchlab.analysis import box_lbfgsb
from batchlab.analysis.box_lbfgsb import minimize_in_box


def problem(n: int, seed: int = 0):
    """A non-convex function over a box, with its gradient, whose maximum lies partly on the box's faces."""
    rng = np.random.default_rng(seed)
    a, half = rng.normal(size=n), np.abs(rng.normal(size=n)) * 0.5

    def value_and_gradient(y):
        return float(-(np.sin(3 * a * y) * y).sum()), -(3 * a * y * np.cos(3 * a * y) + np.sin(3 * a * y))

    return value_and_gradient, rng.uniform(-1, 1, size=n) * half, half


@pytest.mark.parametrize("n, max_iter", [(7, 50), (200, 10), (5000, 3)])
def test_the_same_iterates_as_scipys_minimize(n, max_iter):
    fun, y0, half = problem(n)
    options = {"maxiter": max_iter, "ftol": 1e-15, "gtol": 0.0}
    ours = minimize_in_box(fun, y0, -half, half, options)
    scipys = minimize(fun, y0, jac=True, method="L-BFGS-B", bounds=Bounds(-half, half), options=options)
    assert np.array_equal(ours.x, scipys.x) and ours.fun == scipys.fun
    assert (ours.nit, ours.nfev, ours.status) == (scipys.nit, scipys.nfev, scipys.status)
    assert np.any(np.abs(ours.x) == half)  # some coordinates ended on the box's faces: the bounds were in force


def test_scipys_own_conversion_is_left_as_it_was(monkeypatch):
    convert = box_lbfgsb._lbfgsb_py.old_bound_to_new
    fun, y0, half = problem(5)
    minimize_in_box(fun, y0, -half, half, {"maxiter": 2})
    assert box_lbfgsb._lbfgsb_py.old_bound_to_new is convert
    # where SciPy's internals are not there (another SciPy), it is minimize itself
    monkeypatch.setattr(box_lbfgsb, "MemoizeJac", None)
    options = {"maxiter": 4, "ftol": 1e-15, "gtol": 0.0}
    fallback = minimize_in_box(fun, y0, -half, half, options)
    assert np.array_equal(fallback.x, minimize(fun, y0, jac=True, method="L-BFGS-B", bounds=Bounds(-half, half),
                                               options=options).x)
