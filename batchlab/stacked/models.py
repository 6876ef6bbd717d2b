"""K members of one architecture stacked on a leading run dimension, trained in one step.

A `StackedModel` holds K training runs of one model (the same architecture and batch size; they
differ only in LR, seed and LR rule). Every parameter is one tensor of shape (K, *plain_shape),
stored under the same name as in the plain module's state_dict, so member k's plain state_dict is
`{name: t[k] for name, t in ...}`.

There is one definition of each model, the plain module. Its stacked form is a copy of it whose
leaves (the modules holding parameters or buffers: nn.Linear, nn.Conv2d, BatchNorm, nn.Embedding,
nn.LSTM, ...) are swapped for stacked ones (batchlab.stacked.layers, whose docstring tables them), so the
model's own `forward` runs on activations that carry all K members' examples in the batch
dimension, N = K*B rows:
- interleaved, row b*K + k for member k's example b, when the model has a convolution or
  BatchNorm: (N, C, ...) is then (B, K*C, ...) without a copy, one grouped convolution over
  K*groups groups, or BatchNorm over K*C channels with each member's own batch statistics
  (running statistics updated in place through flat views of the (K, C) buffers; ghost
  BatchNorm exactly as GhostBatchNorm2d);
- member-major, row k*B + b, otherwise: (N, ...) is then (K, B, ...) without a copy, the
  layout of the batched matmuls of nn.Linear, nn.Embedding and the recurrent nets, which the
  interleaved one would make copy every activation in and out (a train step at K = 12 on one
  thread, interleaved -> member-major: lstm_lm, vocabulary 5000, batch 20: 1616 -> 1171 ms; gru,
  batch 32: 17.3 -> 14.6 ms; mlp, batch 128: 2.73 -> 2.68 ms).
Inputs are (K, B, *input_shape), member k's batch in x[k], converted to N rows once; logits are
the plain model's with K in front, the class on dim 2: (K, B, C) for classification, (K, B, V, T)
for the language model, (K, B, C, H, W) for segmentation.

The one rule a model must follow to be stacked: its forward never mixes the examples of a batch
except through BatchNorm, and never reads a leaf's weights itself (it calls the leaf). Pooling,
upsampling, residual adds, activations, flatten(1), view(B, -1) all keep examples apart. A model
with a leaf that has no stacked version (nn.LayerNorm, a module with a raw nn.Parameter, ...) is
stacked anyway, with a warning naming the leaf, and always runs member by member.

Member by member: the plain module through torch.func.functional_call on views of member k's
weights and buffers, input x[k] (BN's in-place running-statistics updates and SeededDropout's
counts of calls land in the stacked buffers). On a CPU a conv net (a model with a convolution
leaf) runs so from MEMBER_LOOP_MIN_BATCH['cpu'] examples per member on, K dense convolutions
being faster there than one grouped one: for the CNN at K = 12 on one
thread a train step is 1.4x faster at batch 128 and 2.2x at 512, an evaluation 3x, but at batch
16 the member loop is 3.5x slower; a train step of keskar_c1 (32x32 inputs) is 1.2x faster at
batch 128 and 512 (an evaluation 1.4x and 1.2x) but 1.3x slower at 16; of drn 1.6x and 1.5x
faster (an evaluation 2.2x and 1.9x), at 16 the same. The recurrent leaves choose for
themselves (batchlab.stacked.layers.RECURRENT_MEMBER_LOOP).

Members share no parameters, so back-propagating the sum of the K members' losses once gives
each member exactly the gradient its plain module would get alone.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Mapping
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from batchlab.models import MODEL_INPUTS, build_model, check_bn_batch_size, check_model_options
from batchlab.models.resnet import GhostBatchNorm2d
from batchlab.stacked.layers import CHANNEL_LEAVES, Members, StackedConv, has_leaf, swap_leaves, unstackable_leaves

log = logging.getLogger(__name__)

# Per device type, the examples per member from which a conv net runs member by member; None: never.
MEMBER_LOOP_MIN_BATCH: dict[str, int | None] = {"cpu": 128, "cuda": None}
# An input of each kind of data, to build a named model's reference module tree.
_PROBE_SHAPES = {"signal": (40,), "image": (3, 8, 8), "segmentation": (3, 16, 16), "tokens": (6,)}


class StackedModel:
    """K members of one architecture, stacked on a leading run dimension.

    params: plain state_dict name -> (K, *shape) leaf tensors with requires_grad=True, the very
        tensors the stacked module computes with (an optimizer updates them in place).
    buffers: name -> (K, ...) buffers (BN's running statistics and counters, SeededDropout's
        (seed, calls) streams); empty without any.
    """

    def __init__(self, name: str, plain: nn.Module, stacked: dict[str, Tensor], state_keys: tuple[str, ...]) -> None:
        self.name = name
        self.state_keys = state_keys  # the plain state_dict's key order
        self.k = next(iter(stacked.values())).shape[0]
        self._plain = plain  # one plain module of this architecture, for `_forward_member_by_member`
        self._is_conv = has_leaf(plain, (StackedConv,))
        self._members = Members(self.k, interleaved=has_leaf(plain, CHANNEL_LEAVES))
        param_keys = [key for key, _ in plain.named_parameters()]
        buffer_keys = [key for key, _ in plain.named_buffers()]
        self._module: nn.Module | None = None  # None: runs member by member only
        if unstackable_leaves(plain):
            self.params = {key: stacked[key].requires_grad_(True) for key in param_keys}
            self.buffers = {key: stacked[key] for key in buffer_keys}
        else:
            self._module = swap_leaves(plain, stacked, self._members)
            self.params = dict(self._module.named_parameters())
            self.buffers = dict(self._module.named_buffers())
        self._training: tuple[int, bool] | None = None  # (module, mode) last set

    def __repr__(self) -> str:
        return f"StackedModel({self.name!r}, k={self.k})"

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def forward(self, x: Tensor, train: bool) -> Tensor:
        """x: (K, B, *input_shape), member k's batch in x[k] -> logits, the plain model's with K in
        front: (K, B, C), (K, B, V, T) for the language model, (K, B, C, H, W) for segmentation.

        train=True: BN uses batch (or ghost-batch) statistics and updates its running
        statistics in place exactly as the plain module in train mode would, and dropout draws
        each member's masks from its stream; train=False: running statistics and no dropout
        (eval mode).
        """
        if x.shape[0] != self.k:
            raise ValueError(f"input has {x.shape[0]} members on its leading dimension, the model {self.k}")
        if self.runs_member_by_member(x.shape[1], x.device):
            return self._forward_member_by_member(x, train)
        self._set_training(self._module, train)
        return self._members.split(self._module(self._members.merge(x)))

    def _forward_member_by_member(self, x: Tensor, train: bool) -> Tensor:
        """The plain module once per member, on views of that member's weights and buffers (BN's
        in-place running-statistics updates and dropout's counts land in the stacked buffers)."""
        self._set_training(self._plain, train)
        return torch.stack([
            functional_call(self._plain, {**{key: p[k] for key, p in self.params.items()},
                                          **{key: b[k] for key, b in self.buffers.items()}}, (x[k],))
            for k in range(self.k)
        ])

    def _set_training(self, module: nn.Module, train: bool) -> None:
        # module.train walks every submodule: only when the mode changes.
        if self._training != (id(module), train):
            module.train(train)
            self._training = (id(module), train)

    __call__ = forward

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member k as a plain model's state_dict (detached clones)."""
        self._check_member(k)
        stacked = {**self.params, **self.buffers}
        return {key: stacked[key][k].detach().clone() for key in self.state_keys}

    def runs_member_by_member(self, batch_size: int, device: torch.device) -> bool:
        """Whether `forward` runs the members one by one at this many examples per member (see
        MEMBER_LOOP_MIN_BATCH), rather than all at once; always for a model that cannot be stacked."""
        least = MEMBER_LOOP_MIN_BATCH.get(device.type)
        return self._module is None or (self._is_conv and least is not None and batch_size >= least)

    @torch.no_grad()
    def load_member(self, k: int, state_dict: dict[str, Tensor]) -> None:
        """Write a plain model's state_dict into member k."""
        self._check_member(k)
        if set(state_dict) != set(self.state_keys):
            missing, unexpected = set(self.state_keys) - set(state_dict), set(state_dict) - set(self.state_keys)
            raise KeyError(
                f"state_dict does not fit {self.name}: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        for key, value in state_dict.items():
            target = self.params[key] if key in self.params else self.buffers[key]
            if value.shape != target.shape[1:]:
                raise ValueError(f"{key}: shape {tuple(value.shape)} where {tuple(target.shape[1:])} is stored")
            target[k].copy_(value)

    def select(self, keep: list[int]) -> StackedModel:
        """A new StackedModel of the members `keep`, in that order (fresh leaf tensors, buffers copied)."""
        if not keep:
            raise ValueError("select needs at least one member")
        for k in keep:
            self._check_member(k)
        index = torch.tensor(keep, device=next(iter(self.params.values())).device)
        return self._rebuild(lambda t: t.index_select(0, index), copy.deepcopy(self._plain))

    def to(self, device_or_dtype: torch.device | str | torch.dtype) -> StackedModel:
        """A new StackedModel on that device, or with floating-point tensors of that dtype
        (integer buffers, BN's num_batches_tracked and dropout's streams, stay int64, as nn.Module.to leaves them)."""
        if isinstance(device_or_dtype, torch.dtype):
            dtype = device_or_dtype
            if not dtype.is_floating_point:
                raise ValueError(f"StackedModel.to takes a floating-point dtype, got {dtype}")
            return self._rebuild(lambda t: t.to(dtype) if t.is_floating_point() else t, copy.deepcopy(self._plain).to(dtype))
        return self._rebuild(lambda t: t.to(device_or_dtype), copy.deepcopy(self._plain).to(device_or_dtype))

    def _rebuild(self, convert: Callable[[Tensor], Tensor], plain: nn.Module) -> StackedModel:
        with torch.no_grad():
            stacked = {key: convert(t.detach()) for key, t in {**self.params, **self.buffers}.items()}
        return StackedModel(self.name, plain, stacked, self.state_keys)

    def _check_member(self, k: int) -> None:
        if not 0 <= k < self.k:
            raise IndexError(f"member {k} out of range for a stack of {self.k}")


def stack_modules(name: str, modules: list[nn.Module], bn_batch_size: int | None = None,
                  options: Mapping[str, object] | None = None) -> StackedModel:
    """Stack K plain modules of one architecture (their current weights and buffers).

    `name` names the model in messages; where it is one of batchlab.models' models, the modules
    must be build_model(name, ..., bn_batch_size, **options)'s and `bn_batch_size` and `options`
    must mean what they mean there. Ghost BatchNorm layers must have `bn_batch_size` as their
    batch size.
    """
    if not modules:
        raise ValueError("stack_modules needs at least one module")
    options = dict(options or {})
    if name in MODEL_INPUTS:
        check_bn_batch_size(name, bn_batch_size)
        check_model_options(name, options)
    _check_ghost_batch_size(modules[0], bn_batch_size)
    if name in MODEL_INPUTS:
        _check_is_named_model(name, modules[0], bn_batch_size, options)
    return _stack_built_modules(name, modules, bn_batch_size)


def _stack_built_modules(name: str, modules: list[nn.Module], bn_batch_size: int | None) -> StackedModel:
    """stack_modules past its checks that the modules are build_model(name, ..., bn_batch_size)'s."""
    first = modules[0]
    for i, module in enumerate(modules[1:], start=1):
        if _module_types(module) != _module_types(first) or _signature(module) != _signature(first):
            raise ValueError(f"module {i} differs in architecture from module 0")
    for leaf in unstackable_leaves(first):
        log.warning("%s: %s cannot be stacked, so the %d members run one by one", name, leaf, len(modules))
    for path, mod in first.named_modules():
        if isinstance(mod, nn.modules.dropout._DropoutNd):
            log.warning("%s: %s (%s) draws every member's masks from torch's global generator, so members are "
                        "not independent runs; batchlab.models.dropout.SeededDropout has a stream per member",
                        name, path, type(mod).__name__)
    if not any(True for _ in first.parameters()):
        raise ValueError(f"{name} has no parameters to train")
    with torch.no_grad():
        named = [{**dict(m.named_parameters()), **dict(m.named_buffers())} for m in modules]
        stacked = {key: torch.stack([tensors[key].detach() for tensors in named]) for key in named[0]}
    return StackedModel(name, copy.deepcopy(first), stacked, tuple(first.state_dict()))


def _check_ghost_batch_size(module: nn.Module, bn_batch_size: int | None) -> None:
    sizes = {m.ghost_batch_size for m in module.modules() if isinstance(m, GhostBatchNorm2d)} or {None}
    if sizes != {bn_batch_size}:
        shown = ", ".join(str(size) for size in sorted(sizes, key=str))
        raise ValueError(f"modules have ghost BatchNorm batch size {shown}, bn_batch_size={bn_batch_size} given")


def _check_is_named_model(name: str, module: nn.Module, bn_batch_size: int | None, options: dict[str, object]) -> None:
    """The module tree (paths and types) must be build_model(name, ..., bn_batch_size, **options)'s."""
    ours, theirs = _module_types(module), _reference_types(name, bn_batch_size, tuple(sorted(options.items())))
    if ours[""] != theirs[""]:
        raise TypeError(f"expected a {theirs['']} module, got {ours['']}")
    if ours != theirs:
        path = next((p for p in {**ours, **theirs} if ours.get(p) != theirs.get(p)), "")
        given = "".join(f", {key}={value!r}" for key, value in options.items())
        raise ValueError(f"modules are not {name} with bn_batch_size={bn_batch_size}{given}: {path} is "
                         f"{ours.get(path, 'missing')}, {theirs.get(path, 'missing')} expected")


@functools.cache
def _reference_types(name: str, bn_batch_size: int | None, options: tuple[tuple[str, object], ...]) -> dict[str, str]:
    with torch.device("meta"):  # no weights, and the global RNG untouched
        return _module_types(build_model(name, _PROBE_SHAPES[MODEL_INPUTS[name]], 10, bn_batch_size, **dict(options)))


def _module_types(module: nn.Module) -> dict[str, str]:
    return {path: type(m).__name__ for path, m in module.named_modules()}


def _signature(module: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(key, tuple(t.shape), t.dtype) for key, t in module.state_dict().items()]


def build_stacked_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    seeds: list[int],
    bn_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    options: Mapping[str, object] | None = None,
) -> StackedModel:
    """Member k is exactly the model the single-run trainer builds for seed k:
    torch.manual_seed(seeds[k]); build_model(..., **options). Seeds the global RNG as that trainer does
    (so the seeds of a model's SeededDropout streams, drawn from it, are member k's own)."""
    options = dict(options or {})
    modules = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model(name, input_shape, num_classes, bn_batch_size, **options)
        modules.append(model.to(device=device, dtype=dtype))
    # build_model's own modules: stack_modules' check that they are would build a reference model on
    # the meta device, whose initialisers import torch._dynamo (2 s of every training job's start)
    return _stack_built_modules(name, modules, bn_batch_size)
