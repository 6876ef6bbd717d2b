"""PyTorch's word_language_model protocol, which Golmant et al.'s LSTM follows: a study's `language_model` key.

carry_state: the training set's windows (batchlab.data.text: window i is tokens [i*T, (i+1)*T) of
the stream) are cut into B columns of n // B consecutive windows each, the example's "batchify" at
the grain of whole windows; update i of an epoch feeds window i of every column (`stream_order`),
in the same order every epoch, with no shuffling. The LSTM's state flows from one update to the
next, detached (truncated back-propagation through time), and is zero at each epoch's start. Every
member of a stack sees the same batches, each with its own state: the model's `carried_state`
(batchlab.models.lstm) holds the stack's (layers, K*B, hidden) rows, member k's in rows
[k*B, (k+1)*B). A resume checkpoint holds the member's rows, so a resumed run continues with the
state an uninterrupted one would have. Evaluations run each split the same way, in `eval_columns`
columns (the example's eval batch, 10) with the state carried over the whole stream from zero
(`evaluate_streams`).
Differences from the example: the columns are cut at window boundaries and the windows left over
(n mod B) are dropped, where the example cuts tokens and ends each column with a shorter window;
and the training loss is evaluated over the whole training stream as well, as every run here.

plateau_anneal = d: after each epoch whose validation loss is not below the best of the epochs
before, the LR is divided by d (the example: 4). The loop evaluates at every epoch end and the
validation split at every evaluation; the LR multiplier is a pure function of the curve's
epoch-end validation losses (`plateau_scale`), so the curve in a resume checkpoint carries it and a
resumed run continues with the multiplier an uninterrupted one has. The curve's `lr` column
records the annealed LR.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from batchlab.config import RunSpec
from batchlab.metrics import member_sums
from batchlab.stacked.models import StackedModel

VALID_COLUMNS = ("valid_loss", "valid_acc")


def carries_state(spec: RunSpec) -> bool:
    return bool(spec.language_model.get("carry_state", False))


def anneal_divisor(spec: RunSpec) -> float | None:
    """The LR divisor of the plateau anneal, None when off."""
    return spec.language_model.get("plateau_anneal")


def stream_order(n_windows: int, columns: int) -> Tensor:
    """(n_windows // columns, columns) window indices: row i holds window i of every column, column c being
    windows [c * n // columns, (c + 1) * n // columns) of the stream."""
    steps = n_windows // columns
    if steps < 1:
        raise ValueError(f"{n_windows} windows cannot fill {columns} columns")
    return torch.arange(steps * columns).view(columns, steps).t()


def plateau_scale(valid_losses: list[float], divisor: float) -> float:
    """The LR multiplier after epochs with these validation losses, in order: divided by `divisor` after each
    epoch not better than the best before it (the first epoch always is; a NaN never is)."""
    scale, best = 1.0, math.inf
    for loss in valid_losses:
        if loss < best:
            best = loss
        else:
            scale /= divisor
    return scale


def epoch_end_losses(evals: dict[int, tuple[float, ...]], columns: tuple[str, ...], steps_per_epoch: int,
                     upto: int) -> list[float]:
    """The validation losses of a curve at the epoch ends up to step `upto`, in order."""
    col = columns.index("valid_loss")
    return [evals[s][col] for s in range(steps_per_epoch, upto + 1, steps_per_epoch)]


def language_model_module(model: StackedModel) -> nn.Module:
    """The module whose forward the stacked model runs (all K members at once), which holds `carried_state`.

    The recurrent leaves always stack, so a language model never runs member by member (there the
    plain module would run K times, each with its own state)."""
    module = model._module  # noqa: SLF001 (StackedModel has no public accessor for it)
    if module is None or not hasattr(module, "carried_state"):
        raise ValueError(f"{model.name} cannot carry a hidden state: it is not a stackable language model")
    return module


def zero_state(module: nn.Module, rows: int) -> tuple[Tensor, Tensor]:
    """An all-zero (h, c) of (layers, rows, hidden) for the language model `module` (stacked or plain)."""
    lstm = module.lstm
    layers = lstm.num_layers if hasattr(lstm, "num_layers") else len(lstm)
    first = lstm if hasattr(lstm, "num_layers") else lstm[0]
    weight = module.decoder.weight
    return tuple(weight.new_zeros(layers, rows, first.hidden_size) for _ in range(2))


def member_rows(state: tuple[Tensor, Tensor], k: int, batch: int) -> tuple[Tensor, Tensor]:
    """Member k's (layers, batch, hidden) part of a stack's state (member-major rows), as copies."""
    return tuple(s[:, k * batch : (k + 1) * batch].clone() for s in state)


def select_members(state: tuple[Tensor, Tensor], keep: list[int], batch: int) -> tuple[Tensor, Tensor]:
    """The state of the members `keep`, in that order: a new (layers, len(keep)*batch, hidden) pair."""
    return tuple(torch.cat([s[:, k * batch : (k + 1) * batch] for k in keep], dim=1) for s in state)


@torch.no_grad()
def evaluate_streams(model: StackedModel, x: Tensor, y: Tensor, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Every member's mean cross-entropy and accuracy per target over the stream of windows (x, y), run in
    `columns` columns with the state carried from zero over each, in eval mode. The model's own carried
    state (the training one) is left as it was."""
    module = language_model_module(model)
    saved = module.carried_state
    module.carried_state = zero_state(module, model.k * columns)
    totals = torch.zeros(3, model.k, device=x.device, dtype=torch.float64)  # loss, correct, targets
    try:
        for windows in stream_order(len(x), columns).to(x.device):
            xb, yb = x[windows], y[windows]
            logits = model.forward(xb.unsqueeze(0).expand(model.k, *xb.shape), train=False)
            totals += torch.stack(member_sums(logits, yb.unsqueeze(0).expand(model.k, *yb.shape))).double()
    finally:
        module.carried_state = saved
    loss_sum, correct, count = totals.cpu().numpy()
    return loss_sum / count, correct / count
