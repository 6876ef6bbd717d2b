"""Evaluations over a whole split, with BN running statistics: loss and accuracy per target, and
for segmentation mean IoU; `eval_columns` names what an evaluation of a task measures, in the
order a curve keeps it."""

from __future__ import annotations

import numpy as np
import torch

from batchlab.data import Dataset
from batchlab.metrics import member_confusion, member_sums, mean_iou
from batchlab.stacked.models import StackedModel


EVAL_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")
SEGMENTATION_COLUMNS = ("train_miou", "test_miou")
EVAL_FULL, EVAL_SUBSET = "full", "subset"  # a curve row's eval_set (batchlab.speedup reads "full")
SUBSET_SEEDS = {"train": 1, "test": 2}  # one fixed draw per split, whatever the run's own seed


def eval_subset(n: int, size: int | None, split: str) -> torch.Tensor | None:
    """The sorted indices of a split's evaluation subset of `size` examples; None where it would hold them all.

    A pure function of (n, size, split): every run of a data set (and training fraction) is evaluated on
    the same examples, so their curves differ by training alone, not by the draw."""
    if size is None or size >= n:
        return None
    g = torch.Generator().manual_seed(SUBSET_SEEDS[split])
    return torch.randperm(n, generator=g)[:size].sort().values


def eval_subsets(data: Dataset, eval_cfg: dict) -> tuple[torch.Tensor, ...] | None:
    """(x_train, y_train, x_test, y_test) cut to `eval.train_subset` / `eval.test_subset`; None when
    neither cuts anything, so that every evaluation is over the whole sets."""
    sets = {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}
    index = {split: eval_subset(len(x), eval_cfg.get(f"{split}_subset"), split) for split, (x, _) in sets.items()}
    if all(i is None for i in index.values()):
        return None
    return tuple(t if index[split] is None else t[index[split].to(t.device)] for split, pair in sets.items() for t in pair)


def eval_columns(task: str) -> tuple[str, ...]:
    """What an evaluation measures: loss and accuracy per target on both splits, and mean IoU for segmentation."""
    return EVAL_COLUMNS + SEGMENTATION_COLUMNS if task == "segmentation" else EVAL_COLUMNS


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and accuracy per target over the whole of (x, y), in eval mode (BN running stats)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, device=x.device, dtype=torch.float64)  # loss, correct, targets
    for i in range(0, len(x), batch_size):
        sums = member_sums(model(x[i : i + batch_size])[None], y[i : i + batch_size][None])
        totals += torch.cat(sums).double()
    model.train(was_training)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count


CPU_EVAL_CHUNK = 1024
# The most logits one evaluation chunk holds (K x examples x positions x classes): a language
# model's are vocabulary x tokens per example, 2.4 GB for 512 WikiText-2 windows of one run.
EVAL_LOGITS = {"cpu": 2**22, "cuda": 2**28}


@torch.no_grad()
def evaluate_stack(model: StackedModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096,
                   num_classes: int | None = None, miou: bool = False, stack_size: int | None = None
                   ) -> tuple[np.ndarray, ...]:
    """Every member's mean cross-entropy and accuracy per target over the whole of (x, y), with BN
    running statistics; with `miou`, its mean IoU over the `num_classes` classes as a third array.
    `num_classes` also bounds each chunk's logits to EVAL_LOGITS elements.

    The chunks are set by `stack_size` (default: the members here), not by how many members this
    evaluation holds: the members of a stack that resumed from different steps train, and are
    evaluated, as smaller stacks, and each member's numbers must come out bit for bit as they
    would have in the whole stack (a chunk's forward and its float sums depend on its size)."""
    if miou and num_classes is None:
        raise ValueError("mean IoU needs num_classes")
    k = model.k
    planned = max(k, stack_size or k)
    # All at once, the members see each chunk together: keep the memory of one batch. One by
    # one, only one member's activations live at a time, and on a CPU a chunk of 1024 stays in
    # cache (a CNN evaluation of 12 members: 128 ms in chunks of 1024, 160 in chunks of 341).
    member_chunk = min(batch_size, CPU_EVAL_CHUNK)
    batch_size = member_chunk if model.runs_member_by_member(member_chunk, x.device) else max(1, batch_size // planned)
    if num_classes is not None:
        logits_per_example = planned * num_classes * y[0].numel()
        batch_size = max(1, min(batch_size, EVAL_LOGITS.get(x.device.type, EVAL_LOGITS["cuda"]) // logits_per_example))
    totals = torch.zeros(3, k, device=x.device, dtype=torch.float64)  # loss, correct, targets
    confusion = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        logits = model.forward(xb.unsqueeze(0).expand(k, *xb.shape), train=False)  # (K, b, C, *positions)
        target = yb.unsqueeze(0).expand(k, *yb.shape)
        totals += torch.stack(member_sums(logits, target)).double()
        if miou:
            confusion = confusion + member_confusion(logits, target, num_classes)
    loss_sum, correct, count = totals.cpu().numpy()
    scores = (loss_sum / count, correct / count)
    return (*scores, mean_iou(confusion).cpu().numpy()) if miou else scores
