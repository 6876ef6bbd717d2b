"""Losses and scores of K stacked members, for every task: one target per example or one per position.

A member's logits carry the classes at dim 2 of (K, B, C, *positions) and its targets are
(K, B, *positions): classification has no positions, a language model one (T next
tokens), segmentation two (H x W pixel classes). A target equal to IGNORE_INDEX (a VOC
boundary pixel) counts nowhere. Every mean is over the targets that count, so a loss is
the mean cross-entropy per token or per pixel, as Golmant et al. 2018 report for their
language model and segmentation network; perplexity is exp of that loss.

A plain model's logits (B, C, *positions) are a stack of one: `logits[None]`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from batchlab.data import IGNORE_INDEX


def cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """F.cross_entropy of a plain model's logits (N, C, *positions) against targets (N, *positions),
    IGNORE_INDEX counting nowhere.

    Where the classes are innermost in memory (the language model's (N, V, T) is a transposed view
    of its decoder's (N, T, V)), it runs on the free (N*T, V) view instead: over dim 1 of the
    transposed view, torch's kernel is 3x slower at V = 5000, forward and backward (one thread).
    """
    if logits.dim() > 2 and logits.stride(1) == 1:
        flat = logits.movedim(1, -1).reshape(-1, logits.shape[1])
        loss = F.cross_entropy(flat, targets.reshape(-1), reduction=reduction, ignore_index=IGNORE_INDEX)
        return loss.view(targets.shape) if reduction == "none" else loss
    return F.cross_entropy(logits, targets, reduction=reduction, ignore_index=IGNORE_INDEX)


def member_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """(K,) mean cross-entropy of each member over its targets that count: the training loss."""
    k = targets.shape[0]
    per_target = cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1), reduction="none").view(k, -1)
    if targets.dim() == 2:  # one label per example: nothing is ignored
        return per_target.mean(1)
    return per_target.sum(1) / (targets != IGNORE_INDEX).view(k, -1).sum(1).clamp_min(1)


def member_sums(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(K,) float64 summed cross-entropy, (K,) correct predictions and (K,) targets that count."""
    k = targets.shape[0]
    loss = cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1), reduction="none").view(k, -1).double().sum(1)
    valid = targets != IGNORE_INDEX
    correct = ((logits.argmax(2) == targets) & valid).view(k, -1).sum(1)
    return loss, correct, valid.view(k, -1).sum(1)


def member_confusion(logits: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """(K, C, C) int64 confusion counts, [true, predicted], over the targets that count."""
    k = targets.shape[0]
    valid = targets != IGNORE_INDEX
    member = torch.arange(k, device=targets.device).view(k, *([1] * (targets.dim() - 1)))
    cell = (member * num_classes + targets) * num_classes + logits.argmax(2)
    return torch.bincount(cell[valid], minlength=k * num_classes**2).view(k, num_classes, num_classes)


def mean_iou(confusion: Tensor) -> Tensor:
    """(K,) mean intersection over union over the classes that occur (as target or prediction).

    IoU_c = TP_c / (TP_c + FP_c + FN_c), the PASCAL VOC and Cityscapes benchmark score; a class
    absent from both the targets and the predictions has no IoU and is left out of the mean.
    """
    confusion = confusion.double()
    tp = confusion.diagonal(dim1=1, dim2=2)
    union = confusion.sum(1) + confusion.sum(2) - tp
    iou = tp / union.clamp_min(1)
    return (iou * (union > 0)).sum(1) / (union > 0).sum(1).clamp_min(1)


def perplexity(loss: float) -> float:
    """exp of a language model's mean cross-entropy per token (in nats)."""
    return math.exp(loss) if loss < 700 else math.inf
