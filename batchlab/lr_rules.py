"""Learning-rate rules that tie the LR to the batch size, plus warm-up and decay.

Golmant et al. 2018 compare, for a reference batch B0 with LR eta0:
- constant ("base"): eta = eta0;
- linear (LSR):      eta = eta0 * B / B0;
- square root (SRSR): eta = eta0 * sqrt(B / B0).
Masters & Luschi 2018 write eta = eta_tilde * m, which is the linear rule with B0 = 1.

The schedule multiplies the scaled LR by a linear warm-up factor and a decay factor; both
are plain functions of the step so that a resumed run needs no scheduler state.

Warm-up is asked per LR rule (`schedule.warmup_rules`): Golmant et al. warm up the linear
rule only, whose large-batch LRs are the ones that blow up early; every rule warms up by
default. Its length is `warmup_steps` updates, or `warmup_fraction` of the run (Masters &
Luschi: the first 5%). Without `warmup_start` the factor of update t is (t + 1) / W; with it,
the factor starts at `warmup_start` (Masters & Luschi: 1/32) and rises linearly to 1, reached
at update W.
"""

from __future__ import annotations

import math

LR_RULES = ("constant", "linear", "sqrt")
DECAYS = ("none", "cosine", "linear", "step")


def scaled_lr(rule: str, base_lr: float, batch_size: int, ref_batch_size: int) -> float:
    """The peak LR for `batch_size` under `rule`, given `base_lr` at `ref_batch_size`."""
    if batch_size < 1 or ref_batch_size < 1:
        raise ValueError(f"batch sizes must be positive, got {batch_size} and reference {ref_batch_size}")
    ratio = batch_size / ref_batch_size
    if rule == "constant":
        return base_lr
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    raise ValueError(f"unknown lr_rule {rule!r}; choose one of {', '.join(LR_RULES)}")


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    decay: str = "none",
    decay_gamma: float = 0.1,
    decay_milestones: tuple[float, ...] = (0.5, 0.75),
    warmup_start: float | None = None,
) -> float:
    """Multiplier on the peak LR for the update at `step` (0-based) of `total_steps`.

    Warm-up rises linearly to 1 over the first `warmup_steps` updates: (step + 1) / warmup_steps,
    or from `warmup_start` at step 0 when it is given. Decay then runs over the remaining
    updates: cosine to 0, linear to 0, or `step` (times `decay_gamma` at each milestone, given
    as fractions of the run).
    """
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; choose one of {', '.join(DECAYS)}")
    if step < warmup_steps:
        if warmup_start is None:
            return (step + 1) / warmup_steps
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    if decay == "none":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay == "linear":
        return 1.0 - progress
    return decay_gamma ** sum(progress >= m for m in decay_milestones)


def warmup_length(schedule: dict, total_steps: int) -> int:
    """The warm-up updates of a run of `total_steps` under a study's `schedule` (for a rule that warms up):
    `warmup_fraction` of the run, rounded but at least one, or else `warmup_steps`."""
    fraction = schedule.get("warmup_fraction")
    if fraction is None:
        return schedule["warmup_steps"]
    return max(1, round(fraction * total_steps))


def warms_up(schedule: dict, lr_rule: str) -> bool:
    """Whether the runs of `lr_rule` warm up under `schedule` (`warmup_rules`, every rule when absent)."""
    return lr_rule in schedule.get("warmup_rules", LR_RULES)


def schedule_factors(step: int, total_steps: int, schedule: dict) -> tuple[float, float]:
    """The LR factors of update `step` of `total_steps` under a study's `schedule`: (without warm-up, with
    warm-up). The runs of a stack share the schedule but not the LR rule, so each takes one of these two."""
    warmup = warmup_length(schedule, total_steps)
    decay = schedule["decay"], schedule["decay_gamma"], tuple(schedule["decay_milestones"])
    return (lr_factor(step, total_steps, 0, *decay),
            lr_factor(step, total_steps, warmup, *decay, warmup_start=schedule.get("warmup_start")))


def schedule_factor(step: int, total_steps: int, schedule: dict, lr_rule: str) -> float:
    """The LR factor of update `step` of a run of `lr_rule` under `schedule`: its LR is its peak times it."""
    return schedule_factors(step, total_steps, schedule)[warms_up(schedule, lr_rule)]
