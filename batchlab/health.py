"""Run health and the convergence budget: pure functions of a run's full evaluations.

Both read only the evaluations of the curve, `{step: (train_loss, train_acc, test_loss,
test_acc)}` (the `Curve.evals` of batchlab.train.curve). Checkpoints hold these, so a resumed run
reaches the same verdicts at the same steps as an uninterrupted one.

- `stall_reason`: why a run that did not diverge still failed to train (its status is then
  "stalled"): it ends at chance level, or it never improved on its initial loss. A stalled
  run is not a solution, so it never enters a pair, a comparison or a headline number.
  Chance level is `prior_entropy`: the loss of a model that learned only how often each
  class occurs among the training targets, not ln(C) (a language model's unigram entropy,
  or a segmentation's with a dominant background class, lies far below ln(C)).
- `stop_reason`: which criterion of Keskar's convergence budget (`budget.stop`) the latest
  evaluation meets, if any: the run then ends there instead of at its cap.

Non-finite train losses never count as progress: a NaN final loss is "at or above chance",
and a NaN never becomes the best loss of a plateau window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Evals = Mapping[int, Sequence[float]]  # step -> (train_loss, train_acc, test_loss, test_acc)
TRAIN_LOSS, TRAIN_ACC = 0, 1  # positions in an evaluation tuple
STOP_CRITERIA = ("train_loss", "train_acc", "plateau")  # checked in this order; the first met is the reason


def chance_loss(num_classes: int) -> float:
    """Cross-entropy of a uniform prediction over `num_classes` classes: ln(C), the chance level
    only when the classes are balanced (see `prior_entropy`)."""
    return math.log(num_classes)


def prior_entropy(targets, num_classes: int, ignore_index: int | None = None) -> float:
    """Cross-entropy (nats) of predicting the empirical class distribution of `targets`: its entropy.

    This is the lowest loss a model can reach that ignores its inputs, the chance level of a
    run trained on these targets. `targets` holds class ids of any shape (labels (N,), next
    tokens (N, T), pixel classes (N, H, W)), as a numpy array or a torch tensor on any device;
    every entry counts once, as in the mean loss per target that evaluation reports. Entries
    equal to `ignore_index` (the loss's ignore index) do not count. Balanced classes give
    ln(num_classes); a class that never occurs adds nothing.
    """
    if hasattr(targets, "detach"):  # a torch tensor, on any device
        targets = targets.detach().cpu().numpy()
    flat = np.asarray(targets).reshape(-1)
    if ignore_index is not None:
        flat = flat[flat != ignore_index]
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        raise ValueError(f"targets must be class ids in 0..{num_classes - 1} (or the ignore index {ignore_index}), "
                         f"found {flat.min()}..{flat.max()}")
    counts = np.bincount(flat.astype(np.int64), minlength=num_classes)
    total = counts.sum()
    if total == 0:
        raise ValueError("no target counts (all are the ignore index): the prior is not defined")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def best_train_loss(evals: Evals, upto: int) -> float:
    """The lowest finite full train loss among the evaluations at steps <= `upto` (NaN if none)."""
    losses = np.array([v[TRAIN_LOSS] for s, v in evals.items() if s <= upto], dtype=float)
    finite = losses[np.isfinite(losses)]
    return float(finite.min()) if len(finite) else math.nan


def _latest_step(evals: Evals) -> int:
    if not evals:
        raise ValueError("a run with no evaluation has no verdict")
    return max(evals)


# --- health: did a finished run train at all? ----------------------------------------------

def stall_reason(evals: Evals, prior_loss: float, health_cfg: Mapping) -> str | None:
    """Why a finished run failed to train, in words; None when it trained.

    Stalled when its final full train loss is at or above `chance_fraction * prior_loss`, or
    when its best full train loss never fell below `(1 - min_improvement)` times its loss at
    initialisation (step 0). `prior_loss` is the chance level: the entropy of the prior of the
    targets the run trains on (`prior_entropy`), ln(C) only for balanced classes. The second
    test needs a finite initial loss; without one only the first applies.
    """
    final_step = _latest_step(evals)
    if 0 not in evals:
        raise ValueError("the health of a run is judged against its evaluation at step 0, which is missing")
    final = evals[final_step][TRAIN_LOSS]
    chance = health_cfg["chance_fraction"] * prior_loss
    if not final < chance:  # written so that a NaN final loss is stalled too
        return (f"final train loss {final:.4g} at step {final_step} is at or above chance level "
                f"{health_cfg['chance_fraction']:g} x {prior_loss:.4g}, the entropy of the training "
                f"targets' prior, = {chance:.4g}")
    initial = evals[0][TRAIN_LOSS]
    wanted = (1 - health_cfg["min_improvement"]) * initial
    best = best_train_loss(evals, final_step)
    if math.isfinite(initial) and not best < wanted:
        return (f"best train loss {best:.4g} never fell below {1 - health_cfg['min_improvement']:g} x "
                f"the initial {initial:.4g} = {wanted:.4g}")
    return None


# --- convergence budget: has a run converged enough to stop? -------------------------------

def has_plateaued(evals: Evals, step: int, window_steps: int, min_delta: float) -> bool:
    """Whether the best train loss up to `step` failed to improve by a relative `min_delta`
    on the best up to `window_steps` earlier. False until a whole window has passed."""
    if step < window_steps:
        return False
    best_now = best_train_loss(evals, step)
    best_before = best_train_loss(evals, step - window_steps)
    return best_now > (1 - min_delta) * best_before  # False when either is NaN: no finite history to judge


def stop_reason(evals: Evals, steps_per_epoch: int, stop_cfg: Mapping | None) -> str | None:
    """The convergence criterion (one of STOP_CRITERIA) that the latest evaluation meets, or
    None to train on. `stop_cfg` is `budget.stop`; None or empty stops nothing."""
    if not stop_cfg:
        return None
    step = _latest_step(evals)
    train_loss, train_acc = evals[step][TRAIN_LOSS], evals[step][TRAIN_ACC]
    if "train_loss" in stop_cfg and train_loss <= stop_cfg["train_loss"]:
        return "train_loss"
    if "train_acc" in stop_cfg and train_acc >= stop_cfg["train_acc"]:
        return "train_acc"
    if "plateau_epochs" in stop_cfg and has_plateaued(
        evals, step, stop_cfg["plateau_epochs"] * steps_per_epoch, stop_cfg["plateau_min_delta"]
    ):
        return "plateau"
    return None
