"""Keskar et al.'s 1-D interpolation ("parametric plot") between two trained solutions.

Keskar et al. 2017 ("On Large-Batch Training for Deep Learning: Generalization Gap and
Sharp Minima", figure 3) evaluate the network along the line through a small-batch
solution x_SB and a large-batch solution x_LB:

    x(alpha) = alpha * x_LB + (1 - alpha) * x_SB,    alpha in [-1, 2],

and plot the train and test loss and accuracy against alpha. alpha = 0 is the small-batch
solution and alpha = 1 the large-batch one; alpha < 0 and alpha > 1 extrapolate beyond
them. A sharp minimum shows as a steep wall on its side of the curve.

Losses and accuracies come from `batchlab.train.evaluation.evaluate` (mean cross-entropy and accuracy
over the whole split, in eval mode), so at alpha = 0 and 1 they are the numbers the
training runs recorded for their own final weights.

BatchNorm running statistics are not parameters, and a line through the parameters does
not say what they should be. They are handled explicitly and recorded as `bn_mode`:
- "recompute" (default): at every alpha, every BN layer's running statistics are reset and
  recomputed from the interpolated weights, by forward passes over the training set (in its
  stored order, no augmentation, no gradients) with BN layers in train mode and cumulative
  averaging (`momentum=None`; the layers' momentum is restored afterwards). The rest of
  the model stays in eval mode during these passes, so dropout (Keskar's nets, the LSTM) draws
  no mask and leaves its stream untouched. Batches hold `bn_batch_size`
  examples; the last `n_train mod bn_batch_size` examples are left out so every batch has
  the same size (the cumulative average weights every forward pass equally). With ghost
  BatchNorm (`GhostBatchNorm2d`), `bn_batch_size` must be a multiple of the ghost batch
  size and the statistics are, as in training, means over ghost sub-batches. If the
  training set is smaller than `bn_batch_size`, one batch of the largest usable size is
  used instead.
- "interpolate": the floating-point buffers (running_mean, running_var) are mixed with the
  same alpha as the parameters; integer buffers (num_batches_tracked) are kept from the
  small-batch state. Beyond [0, 1] an extrapolated running_var can turn negative, which
  makes the loss NaN there (a warning is logged); that is one reason "recompute" is the
  default.
- "none": recorded for models without any BatchNorm layer, whatever was asked, since
  there is nothing to handle.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from batchlab.data import Dataset
from batchlab.train.evaluation import evaluate

log = logging.getLogger(__name__)

BN_MODES = ("recompute", "interpolate")
BUFFER_MODES = ("small", "interpolate")
COLUMNS = ("alpha", "split", "loss", "accuracy", "bn_mode")
PAIR_COLUMNS = ("pair_id", "run_id_small", "run_id_large", *COLUMNS)
_BN_FLOAT_BUFFERS = ("running_mean", "running_var")  # recognised by name when parameter names are not given


def alpha_grid(k: int = 31, lo: float = -1.0, hi: float = 2.0) -> np.ndarray:
    """`k` points evenly from `lo` to `hi`, always containing exactly 0.0 and 1.0.

    Grid points within 1e-9 * (hi - lo) of 0 or 1 are snapped to exactly 0.0 and 1.0;
    where 0 or 1 is not on the even grid it is *added*, so the result has k, k + 1 or
    k + 2 sorted points (the default k = 31 on [-1, 2] is a grid of step 0.1 with exactly
    31 points). ValueError if k < 2 or lo >= 0 or hi <= 1.
    """
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"lo and hi must be finite, got {lo!r} and {hi!r}")
    if lo >= 0:
        raise ValueError(f"lo must be below 0 so the grid reaches past the small-batch solution, got {lo!r}")
    if hi <= 1:
        raise ValueError(f"hi must be above 1 so the grid reaches past the large-batch solution, got {hi!r}")
    grid = np.linspace(float(lo), float(hi), int(k))
    tol = 1e-9 * (hi - lo)
    for anchor in (0.0, 1.0):
        near = np.abs(grid - anchor) <= tol
        if near.any():
            grid[near] = anchor
        else:
            grid = np.append(grid, anchor)
    return np.unique(grid)  # sorted; snapping never merges points (the grid step is far above tol)


def _check_same_layout(a: Mapping, b: Mapping, name_a: str, name_b: str) -> None:
    """ValueError naming the first key or shape that differs between two state dicts."""
    for key in a:
        if key not in b:
            raise ValueError(f"state mismatch: {key!r} is in the {name_a} state but not in the {name_b} state")
        sa, sb = tuple(a[key].shape), tuple(b[key].shape)
        if sa != sb:
            raise ValueError(f"state mismatch: {key!r} has shape {sa} in the {name_a} state but {sb} in the {name_b} state")
    for key in b:
        if key not in a:
            raise ValueError(f"state mismatch: {key!r} is in the {name_b} state but not in the {name_a} state")


def _check_state(state, name: str) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"the {name} state must be a state dict, got {type(state).__name__}")
    if "model" in state and isinstance(state["model"], Mapping):
        raise ValueError(f"the {name} state looks like a checkpoint (it has a 'model' entry); pass checkpoint['model']")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"the {name} state's entry {key!r} is a {type(value).__name__}, not a tensor")


def interpolate_states(
    state_small: dict,
    state_large: dict,
    alpha: float,
    buffers: str = "small",
    *,
    param_names: Iterable[str] | None = None,
) -> dict:
    """Parameters (and, with buffers="interpolate", float buffers) mixed as alpha*large + (1-alpha)*small.

    Returns a new state dict (fresh tensors; the inputs are not changed). Entries that are
    not mixed (integer buffers always, float buffers with buffers="small") are copies of the
    small-batch state. Which entries are parameters: `param_names` if given (e.g. from
    `model.named_parameters()`), otherwise every floating-point entry except BatchNorm's
    running_mean and running_var, recognised by name. The mix is computed in each tensor's
    own dtype, and is exact at alpha = 0 and 1.
    """
    if buffers not in BUFFER_MODES:
        raise ValueError(f"unknown buffers mode {buffers!r}; choose one of {', '.join(BUFFER_MODES)}")
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    _check_state(state_small, "small-batch")
    _check_state(state_large, "large-batch")
    _check_same_layout(state_small, state_large, "small-batch", "large-batch")
    params = set(param_names) if param_names is not None else None
    if params is not None and (unknown := sorted(params - set(state_small))):
        raise ValueError(f"parameter {unknown[0]!r} is not in the states")

    out = {}
    for key, small in state_small.items():
        large = state_large[key]
        if small.dtype != large.dtype:
            raise ValueError(f"state mismatch: {key!r} has dtype {small.dtype} in the small-batch state but {large.dtype} in the large-batch state")
        floating = small.is_floating_point() or small.is_complex()
        if params is not None:
            is_param = key in params
        else:
            is_param = floating and key.rsplit(".", 1)[-1] not in _BN_FLOAT_BUFFERS
        if floating and (is_param or buffers == "interpolate"):
            large = large.to(small.device)
            out[key] = alpha * large + (1.0 - alpha) * small
        else:
            out[key] = small.clone()
    return out


def _bn_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def _recompute_batch_size(layers: list[_BatchNorm], n_train: int, bn_batch_size: int) -> int:
    """The batch size of the statistics passes: `bn_batch_size`, or the largest usable size if the data is smaller."""
    if isinstance(bn_batch_size, bool) or int(bn_batch_size) != bn_batch_size or bn_batch_size < 1:
        raise ValueError(f"bn_batch_size must be a positive integer, got {bn_batch_size!r}")
    ghost = math.lcm(*(int(getattr(m, "ghost_batch_size", 1)) for m in layers))
    if bn_batch_size % ghost:
        raise ValueError(
            f"bn_batch_size={bn_batch_size} is not a multiple of the model's ghost BatchNorm batch size {ghost}"
        )
    size = min(int(bn_batch_size), n_train // ghost * ghost)
    if size < 1:
        raise ValueError(f"{n_train} training examples are fewer than one ghost BatchNorm batch of {ghost}")
    return size


@torch.no_grad()
def _recompute_bn_stats(model: nn.Module, layers: list[_BatchNorm], x: torch.Tensor, batch_size: int) -> None:
    """Reset the BN running stats and refill them with cumulative averages over equal batches of x."""
    momenta = [m.momentum for m in layers]
    was_training = model.training
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for i in range(0, len(x) - batch_size + 1, batch_size):  # full batches only
            model(x[i : i + batch_size])
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)


def interpolate_pair(
    model: nn.Module,
    state_small: dict,
    state_large: dict,
    data: Dataset,
    alphas,
    bn_mode: str = "recompute",
    eval_batch_size: int = 4096,
    bn_batch_size: int = 256,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Train and test loss and accuracy along x(alpha) = alpha * x_LB + (1 - alpha) * x_SB.

    Columns: alpha, split ("train"/"test"), loss, accuracy, bn_mode; two rows per alpha, in
    the order of `alphas`. `model` is a freshly built model of the right architecture; its
    weights are overwritten (it is moved to the data's device and left holding the last
    alpha's weights). `bn_mode` is "recompute" or "interpolate" (see the module docstring);
    models without BatchNorm record "none". Use the training's `eval.batch_size` as
    `eval_batch_size` to reproduce its evaluations exactly.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"unknown bn_mode {bn_mode!r}; choose one of {', '.join(BN_MODES)}")
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if alphas.size == 0 or not np.isfinite(alphas).all():
        raise ValueError(f"alphas must be a non-empty sequence of finite numbers, got {alphas!r}")
    _check_state(state_small, "small-batch")
    _check_state(state_large, "large-batch")
    _check_same_layout(state_small, state_large, "small-batch", "large-batch")
    _check_same_layout(model.state_dict(), state_small, "model's", "small-batch")

    model.to(data.x_train.device)
    layers = _bn_layers(model)
    mode = bn_mode if layers else "none"
    stats_batch = _recompute_batch_size(layers, data.n_train, bn_batch_size) if mode == "recompute" else None
    param_names = [name for name, _ in model.named_parameters()]
    var_keys = [k for k in state_small if k.rsplit(".", 1)[-1] == "running_var"]

    rows = []
    bar = tqdm(alphas, desc="interpolate", unit="alpha", file=sys.stderr, disable=not progress,
               mininterval=1 if sys.stderr.isatty() else 15)
    for alpha in bar:
        state = interpolate_states(
            state_small, state_large, alpha, "interpolate" if mode == "interpolate" else "small", param_names=param_names
        )
        if mode == "interpolate" and any((state[k] < 0).any() for k in var_keys):
            log.warning("alpha=%g: interpolated BatchNorm running_var is negative somewhere; losses will be NaN", alpha)
        model.load_state_dict(state)
        if mode == "recompute":
            _recompute_bn_stats(model, layers, data.x_train, stats_batch)
        for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
            loss, acc = evaluate(model, x, y, eval_batch_size)
            rows.append((float(alpha), split, loss, acc, mode))
    bar.close()
    return pd.DataFrame(rows, columns=list(COLUMNS))


def interpolate_run_pair(pair, spec, run_dirs: Mapping[str, str | Path], data: Dataset, cfg: dict) -> pd.DataFrame:
    """The interpolation table of a workflow pair, between its healthy ends.

    `run_dirs` maps each of the pair's candidates to its run directory. The ends are chosen
    here, from the runs' statuses (`batchlab.config.pair_ends`): a diverged or stalled run is
    never an end. With fewer than two healthy candidates the table is empty, and the log
    says why. `cfg` is the study's `interpolation` config; evaluation uses the batch size
    training used.
    """
    from batchlab import io
    from batchlab.config import pair_ends
    from batchlab.models import build_model

    statuses = {run_id: io.read_json(Path(d) / "run.json")["status"] for run_id, d in run_dirs.items()}
    ends = pair_ends(pair, statuses)
    if ends is None:
        log.warning("%s: fewer than two healthy runs among %s; no interpolation", pair.pair_id, statuses)
        return pd.DataFrame(columns=list(PAIR_COLUMNS))
    device = data.x_train.device
    data = data.train_fraction(spec.train_fraction)  # "train" is the examples the pair trained on
    model = build_model(spec.model, data.input_shape, data.num_classes, spec.bn_batch_size, **spec.model_options)
    small, large = (io.load_torch(Path(run_dirs[r]) / "final.pt", map_location=device)["model"] for r in ends)
    log.info("%s: interpolating %s (alpha = 0) to %s (alpha = 1)", pair.pair_id, *ends)
    table = interpolate_pair(
        model, small, large, data, alpha_grid(cfg["alphas"]), bn_mode=cfg["bn_mode"],
        eval_batch_size=spec.eval["batch_size"], bn_batch_size=cfg["bn_batch_size"],
    )
    table.insert(0, "run_id_large", ends[1])
    table.insert(0, "run_id_small", ends[0])
    table.insert(0, "pair_id", pair.pair_id)
    return table


def interpolate_run_pairs(pairs: list[tuple], data: Dataset, cfg: dict) -> pd.DataFrame:
    """`interpolate_run_pair` for each (pair, spec, run_dirs), as one table: one job interpolates a
    study's pairs, so Python and torch start once for all of them."""
    tables = [interpolate_run_pair(pair, spec, run_dirs, data, cfg) for pair, spec, run_dirs in pairs]
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(PAIR_COLUMNS))
