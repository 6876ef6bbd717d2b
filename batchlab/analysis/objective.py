"""A model's training loss on fixed data, as a function of one flat parameter vector.

Every analysis (epsilon-sharpness, Hessian spectrum, noise scale) sees the network through
this one object: `loss(w)`, `loss_and_grad(w)` and `hvp(w, v)` for a flat float tensor w,
computed with `torch.func.functional_call`, so the model's own weights are never changed.

The loss is the mean cross-entropy over all of (x, y), per target: per-chunk sums divided
by the number of targets, so chunking (for memory) does not change the value. A target is
an example's label, or one position of a dense target (a token of a language model, a
pixel of a segmentation; IGNORE_INDEX positions do not count), as in training.

BatchNorm has to be pinned down for the loss to be a function of the weights alone:
- `bn_mode="eval"` (default): running statistics, as at test time;
- `bn_mode="batch"`: statistics of each chunk (training-mode BN) with the running buffers
  left untouched.
Models without BatchNorm give the same loss in both modes.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jvp

from batchlab.data import IGNORE_INDEX
from batchlab.metrics import cross_entropy

BN_MODES = ("eval", "batch")


class Objective(Protocol):
    """What the analyses need: a point, the loss there, its gradient and Hessian-vector products."""

    def params(self) -> torch.Tensor: ...

    def loss(self, w: torch.Tensor) -> float: ...

    def loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]: ...

    def hvp(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class ModelObjective:
    """Mean cross-entropy of `model` on (x, y) as a function of its flattened parameters."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bn_mode: str = "eval", chunk_size: int = 4096):
        if bn_mode not in BN_MODES:
            raise ValueError(f"unknown bn_mode {bn_mode!r}; choose one of {', '.join(BN_MODES)}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need as many labels as inputs, and at least one: got {len(x)} and {len(y)}")
        self.model, self.x, self.y = model, x, y
        self.n_targets = int((y != IGNORE_INDEX).sum())  # the loss's divisor: examples, tokens or labelled pixels
        if self.n_targets == 0:
            raise ValueError("every target is IGNORE_INDEX: the loss is not defined")
        self.bn_mode, self.chunk_size = bn_mode, chunk_size
        model.train(bn_mode == "batch")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self._w0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self._buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        # cuDNN's recurrent kernels have no double backward (Hessian-vector products); torch's own have
        self._cudnn = not any(isinstance(m, nn.RNNBase) for m in model.modules())

    @property
    def n(self) -> int:
        return len(self.x)

    def params(self) -> torch.Tensor:
        """The model's own weights, flattened (a copy)."""
        return self._w0.clone()

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, w.split(self.sizes), self.shapes)}

    def _chunks(self):
        for i in range(0, self.n, self.chunk_size):
            yield self.x[i : i + self.chunk_size], self.y[i : i + self.chunk_size]

    def _sum_loss(self, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        # batch mode: BN updates running stats in place, so hand it copies
        buffers = {k: v.clone() for k, v in self._buffers.items()} if self.bn_mode == "batch" else self._buffers
        with torch.backends.cudnn.flags(enabled=self._cudnn and torch.backends.cudnn.enabled):
            logits = functional_call(self.model, (self.unflatten(w), buffers), (xb,))
        return cross_entropy(logits, yb, reduction="sum")

    @torch.no_grad()
    def loss(self, w: torch.Tensor) -> float:
        return sum(self._sum_loss(w, xb, yb).item() for xb, yb in self._chunks()) / self.n_targets

    def loss_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        total, g = 0.0, torch.zeros_like(w)
        for xb, yb in self._chunks():
            gb, lb = grad_and_value(self._sum_loss)(w, xb, yb)
            total += lb.item()
            g += gb
        return total / self.n_targets, g / self.n_targets

    def hvp(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H(w) v by forward-over-reverse differentiation, without forming H."""
        out = torch.zeros_like(w)
        for xb, yb in self._chunks():
            out += jvp(lambda p: grad(self._sum_loss)(p, xb, yb), (w,), (v,))[1]
        return out / self.n_targets

    def hvp_at(self, w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """v -> H(w) v for many v at one point, building the gradient's graph once.

        Reverse-over-reverse with a retained graph (as PyHessian does): each product then
        costs one backward pass instead of a forward, a backward and a forward-mode pass,
        which makes Lanczos and Hutchinson 2-3x faster than repeated `hvp` calls. The
        graph of every chunk is kept, so memory grows with the data size.
        """
        w = w.detach().requires_grad_(True)
        g = torch.zeros_like(w)
        for xb, yb in self._chunks():
            g = g + torch.autograd.grad(self._sum_loss(w, xb, yb), w, create_graph=True)[0]
        g = g / self.n_targets

        def apply(v: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(g, w, v, retain_graph=True)[0].detach()

        return apply


def hvp_operator(obj: Objective, w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> H(w) v: the objective's graph-reusing operator where it has one, else repeated `hvp`."""
    if hasattr(obj, "hvp_at"):
        return obj.hvp_at(w)
    return lambda v: obj.hvp(w, v)
