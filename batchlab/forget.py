"""Forgetting a run: its directory and the marker of the stack it trained in, so that snakemake
trains it again and redoes what reads it.

A run's files are outputs of its stack's job, which snakemake knows by the stack's marker
(results/stacks/<stack>.json) alone: deleting the run's directory leaves the marker, and
snakemake sees nothing to do. Nor does it when the marker is gone too: snakemake makes a missing
file again only for a job that must run, and every job downstream is up to date. So the tables
gathered from every run go as well (GATHERED): their job must run, it needs every marker, the
stack's job runs again and what reads its runs follows. Its other members, finished under the
same config and code, are kept (batchlab.train.run_files): only the forgotten run trains.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

RUNS_DIR, STACKS_DIR = Path("runs"), Path("stacks")  # under the workflow's results/
GATHERED = (Path("tables/runs.parquet"), Path("tables/curves.parquet"))  # rule gather_tables: from every run


def run_id_of(path: str | Path) -> str | None:
    """The run whose directory holds `path` (…/results/runs/<study>/…/seed<k>/…), if it lies in one."""
    parts = Path(path).parts
    for i in range(len(parts) - 1):
        if parts[i] == "results" and parts[i + 1] == RUNS_DIR.name:
            for j in range(i + 2, len(parts)):
                if parts[j].startswith("seed"):
                    return "/".join(parts[i + 2 : j + 1])
    return None


def stack_markers(results: Path, run_id: str) -> list[Path]:
    """The stack markers that list `run_id` among their runs, read without their checksum. One that cannot be
    read is skipped: a damaged marker is any other damaged output, deleted by hand (its error says so)."""
    markers = []
    for marker in sorted((results / STACKS_DIR).rglob("*.json")):
        try:
            runs = json.loads(marker.read_text()).get("runs", {})
        except (OSError, ValueError, AttributeError):
            continue
        if run_id in runs:
            markers.append(marker)
    return markers


def forget(results: Path, run_ids: list[str]) -> list[Path]:
    """Remove each run's directory, its stack's marker and the gathered tables; the paths removed. A run that has
    neither directory nor marker is refused (a typo would otherwise pass silently)."""
    removed = []
    for run_id in run_ids:
        run_dir = results / RUNS_DIR / run_id
        markers = stack_markers(results, run_id)
        if not run_dir.is_dir() and not markers:
            raise FileNotFoundError(f"no run {run_id} in {results}: neither {run_dir} nor a stack marker in "
                                    f"{results / STACKS_DIR} that lists it")
        if run_dir.is_dir():
            shutil.rmtree(run_dir)
            removed.append(run_dir)
        for marker in markers:
            marker.unlink(missing_ok=True)
            removed.append(marker)
    for table in (results / name for name in GATHERED):
        if table.exists():
            table.unlink()
            removed.append(table)
    return removed
