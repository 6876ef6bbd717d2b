"""The stack: K runs of one model and one batch size, trained together.

A stack's members differ only in LR rule, base LR and seed (check_stackable). They train
together: one stacked model (batchlab.stacked.models: every weight with a leading run
dimension), one stacked optimizer (batchlab.stacked.optim: torch.optim's update per member,
each with its own LR and state) and one step that updates all of them (Stack). Each member
still draws its own batches from its own data order, with its own augmentation (member_batches).
"""

from __future__ import annotations

import torch

from batchlab.config import RunSpec
from batchlab.data import Dataset
from batchlab.data.augment import apply_augment
from batchlab.lr_rules import warms_up
from batchlab.stacked.models import build_stacked_model
from batchlab.stacked.optim import StackedOptimizer
from batchlab.stacked.step import make_step
from batchlab.train.run_files import Member


SHARED_SPEC_KEYS = ("study", "dataset", "train_fraction", "model", "batch_size", "bn_batch_size", "ref_batch_size",
                    "optimizer", "budget", "schedule", "eval", "checkpoints", "divergence", "health", "language_model")


def check_stackable(specs: list[RunSpec]) -> None:
    """Members of a stack differ only in LR rule, base LR and seed: one model, one batch size, one plan."""
    if not specs:
        raise ValueError("a stack needs at least one run")
    first = specs[0].to_dict()
    for spec in specs[1:]:
        other = spec.to_dict()
        differ = [k for k in SHARED_SPEC_KEYS if other[k] != first[k]]
        if differ:
            raise ValueError(f"{spec.run_id} cannot share a stack with {specs[0].run_id}: they differ in {', '.join(differ)}")
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"a run appears twice in one stack: {ids}")


class Stack:
    """The members still training, their stacked weights and optimizer state, and their host curves."""

    def __init__(self, members: list[Member], data: Dataset, dev: torch.device, step_mode: str):
        spec = members[0].spec
        self.members = members
        self.step_mode = step_mode
        self.model = build_stacked_model(spec.model, data.input_shape, data.num_classes, [m.spec.seed for m in members],
                                         spec.bn_batch_size, device=dev, dtype=data.dtype, options=spec.model_options)
        self.optimizer = StackedOptimizer(self.model.params, spec.optimizer)
        for k, m in enumerate(members):
            if m.resumed is not None:
                self.model.load_member(k, m.resumed["model"])
                self.optimizer.load_member(k, m.resumed["optimizer"])
        self.peak_lr = torch.tensor([m.spec.lr for m in members], device=dev, dtype=data.dtype)
        self.warm = [warms_up(m.spec.schedule, m.spec.lr_rule) for m in members]  # whose LR rule warms up
        self._warm_mask = torch.tensor(self.warm, device=dev)
        self.lr_scale: torch.Tensor | None = None  # (K,) the plateau anneal's multipliers (batchlab.train.language_model)
        self._step = make_step(self.model, self.optimizer, step_mode)

    def lr(self, cold: float, warm: float) -> torch.Tensor:
        """Each member's LR: its peak times the schedule's factor with warm-up (`warm`) if its LR rule warms
        up, else without (`cold`; batchlab.lr_rules.schedule_factors), times `lr_scale` where set. Made on the
        device from the two numbers, so the hot loop never copies to it (a copy would wait for it)."""
        scheduled = self._scheduled_lr(cold, warm)
        return scheduled if self.lr_scale is None else scheduled * self.lr_scale

    def _scheduled_lr(self, cold: float, warm: float) -> torch.Tensor:
        if all(self.warm) or cold == warm:
            return self.peak_lr * warm
        if not any(self.warm):
            return self.peak_lr * cold
        return torch.where(self._warm_mask, self.peak_lr * warm, self.peak_lr * cold)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """One update of every member (see batchlab.stacked.step); the (K,) batch losses."""
        return self._step(xb, yb, lr)

    def keep(self, keep: list[int]) -> None:
        """Drop the members not in `keep`: a finished member stops costing compute."""
        self.members = [self.members[k] for k in keep]
        self.model = self.model.select(keep)
        self.optimizer = self.optimizer.select(keep, self.model.params)
        self.peak_lr = self.peak_lr[keep]
        self.warm = [self.warm[k] for k in keep]
        self._warm_mask = self._warm_mask[keep]
        if self.lr_scale is not None:
            self.lr_scale = self.lr_scale[keep]
        self._step = make_step(self.model, self.optimizer, self.step_mode)  # a captured step knows the old tensors only


def member_batches(data: Dataset, perms: torch.Tensor, seeds: list[int], step: int, pos: int, batch_size: int):
    """(K, B, ...) inputs and (K, B) labels: each member's slice of its own permutation, with its own augmentation."""
    idx = perms[:, pos * batch_size : (pos + 1) * batch_size]  # (K, B)
    xb, yb = data.x_train[idx], data.y_train[idx]
    if data.augment != "none":
        dev = xb.device
        xb = torch.stack([
            apply_augment(data.augment, xb[k], torch.Generator(device=dev).manual_seed(seed * 1_000_003 + step))
            for k, seed in enumerate(seeds)
        ])
    return xb, yb
