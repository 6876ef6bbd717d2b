"""The plan of a run: how many steps it trains, when it evaluates and checkpoints, and the order of its data.

Every checkpoint step is an evaluation step, and so are step 0 and the last. With
`eval.last_epochs` = n, so are the ends of the last n epochs, over the whole sets: Masters &
Luschi report the median test accuracy over the last 5 (batchlab.train.curve.last_epochs_median).
With a convergence budget (`budget.stop`, Keskar's "until the loss ceased to improve") every
epoch end is an evaluation point too, and the run ends at the first evaluation that meets a criterion
(batchlab.health.stop_reason); `epochs` or `steps` is then a cap. The criteria read only the
curve's evaluations, so a resumed run stops where an uninterrupted one would.

The data set sits on the device as tensors; each epoch draws a permutation seeded by (seed,
epoch) and batches are index slices of it (batchlab.train.stack.member_batches), so there is no
DataLoader and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from batchlab.config import RunSpec


@dataclass(frozen=True)
class Plan:
    """When a run evaluates and checkpoints. Every checkpoint step is an evaluation step (its
    train loss is in the curve); the final step never has a step_<k>.pt, final.pt holds it."""

    steps_per_epoch: int
    total_steps: int
    eval_steps: frozenset[int]
    checkpoint_steps: frozenset[int]
    last_epoch_ends: frozenset[int] = frozenset()  # the ends of the last `eval.last_epochs` epochs

    @property
    def full_eval_steps(self) -> frozenset[int]:
        """The evaluations over the whole of both sets whatever `eval.train_subset`/`test_subset` say:
        step 0, the last, every checkpoint and the ends of the last epochs, the points the analyses and
        final metrics read."""
        return self.checkpoint_steps | self.last_epoch_ends | {0, self.total_steps}


def log_spaced_steps(total: int, n: int) -> set[int]:
    """About `n` integer steps spaced evenly in log between 1 and `total`."""
    if n <= 0 or total <= 0:
        return set()
    return {int(s) for s in np.unique(np.round(np.geomspace(1, total, n)))}


def regular_steps(total: int, n: int) -> set[int]:
    """`n` intervals' worth of evenly spaced integer steps from 0 to `total`, both included."""
    return {int(s) for s in np.round(np.linspace(0, total, n + 1))}


def last_epoch_ends(total: int, steps_per_epoch: int, n: int) -> set[int]:
    """The ends of the last `n` whole epochs of a run of `total` steps (fewer in a shorter run)."""
    epochs = total // steps_per_epoch
    return {k * steps_per_epoch for k in range(max(1, epochs - n + 1), epochs + 1)} if n > 0 else set()


def make_plan(spec: RunSpec, n_train: int) -> Plan:
    """Steps, evaluations and checkpoints of a run on `n_train` training examples.

    Evaluations: `eval.regular_points` evenly spaced and `eval.log_points` log-spaced steps,
    every epoch end under a convergence budget or a plateau anneal, the ends of the last `eval.last_epochs`
    epochs, every checkpoint step, and steps 0 and the last. Checkpoints: step 0,
    `checkpoints.log_points` log-spaced steps and, with `checkpoints.regular_points` = k > 0,
    the k evenly spaced steps 0, total/k, .., (k-1) total/k (rounded), never the last step
    (final.pt).
    """
    steps_per_epoch = n_train // spec.batch_size  # the incomplete last batch is dropped
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {spec.batch_size} is larger than the {n_train} training examples")
    budget = spec.budget
    total = budget["epochs"] * steps_per_epoch if "epochs" in budget else budget["steps"]
    regular = regular_steps(total, spec.eval["regular_points"])
    logs = log_spaced_steps(total, spec.eval["log_points"])
    # the convergence criteria, and the plateau anneal, are checked at evaluations: at least once an epoch
    every_epoch = budget.get("stop") or spec.language_model.get("plateau_anneal") is not None
    epoch_ends = set(range(steps_per_epoch, total + 1, steps_per_epoch)) if every_epoch else set()
    ckpt_regular = regular_steps(total, spec.checkpoints.get("regular_points", 0))  # {0} when 0
    ckpts = {0} | ((log_spaced_steps(total, spec.checkpoints["log_points"]) | ckpt_regular) - {total})
    last_ends = last_epoch_ends(total, steps_per_epoch, spec.eval.get("last_epochs", 0))
    evals = regular | logs | epoch_ends | last_ends | ckpts | {0, total}
    return Plan(steps_per_epoch, total, frozenset(evals), frozenset(ckpts), frozenset(last_ends))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training set in `epoch`: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def subset_size(size: int | None, n: int) -> int:
    """How many of a set's `n` examples an evaluation subset of `size` holds: all of them for None."""
    return n if size is None else min(size, n)


def evaluated_examples(plan: Plan, eval_cfg: dict, n_train: int, n_test: int) -> int:
    """Examples one member evaluates over its plan: the whole of both sets at the full evaluations,
    the subsets (eval.train_subset / test_subset) at the others."""
    full = len(plan.full_eval_steps & plan.eval_steps)
    subset = subset_size(eval_cfg.get("train_subset"), n_train) + subset_size(eval_cfg.get("test_subset"), n_test)
    return full * (n_train + n_test) + (len(plan.eval_steps) - full) * subset
