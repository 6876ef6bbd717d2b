"""A task's measure of a trained model, read from the runs table.

Final quality is the task's own measure (`QUALITY`): test accuracy for classification, test
perplexity for a language model (lower is better) and test mean IoU for segmentation; a runs
table without a `task` column is classification. A run that did not complete counts as the
worst (`failed_as_worst`): a diverged or stalled run is no solution.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from batchlab.speedup import train_fractions

CELL = ["study", "model", "train_fraction", "lr_rule", "batch_size"]
CLASSIFICATION = "classification"


class Quality(NamedTuple):
    """A task's measure of a trained model, in the runs table."""

    column: str
    name: str  # in titles and tables
    higher_is_better: bool
    log: bool  # drawn on a log axis


QUALITY = {
    CLASSIFICATION: Quality("final_test_acc", "test accuracy", True, False),
    "language_model": Quality("final_test_perplexity", "test perplexity", False, True),
    "segmentation": Quality("final_test_miou", "test mean IoU", True, False),
}


def run_tasks(runs: pd.DataFrame) -> pd.Series:
    """Each run's task, aligned with `runs`: classification where the table has none."""
    if "task" not in runs:
        return pd.Series(CLASSIFICATION, index=runs.index, name="task")
    return runs["task"].fillna(CLASSIFICATION).astype(str)


def task_quality(runs: pd.DataFrame) -> Quality:
    """The quality measure of a group of runs of one task (a study trains one data set)."""
    tasks = run_tasks(runs)
    return QUALITY.get(tasks.iloc[0] if len(tasks) else CLASSIFICATION, QUALITY[CLASSIFICATION])


def with_fraction(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with its training fraction in every row (1.0 for a table without the column)."""
    return runs.assign(train_fraction=train_fractions(runs))


def failed_as_worst(runs: pd.DataFrame, quality: Quality) -> pd.Series:
    """Each run's `quality`, at its worst (0, or an infinite perplexity) for a run that did not complete or has
    none: a diverged or stalled run is no solution, so an LR that fails for most seeds must not win."""
    worst = 0.0 if quality.higher_is_better else np.inf
    return runs[quality.column].where(runs["status"].astype(str) == "completed", worst).fillna(worst)


def run_scores(runs: pd.DataFrame) -> pd.Series:
    """Final test accuracy, with 0 for a run that did not complete (`failed_as_worst`)."""
    return failed_as_worst(runs, QUALITY[CLASSIFICATION])


def quality_scores(runs: pd.DataFrame) -> pd.Series:
    """Each run's task quality as a score in [0, 1], higher better, with 0 for a run that did not complete
    (as `run_scores`): accuracy or mean IoU, and 1 / perplexity (the geometric-mean probability of a token)
    for a language model, so that a failing seed pulls a cell's median down the same way for every task."""
    tasks = run_tasks(runs)
    scores = run_scores(runs)
    for task, quality in QUALITY.items():
        mine = (tasks == task).to_numpy()
        if task == CLASSIFICATION or not mine.any():
            continue
        value = failed_as_worst(runs.loc[mine], quality).astype(float)
        scores.loc[mine] = value if quality.higher_is_better else 1.0 / value  # 1 / inf: a failed run scores 0
    return scores


def best_base_lr_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs (every seed) at each cell's best base LR, judged by the median score over seeds
    (`quality_scores`: the task's quality; a diverged or stalled run scores 0). A cell is one
    (study, model, training fraction, LR rule, batch size); the result carries `train_fraction`."""
    runs = with_fraction(runs)
    scored = runs.assign(score=quality_scores(runs))
    medians = scored.groupby(CELL + ["base_lr"], as_index=False)["score"].median()
    best = medians.loc[medians.groupby(CELL)["score"].idxmax(), CELL + ["base_lr"]]
    return runs.merge(best, on=CELL + ["base_lr"])


