"""The stacked training step, and the ways a device runs it.

- `eager`: Python calls every kernel of every step (forward, backward, optimizer) itself.
- `cuda_graph`: after a few eager steps, one step is recorded into a CUDA graph and every later
  step replays it: the same kernels on the same tensors, so the same numbers, without the
  Python and kernel-launch cost that dominates a small batch on a GPU. The inputs, the labels
  and the learning rates are copied into the graph's own tensors before each replay.

`auto` is `cuda_graph` on CUDA and `eager` elsewhere. On an H200 a captured step trained one
ResNet-8 or ResNet-32 at batch 8 5-6x faster than eager, a stack of 12 2.4-2.7x faster, and
was slower in no case measured; `torch.compile` of the forward was measured too and gained at
most 1.09x, so it is not offered (benchmarks/README.md, `step_modes.py`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from batchlab.metrics import member_losses
from batchlab.stacked.models import StackedModel
from batchlab.stacked.optim import StackedOptimizer

STEP_MODES = ("auto", "eager", "cuda_graph")
# Eager steps before the capture: they allocate the gradients and the optimizer state, and let
# cuBLAS and cuDNN set themselves up, none of which may happen inside a capture.
GRAPH_WARMUP_STEPS = 3

Step = Callable[[Tensor, Tensor, Tensor], Tensor]


def stacked_step(model: StackedModel, optimizer: StackedOptimizer, xb: Tensor, yb: Tensor, lr: Tensor) -> Tensor:
    """One update of every member; returns the (K,) batch losses as a device tensor.

    The members share no parameters, so the gradient of the summed losses is each member's own.
    """
    losses = member_losses(model.forward(xb, train=True), yb)  # logits (K, B, C, *positions)
    optimizer.zero_grad()
    losses.sum().backward()
    optimizer.step(lr)
    return losses.detach()


def resolve_step_mode(mode: str, device: torch.device) -> str:
    """The step mode `mode` means on `device`; a CUDA graph needs a CUDA device."""
    if mode not in STEP_MODES:
        raise ValueError(f"unknown step_mode {mode!r}; choose one of {', '.join(STEP_MODES)}")
    if mode == "auto":
        return "cuda_graph" if device.type == "cuda" else "eager"
    if mode == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"step_mode cuda_graph needs a CUDA device, and this job trains on {device}; "
                         "use auto or eager")
    return mode


def make_step(model: StackedModel, optimizer: StackedOptimizer, mode: str) -> Step:
    """`(xb, yb, lr) -> (K,) losses`: one update of every member of `model`, run the way `mode` says
    (already resolved by `resolve_step_mode`). Make a new one when the stack's members change."""
    if mode == "eager":
        return lambda xb, yb, lr: stacked_step(model, optimizer, xb, yb, lr)
    if mode == "cuda_graph":
        return GraphedStep(model, optimizer)
    raise ValueError(f"step mode {mode!r} is not resolved; see resolve_step_mode")


class GraphedStep:
    """`stacked_step` captured in a CUDA graph after GRAPH_WARMUP_STEPS eager steps, then replayed.

    A capture records kernels without running them, so the step it records is then replayed
    once to make it happen. The learning rates are an input like the batch: the optimizer
    converts them inside the graph (see StackedOptimizer._checked_lr), so a schedule's new LR
    reaches every replay.
    """

    def __init__(self, model: StackedModel, optimizer: StackedOptimizer, warmup: int = GRAPH_WARMUP_STEPS):
        self.model, self.optimizer = model, optimizer
        self.warmup = warmup
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[Tensor, Tensor, Tensor] | None = None
        self.losses: Tensor | None = None

    def __call__(self, xb: Tensor, yb: Tensor, lr: Tensor) -> Tensor:
        if self.graph is None:
            if self.eager_steps < self.warmup:
                self.eager_steps += 1
                return self._eager_on_side_stream(xb, yb, lr)
            self._capture(xb, yb, lr)
        for static, value in zip(self.inputs, (xb, yb, lr)):
            if static.shape != value.shape:
                raise ValueError(f"a captured step takes inputs of shape {tuple(static.shape)}, got {tuple(value.shape)}")
            static.copy_(value)
        self.graph.replay()
        return self.losses.clone()  # the graph overwrites its own output at the next replay

    def _eager_on_side_stream(self, xb: Tensor, yb: Tensor, lr: Tensor) -> Tensor:
        # as torch.cuda.graphs' documentation asks: warm-up work on a stream of its own
        side = torch.cuda.Stream(device=xb.device)
        side.wait_stream(torch.cuda.current_stream(xb.device))
        with torch.cuda.stream(side):
            losses = stacked_step(self.model, self.optimizer, xb, yb, lr)
        torch.cuda.current_stream(xb.device).wait_stream(side)
        side.synchronize()  # three steps only: simpler than recording every tensor's streams
        return losses

    def _capture(self, xb: Tensor, yb: Tensor, lr: Tensor) -> None:
        self.inputs = (xb.clone(), yb.clone(), lr.clone())
        self.graph = torch.cuda.CUDAGraph()
        # The gradients are then allocated inside the capture, from the graph's own memory, as
        # torch.cuda.graphs' documentation does it; a fresh LR tensor makes the optimizer convert
        # it, so that conversion is recorded too.
        self.optimizer.zero_grad()
        with torch.cuda.graph(self.graph):
            self.losses = stacked_step(self.model, self.optimizer, *self.inputs)
