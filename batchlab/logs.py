"""Start a workflow job: its stderr to its snakemake log, and its thread count pinned.

Call `start_job` first thing in a script, before numpy or torch are imported: BLAS and
OpenMP read their thread counts when they load, and unpinned pools on a shared machine
oversubscribe the cores (SciPy's L-BFGS-B ran ten times slower that way).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def start_job(log_path: str | os.PathLike, threads: int = 1) -> None:
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stderr = open(log_path, "a", buffering=1)  # line-buffered: a killed job keeps its last lines
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
