"""Learning-rate rules that tie the LR to the batch size, plus warm-up and decay.

Golmant et al. 2018 compare, for a reference batch B0 with LR eta0:
- constant ("base"): eta = eta0;
- linear (LSR):      eta = eta0 * B / B0;
- square root (SRSR): eta = eta0 * sqrt(B / B0).
Masters & Luschi 2018 write eta = eta_tilde * m, which is the linear rule with B0 = 1.

The schedule multiplies the scaled LR by a linear warm-up factor and a decay factor; both
are plain functions of the step so that a resumed run needs no scheduler state.
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
) -> float:
    """Multiplier on the peak LR for the update at `step` (0-based) of `total_steps`.

    Warm-up rises linearly to 1 over the first `warmup_steps` updates. Decay then runs over
    the remaining updates: cosine to 0, linear to 0, or `step` (times `decay_gamma` at each
    milestone, given as fractions of the run).
    """
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; choose one of {', '.join(DECAYS)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "none":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay == "linear":
        return 1.0 - progress
    return decay_gamma ** sum(progress >= m for m in decay_milestones)
