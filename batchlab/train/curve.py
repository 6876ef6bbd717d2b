"""A run's curve, on the host, and what it says about the run: where it diverged, whether it stalled.

Curve rows: row k >= 1 is update k: `batch_loss` is the loss of the batch of update k
(before the update) and `lr` its learning rate; the evaluation columns at row k are
measured after update k. Row 0 is the evaluation at initialisation. `eval_set` says what an
evaluated row measured: "full" (the whole train and test sets) or "subset" (the fixed subsets
of `eval.train_subset` / `eval.test_subset`, batchlab.train.evaluation.eval_subsets).

Divergence (a non-finite batch loss, or one above `divergence.max_loss`) is found at the next
evaluation point, and the run ends there with `status = "diverged"`, the first bad step
recorded, and its outputs written like any other run.

Masters & Luschi's measure of a run is the median test accuracy over its last 5 epochs
(`last_epochs_median`), read at the epoch ends that `eval.last_epochs` adds to the plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from batchlab.config import RunSpec
from batchlab.health import stall_reason
from batchlab.train.evaluation import EVAL_COLUMNS, EVAL_FULL, EVAL_SUBSET
from batchlab.train.plan import Plan

log = logging.getLogger(__name__)


@dataclass
class Curve:
    """The curve so far, on the host."""

    batch_loss: np.ndarray  # (S+1,)
    lr: np.ndarray  # (S+1,)
    evals: dict[int, tuple[float, ...]]  # step -> one value per column
    columns: tuple[str, ...] = EVAL_COLUMNS
    subset_steps: set[int] = field(default_factory=set)  # the evaluations of the eval subsets, not the whole sets

    @classmethod
    def empty(cls, total_steps: int, columns: tuple[str, ...] = EVAL_COLUMNS) -> "Curve":
        return cls(np.full(total_steps + 1, np.nan), np.full(total_steps + 1, np.nan), {}, columns)

    def to_state(self, upto: int) -> dict:
        steps = sorted(self.evals)
        return {
            "batch_loss": torch.from_numpy(self.batch_loss[: upto + 1].copy()),
            "lr": torch.from_numpy(self.lr[: upto + 1].copy()),
            "eval_steps": torch.tensor(steps, dtype=torch.int64),
            "eval_values": torch.tensor([self.evals[s] for s in steps], dtype=torch.float64).reshape(-1, len(self.columns)),
            "subset_steps": torch.tensor(sorted(self.subset_steps), dtype=torch.int64),
        }

    @classmethod
    def from_state(cls, state: dict, total_steps: int, columns: tuple[str, ...] = EVAL_COLUMNS) -> "Curve":
        curve = cls.empty(total_steps, columns)
        n = len(state["batch_loss"])
        curve.batch_loss[:n] = state["batch_loss"].numpy()
        curve.lr[:n] = state["lr"].numpy()
        curve.evals = {int(s): tuple(v.tolist()) for s, v in zip(state["eval_steps"], state["eval_values"])}
        curve.subset_steps = {int(s) for s in state.get("subset_steps", [])}
        return curve

    def frame(self, upto: int, steps_per_epoch: int, batch_size: int) -> pd.DataFrame:
        steps = np.arange(upto + 1)
        values = np.full((upto + 1, len(self.columns)), np.nan)
        measured_on = np.full(upto + 1, None, dtype=object)  # which sets an evaluated row's values come from
        for s, v in self.evals.items():
            if s <= upto:
                values[s] = v
                measured_on[s] = EVAL_SUBSET if s in self.subset_steps else EVAL_FULL
        return pd.DataFrame(
            {
                "step": steps,
                "epoch": steps / steps_per_epoch,
                "examples_seen": steps * batch_size,
                "lr": self.lr[: upto + 1],
                "batch_loss": self.batch_loss[: upto + 1],
                **{col: values[:, i] for i, col in enumerate(self.columns)},
                "eval_set": measured_on,
            }
        )


def first_bad_step(batch_loss: np.ndarray, start: int, stop: int, max_loss: float) -> int | None:
    """The first step in [start, stop] whose batch loss is non-finite or above max_loss."""
    window = batch_loss[start : stop + 1]
    bad = np.flatnonzero(~np.isfinite(window) | (window > max_loss))
    return int(start + bad[0]) if len(bad) else None


def health_status(spec: RunSpec, curve: Curve, prior_loss: float) -> str:
    """The status of a run that ended without diverging, "completed" or "stalled"; a stall is logged with its reason.

    `prior_loss` is the chance level: the entropy of the prior of the training targets the run
    trains on (batchlab.health.prior_entropy of its data, after `train_fraction`)."""
    reason = stall_reason(curve.evals, prior_loss, spec.health)
    if reason is None:
        return "completed"
    log.warning("%s stalled: %s", spec.run_id, reason)
    return "stalled"


def last_epochs_median(curve: Curve, plan: Plan, step: int, status: str) -> dict:
    """The median test accuracy at the ends of the last epochs (`plan.last_epoch_ends`) of a run that ended at
    `step` with `status`, as run.json records it: the median, how many evaluations it is the median of, and
    why it is missing (None where there is one). A run that diverged or stopped before its planned end has
    none: its last epochs were never trained."""
    ends = sorted(plan.last_epoch_ends)
    if not ends:
        reason = "not asked: eval.last_epochs is 0 (or the run is shorter than an epoch)"
    elif status == "diverged":
        reason = "diverged"
    elif step < plan.total_steps:
        reason = f"stopped early, at step {step} of {plan.total_steps}"
    else:
        test_acc = curve.columns.index("test_acc")
        values = [curve.evals[s][test_acc] for s in ends]
        return {"median_last_epochs_test_acc": float(np.median(values)), "median_last_epochs_n": len(values),
                "median_last_epochs_reason": None}
    return {"median_last_epochs_test_acc": None, "median_last_epochs_n": 0, "median_last_epochs_reason": reason}
