"""SciPy's minimize(L-BFGS-B) against batchlab's minimize_in_box, side by side, on boxes of the sizes the
epsilon-sharpness searches (one variable per weight): seconds per call of a few iterations, and the ratio.

    .venv/bin/python benchmarks/box_lbfgsb.py [--sizes 100000 1000000] [--iterations 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import Bounds, minimize

from batchlab.analysis.box_lbfgsb import minimize_in_box


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args(argv)
    options = {"maxiter": args.iterations, "ftol": 1e-15, "gtol": 0.0}
    print(f"{'variables':>10} {'scipy s':>9} {'in_box s':>9} {'ratio':>6} same")
    for n in args.sizes:
        rng = np.random.default_rng(0)
        a, half = rng.normal(size=n), np.abs(rng.normal(size=n)) * 0.1
        y0 = rng.uniform(-1, 1, size=n) * half

        def fun(y):
            return float(-(np.sin(a * y) * y).sum()), -(a * y * np.cos(a * y) + np.sin(a * y))

        start = time.perf_counter()
        scipys = minimize(fun, y0, jac=True, method="L-BFGS-B", bounds=Bounds(-half, half), options=options)
        scipy_s = time.perf_counter() - start
        start = time.perf_counter()
        ours = minimize_in_box(fun, y0, -half, half, options)
        ours_s = time.perf_counter() - start
        print(f"{n:>10} {scipy_s:>9.3f} {ours_s:>9.3f} {scipy_s / ours_s:>6.2f} {np.array_equal(ours.x, scipys.x)}")


if __name__ == "__main__":
    main()
