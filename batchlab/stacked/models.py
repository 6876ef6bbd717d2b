"""K members of one architecture stacked on a leading run dimension, trained in one step.

A `StackedModel` holds K training runs of one model (the same `batchlab.models.build_model`
architecture and batch size; they differ only in LR, seed and LR rule). Every parameter is
one tensor of shape (K, *plain_shape), stored under the same name as in the plain module's
state_dict, so member k's plain state_dict is `{name: t[k] for name, t in ...}`.

Layouts inside the forward:
- inputs are (K, B, *input_shape), member k's batch in x[k]; logits are the plain model's
  with K in front, the class on dim 2: (K, B, C) for classification, (K, B, V, T) for the
  language model, (K, B, C, H, W) for segmentation;
- linear layers are `torch.baddbmm` over (K, B, in) with weights (K, out, in) transposed
  and biases (K, 1, out);
- convolutions (dilated or not) run on activations laid out as (B, K*C, *spatial), member k
  owning the channel block [k*C, (k+1)*C): a grouped convolution with groups=K and weights
  reshaped to (K*C_out, C_in, *kernel) then never mixes members; max-pooling and bilinear
  upsampling of that layout work channel by channel, so they never mix members either;
- BatchNorm runs over those K*C channels (BatchNorm1d after a linear layer: over (B, K*F)),
  so each member gets its own batch statistics;
  its running statistics are stored as (K, C) buffers and handed to `F.batch_norm` as
  flat (K*C,) views, so its in-place updates land in the stacked buffers. Ghost BatchNorm
  splits each member's batch into sub-batches of m samples exactly as
  `batchlab.models.resnet.GhostBatchNorm2d` does;
- on a CPU, from MEMBER_LOOP_MIN_BATCH['cpu'] examples per member on, the conv nets run member
  by member instead: the plain module through torch.func.functional_call on views of member
  k's weights and buffers (K dense convolutions are faster there than one grouped one);
- the bidirectional GRU and the LSTM language model are written out with batched matmuls
  (torch.func.vmap cannot map over nn.GRU / nn.LSTM), looping over time steps but never
  over members; the LSTM's embedding is a lookup in member k's (V, E) table for x[k].

Members share no parameters, so back-propagating the sum of the K members' losses once
gives each member exactly the gradient its plain module would get alone.

Each family's forward is a plain function of (arch, params, buffers, x, train), where
`arch` is a frozen description of static hyper-parameters (strides, BN eps/momentum, ...)
read from the plain modules, so it can be handed to torch.compile or captured in a graph.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from batchlab.models import MODEL_NAMES, RESNETS, build_model, check_bn_batch_size
from batchlab.models.drn import DilatedBlock, DRNSeg
from batchlab.models.keskar import KeskarC1, KeskarF1
from batchlab.models.lstm import LSTMLanguageModel
from batchlab.models.mnist1d import CNN, GRU, MLP
from batchlab.models.resnet import BasicBlock, CifarResNet, ghost_batch_norm

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
# On a CPU, from 128 examples per member on, the conv nets run member by member through
# the plain module, K dense convolutions, rather than as one grouped convolution over K*C
# channels: for the CNN at K = 12 on one thread, a train step is 1.4x faster at batch 128 and
# 2.2x at 512, an evaluation 3x, but at batch 16 the member loop is 3.5x slower. The same holds
# for the other conv families (K = 12, one thread, 32x32 inputs): a train step of keskar_c1 is
# 1.2x faster at batch 128 and 512 (an evaluation 1.4x and 1.2x) but 1.3x slower at 16; of drn
# 1.6x and 1.5x faster (an evaluation 2.2x and 1.9x), at 16 the same. The LSTM stays all at
# once: member by member it is no faster at batch 64 and 1.1-1.4x slower at 20 and 8.
MEMBER_LOOP_MIN_BATCH: dict[str, int | None] = {"cpu": 128, "cuda": None}  # per device type; None: never


# ---------------------------------------------------------------------------------------
# Static architecture descriptions, read once from the plain modules.


@dataclass(frozen=True)
class ConvArch:
    prefix: str  # state_dict prefix: f"{prefix}.weight", f"{prefix}.bias"
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]


@dataclass(frozen=True)
class NormArch:
    """The BatchNorm hyper-parameters every BN layer of a model shares."""

    eps: float
    momentum: float
    ghost_batch_size: int | None  # None: plain BatchNorm2d


@dataclass(frozen=True)
class MLPArch:
    linears: tuple[str, ...]


@dataclass(frozen=True)
class CNNArch:
    convs: tuple[ConvArch, ...]
    head: str


@dataclass(frozen=True)
class GRUArch:
    prefix: str
    directions: tuple[str, ...]  # state_dict suffixes: "" forward, "_reverse" backward
    head: str


@dataclass(frozen=True)
class LSTMArch:
    encoder: str  # nn.Embedding's prefix
    prefix: str  # nn.LSTM's prefix
    layers: int
    decoder: str


@dataclass(frozen=True)
class BlockArch:
    conv1: ConvArch
    norm1: str
    conv2: ConvArch
    norm2: str
    projection: ConvArch | None  # None: identity shortcut
    projection_norm: str


@dataclass(frozen=True)
class ResNetArch:
    stem: ConvArch
    stem_norm: str
    blocks: tuple[BlockArch, ...]
    norm: NormArch | None  # None: no normalisation at all (resnet8)
    head: str


@dataclass(frozen=True)
class ConvBNArch:
    """conv -> BatchNorm -> ReLU."""

    conv: ConvArch
    norm: str


@dataclass(frozen=True)
class DRNArch:
    units: tuple[ConvBNArch | BlockArch, ...]  # layer0 ... layer8 in order
    seg: ConvArch
    norm: NormArch


@dataclass(frozen=True)
class DenseBNArch:
    """Linear -> BatchNorm1d -> ReLU layers, then a linear output layer."""

    hidden: tuple[tuple[str, str], ...]  # (linear prefix, BatchNorm prefix)
    out: str


@dataclass(frozen=True)
class PoolArch:
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class KeskarF1Arch:
    dense: DenseBNArch
    norm: NormArch


@dataclass(frozen=True)
class KeskarC1Arch:
    convs: tuple[ConvBNArch, ...]  # each conv -> BN -> ReLU -> max-pool
    pool: PoolArch
    dense: DenseBNArch
    norm: NormArch


Arch = MLPArch | CNNArch | GRUArch | ResNetArch | LSTMArch | DRNArch | KeskarF1Arch | KeskarC1Arch
# Convolutional families: on a CPU at large batches they run member by member (see
# MEMBER_LOOP_MIN_BATCH).
CONV_ARCHS = (CNNArch, ResNetArch, DRNArch, KeskarC1Arch)


def _conv_arch(prefix: str, conv: nn.Conv1d | nn.Conv2d) -> ConvArch:
    plain = conv.groups == 1 and conv.padding_mode == "zeros"
    if not plain or isinstance(conv.padding, str):
        raise ValueError(f"{prefix}: only ungrouped zero-padded convolutions can be stacked")
    return ConvArch(prefix, tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))


def _norm_arch(module: nn.Module) -> NormArch | None:
    norms = {
        NormArch(mod.eps, mod.momentum, getattr(mod, "ghost_batch_size", None))
        for mod in module.modules()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm)
    }
    if not norms:
        return None
    if len(norms) > 1:
        raise ValueError(f"BatchNorm layers differ in eps, momentum or ghost batch size: {norms}")
    norm = norms.pop()
    if norm.momentum is None:
        # A cumulative average needs each member's own num_batches_tracked as the factor.
        raise ValueError("BatchNorm with momentum=None (cumulative average) is not supported when stacked")
    return norm


def _describe_mlp(module: nn.Module) -> MLPArch:
    _expect_type(module, MLP)
    return MLPArch(tuple(f"net.{i}" for i, layer in enumerate(module.net) if isinstance(layer, nn.Linear)))


def _describe_cnn(module: nn.Module) -> CNNArch:
    _expect_type(module, CNN)
    convs = tuple(
        _conv_arch(f"convs.{i}", layer) for i, layer in enumerate(module.convs) if isinstance(layer, nn.Conv1d)
    )
    return CNNArch(convs, "head")


def _describe_gru(module: nn.Module) -> GRUArch:
    _expect_type(module, GRU)
    gru = module.gru
    if gru.num_layers != 1 or not gru.bias or not gru.batch_first or gru.proj_size:
        raise ValueError("only a one-layer, batch-first GRU with biases can be stacked")
    return GRUArch("gru", ("", "_reverse") if gru.bidirectional else ("",), "head")


def _describe_block(prefix: str, block: BasicBlock | DilatedBlock) -> BlockArch:
    """A ResNet BasicBlock (norm1, norm2) or a DRN DilatedBlock (bn1, bn2): the same computation."""
    projection = None
    if isinstance(block.shortcut, nn.Sequential):
        projection = _conv_arch(f"{prefix}.shortcut.0", block.shortcut[0])
    norms = ("norm1", "norm2") if isinstance(block, BasicBlock) else ("bn1", "bn2")
    return BlockArch(
        conv1=_conv_arch(f"{prefix}.conv1", block.conv1),
        norm1=f"{prefix}.{norms[0]}",
        conv2=_conv_arch(f"{prefix}.conv2", block.conv2),
        norm2=f"{prefix}.{norms[1]}",
        projection=projection,
        projection_norm=f"{prefix}.shortcut.1",
    )


def _describe_resnet(module: nn.Module) -> ResNetArch:
    _expect_type(module, CifarResNet)
    blocks = tuple(
        _describe_block(f"stages.{i}.{j}", block)
        for i, stage in enumerate(module.stages)
        for j, block in enumerate(stage)
    )
    return ResNetArch(_conv_arch("stem.0", module.stem[0]), "stem.1", blocks, _norm_arch(module), "fc")


def _describe_lstm(module: nn.Module) -> LSTMArch:
    _expect_type(module, LSTMLanguageModel)
    lstm = module.lstm
    if not lstm.bias or not lstm.batch_first or lstm.bidirectional or lstm.proj_size or lstm.dropout:
        raise ValueError("only a batch-first, one-directional LSTM with biases and no dropout can be stacked")
    return LSTMArch("encoder", "lstm", lstm.num_layers, "decoder")


def _plain_norm_arch(module: nn.Module) -> NormArch:
    norm = _norm_arch(module)
    if norm is None or norm.ghost_batch_size is not None:
        raise ValueError(f"{type(module).__name__}: expected plain BatchNorm layers")
    return norm


def _conv_bn_arch(prefix: str, seq: nn.Sequential, start: int) -> ConvBNArch:
    """The conv at seq[start], its BatchNorm at seq[start + 1] (a ReLU follows)."""
    if not isinstance(seq[start + 1], nn.modules.batchnorm._BatchNorm) or not isinstance(seq[start + 2], nn.ReLU):
        raise ValueError(f"{prefix}.{start}: expected conv -> BatchNorm -> ReLU")
    return ConvBNArch(_conv_arch(f"{prefix}.{start}", seq[start]), f"{prefix}.{start + 1}")


def _describe_drn(module: nn.Module) -> DRNArch:
    _expect_type(module, DRNSeg)
    units: list[ConvBNArch | BlockArch] = []
    for i, stage in enumerate(module.stages()):
        for j, layer in enumerate(stage):
            if isinstance(layer, DilatedBlock):
                units.append(_describe_block(f"layer{i}.{j}", layer))
            elif isinstance(layer, nn.Conv2d):
                units.append(_conv_bn_arch(f"layer{i}", stage, j))
    return DRNArch(tuple(units), _conv_arch("seg", module.seg), _plain_norm_arch(module))


def _describe_dense(prefix: str, hidden: nn.Sequential, out: str) -> DenseBNArch:
    layers = tuple(
        (f"{prefix}.{i}", f"{prefix}.{i + 1}") for i, layer in enumerate(hidden) if isinstance(layer, nn.Linear)
    )
    if len(hidden) != 3 * len(layers):
        raise ValueError(f"{prefix}: expected Linear -> BatchNorm1d -> ReLU layers")
    return DenseBNArch(layers, out)


def _describe_keskar_f1(module: nn.Module) -> KeskarF1Arch:
    _expect_type(module, KeskarF1)
    return KeskarF1Arch(_describe_dense("hidden", module.hidden, "out"), _plain_norm_arch(module))


def _describe_keskar_c1(module: nn.Module) -> KeskarC1Arch:
    _expect_type(module, KeskarC1)
    features = module.features
    convs = tuple(_conv_bn_arch("features", features, i) for i, m in enumerate(features) if isinstance(m, nn.Conv2d))
    pools = {
        PoolArch(m.kernel_size, m.stride, m.padding)
        for m in features
        if isinstance(m, nn.MaxPool2d) and m.dilation == 1 and not m.ceil_mode
    }
    if len(pools) != 1 or len(features) != 4 * len(convs):
        raise ValueError("features: expected conv -> BatchNorm -> ReLU -> MaxPool2d, all pools alike")
    return KeskarC1Arch(convs, pools.pop(), _describe_dense("hidden", module.hidden, "out"), _plain_norm_arch(module))


def _expect_type(module: nn.Module, cls: type) -> None:
    if type(module) is not cls:
        raise TypeError(f"expected a {cls.__name__} module, got {type(module).__name__}")


# ---------------------------------------------------------------------------------------
# Layers on stacked tensors.


def _linear(h: Tensor, params: dict[str, Tensor], prefix: str) -> Tensor:
    """(K, B, in) -> (K, B, out)."""
    weight, bias = params[f"{prefix}.weight"], params[f"{prefix}.bias"]
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


def _to_channel_blocks(x: Tensor) -> Tensor:
    """(K, B, C, *spatial) -> (B, K*C, *spatial): member k in channels [k*C, (k+1)*C)."""
    return x.transpose(0, 1).flatten(1, 2)


def _from_channel_blocks(h: Tensor, k: int) -> Tensor:
    """(B, K*C, *spatial) -> (K, B, C*prod(spatial)), each member's features in the order
    of the plain model's `h.flatten(1)` of (B, C, *spatial)."""
    return h.reshape(h.shape[0], k, -1).transpose(0, 1)


def _conv(h: Tensor, params: dict[str, Tensor], conv: ConvArch, k: int) -> Tensor:
    """Grouped convolution of (B, K*C_in, *spatial): one group per member."""
    weight = params[f"{conv.prefix}.weight"].flatten(0, 1)  # (K*C_out, C_in, *kernel)
    bias = params.get(f"{conv.prefix}.bias")
    if bias is not None:
        bias = bias.flatten()
    conv_fn = F.conv1d if weight.dim() == 3 else F.conv2d
    return conv_fn(h, weight, bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=k)


def _batch_norm(
    h: Tensor, params: dict[str, Tensor], buffers: dict[str, Tensor], prefix: str, norm: NormArch, train: bool
) -> Tensor:
    """BatchNorm2d (or ghost BatchNorm) of (B, K*C, H, W), or BatchNorm1d of (B, K*C), each member
    with its own statistics."""
    weight, bias = params[f"{prefix}.weight"], params[f"{prefix}.bias"]
    running_mean, running_var = buffers[f"{prefix}.running_mean"], buffers[f"{prefix}.running_var"]
    if train:
        buffers[f"{prefix}.num_batches_tracked"].add_(1)
    if train and norm.ghost_batch_size is not None:
        return _ghost_batch_norm(h, weight, bias, running_mean, running_var, norm)
    # Flat views of the contiguous (K, C) buffers: F.batch_norm's in-place update lands in them.
    return F.batch_norm(
        h, running_mean.view(-1), running_var.view(-1), weight.flatten(), bias.flatten(),
        training=train, momentum=norm.momentum, eps=norm.eps,
    )  # fmt: skip


def _ghost_batch_norm(
    h: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, norm: NormArch
) -> Tensor:
    """GhostBatchNorm2d's training forward over K*C channels: each member's channels keep their
    own statistics; affine parameters and running stats are (K, C), updated through flat views."""
    out, mean, unbiased_var = ghost_batch_norm(h, weight.flatten(), bias.flatten(), norm.ghost_batch_size, norm.eps)
    with torch.no_grad():
        running_mean.view(-1).lerp_(mean.to(running_mean.dtype), norm.momentum)
        running_var.view(-1).lerp_(unbiased_var.to(running_var.dtype), norm.momentum)
    return out


# ---------------------------------------------------------------------------------------
# Family forwards: (arch, params, buffers, x (K, B, *input_shape), train) -> logits (K, B, C, ...).


def mlp_forward(arch: MLPArch, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, train: bool) -> Tensor:
    h = x.flatten(2)
    for i, prefix in enumerate(arch.linears):
        h = _linear(h, params, prefix)
        if i < len(arch.linears) - 1:
            h = F.relu(h)
    return h


def cnn_forward(arch: CNNArch, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, train: bool) -> Tensor:
    k = x.shape[0]
    h = _to_channel_blocks(x.unsqueeze(2))  # (K, B, L) -> (B, K*1, L)
    for conv in arch.convs:
        h = F.relu(_conv(h, params, conv, k))
    return _linear(_from_channel_blocks(h, k), params, arch.head)


def _gru_direction(input_gates: Tensor, w_hh: Tensor, b_hh: Tensor, reverse: bool) -> Tensor:
    """One direction of torch.nn.GRU's recurrence over (K, B, L, 3H) input gates (W_i x + b_i,
    rows ordered r, z, n) -> hidden states (K, B, L, H), h_0 = 0."""
    k, b, length, _ = input_gates.shape
    h = input_gates.new_zeros(k, b, w_hh.shape[-1])
    w_hh_t, b_hh = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
    outputs: list[Tensor] = [h] * length
    for t in reversed(range(length)) if reverse else range(length):
        i_r, i_z, i_n = input_gates[:, :, t].chunk(3, dim=-1)
        h_r, h_z, h_n = torch.baddbmm(b_hh, h, w_hh_t).chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        outputs[t] = h
    return torch.stack(outputs, dim=2)


def gru_forward(arch: GRUArch, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, train: bool) -> Tensor:
    k, b, length = x.shape
    seq = x.reshape(k, b * length, 1)  # input size 1: one value per time step
    directions = []
    for suffix in arch.directions:
        w_ih, b_ih = params[f"{arch.prefix}.weight_ih_l0{suffix}"], params[f"{arch.prefix}.bias_ih_l0{suffix}"]
        # Input gates of all time steps at once; only the hidden path is sequential.
        input_gates = torch.baddbmm(b_ih.unsqueeze(1), seq, w_ih.transpose(1, 2)).reshape(k, b, length, -1)
        w_hh, b_hh = params[f"{arch.prefix}.weight_hh_l0{suffix}"], params[f"{arch.prefix}.bias_hh_l0{suffix}"]
        directions.append(_gru_direction(input_gates, w_hh, b_hh, reverse=suffix == "_reverse"))
    h = torch.cat(directions, dim=-1)  # (K, B, L, dirs*H), as nn.GRU's batch-first output
    return _linear(h.flatten(2), params, arch.head)


def _norm_fn(norm: NormArch | None, params: dict[str, Tensor], buffers: dict[str, Tensor], train: bool
             ) -> Callable[[Tensor, str], Tensor]:
    """(h, prefix) -> BatchNorm of h over K*C channels with that layer's weights; identity without BN."""
    if norm is None:
        return lambda h, prefix: h
    return lambda h, prefix: _batch_norm(h, params, buffers, prefix, norm, train)


def _block(h: Tensor, block: BlockArch, params: dict[str, Tensor], norm: Callable[[Tensor, str], Tensor], k: int
           ) -> Tensor:
    """relu(norm2(conv2(relu(norm1(conv1(h))))) + shortcut(h)) of (B, K*C, H, W)."""
    out = F.relu(norm(_conv(h, params, block.conv1, k), block.norm1))
    out = norm(_conv(out, params, block.conv2, k), block.norm2)
    shortcut = h if block.projection is None else norm(_conv(h, params, block.projection, k), block.projection_norm)
    return F.relu(out + shortcut)


def resnet_forward(
    arch: ResNetArch, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, train: bool
) -> Tensor:
    k = x.shape[0]
    norm = _norm_fn(arch.norm, params, buffers, train)
    h = F.relu(norm(_conv(_to_channel_blocks(x), params, arch.stem, k), arch.stem_norm))
    for block in arch.blocks:
        h = _block(h, block, params, norm, k)
    pooled = h.mean(dim=(2, 3))  # global average pool -> (B, K*C)
    return _linear(_from_channel_blocks(pooled, k), params, arch.head)


def drn_forward(arch: DRNArch, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, train: bool) -> Tensor:
    k, b = x.shape[:2]
    norm = _norm_fn(arch.norm, params, buffers, train)
    h = _to_channel_blocks(x)  # (B, K*C, H, W)
    for unit in arch.units:
        if isinstance(unit, BlockArch):
            h = _block(h, unit, params, norm, k)
        else:
            h = F.relu(norm(_conv(h, params, unit.conv, k), unit.norm))
    # Bilinear upsampling works channel by channel, so on (B, K*classes, h, w) too.
    logits = F.interpolate(_conv(h, params, arch.seg, k), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits.view(b, k, -1, *x.shape[-2:]).transpose(0, 1)  # (K, B, classes, H, W)


def _dense_bn(h: Tensor, dense: DenseBNArch, params: dict[str, Tensor], buffers: dict[str, Tensor], norm: NormArch,
              train: bool) -> Tensor:
    """Linear -> BatchNorm1d -> ReLU layers, then the output layer, over (K, B, F)."""
    k, b = h.shape[:2]
    for linear, bn in dense.hidden:
        h = _linear(h, params, linear)  # (K, B, F)
        # BatchNorm1d over (B, K*F): member k's features are channels [k*F, (k+1)*F).
        flat = _batch_norm(h.transpose(0, 1).reshape(b, -1), params, buffers, bn, norm, train)
        h = F.relu(flat.view(b, k, -1).transpose(0, 1))
    return _linear(h, params, dense.out)


def keskar_f1_forward(
    arch: KeskarF1Arch, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, train: bool
) -> Tensor:
    return _dense_bn(x.flatten(2), arch.dense, params, buffers, arch.norm, train)


def keskar_c1_forward(
    arch: KeskarC1Arch, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, train: bool
) -> Tensor:
    k = x.shape[0]
    norm = _norm_fn(arch.norm, params, buffers, train)
    h = _to_channel_blocks(x)  # (B, K*C, H, W)
    for unit in arch.convs:
        h = F.relu(norm(_conv(h, params, unit.conv, k), unit.norm))
        h = F.max_pool2d(h, arch.pool.kernel, arch.pool.stride, arch.pool.padding)  # channel by channel
    return _dense_bn(_from_channel_blocks(h, k), arch.dense, params, buffers, arch.norm, train)


def _lstm_layer(input_gates: Tensor, w_hh: Tensor) -> Tensor:
    """torch.nn.LSTM's recurrence over (K, B, T, 4H) input gates (W_ih x + b_ih + b_hh, rows
    ordered i, f, g, o) -> hidden states (K, B, T, H), h_0 = c_0 = 0."""
    k, b, length, _ = input_gates.shape
    hidden = w_hh.shape[-1]
    h = c = input_gates.new_zeros(k, b, hidden)
    w_hh_t = w_hh.transpose(1, 2)
    outputs: list[Tensor] = []
    # unbind, not input_gates[:, :, t]: each slice's backward would fill a zero tensor of the whole
    # (K, B, T, 4H), quadratic in T; unbind's backward stacks the T gradients once.
    for step_gates in input_gates.unbind(2):
        gates = torch.baddbmm(step_gates, h, w_hh_t)  # (K, B, 4H)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=2)


def lstm_forward(arch: LSTMArch, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, train: bool
                 ) -> Tensor:
    k, b, length = x.shape
    table = params[f"{arch.encoder}.weight"]  # (K, V, E)
    # Member k looks its tokens x[k] up in its own table (an index out of range raises, as in nn.Embedding).
    h = table[torch.arange(k, device=x.device).view(k, 1, 1), x]  # (K, B, T, E)
    for layer in range(arch.layers):
        w_ih, b_ih = params[f"{arch.prefix}.weight_ih_l{layer}"], params[f"{arch.prefix}.bias_ih_l{layer}"]
        w_hh, b_hh = params[f"{arch.prefix}.weight_hh_l{layer}"], params[f"{arch.prefix}.bias_hh_l{layer}"]
        # Input gates of all time steps at once, with both biases; only the hidden path is sequential.
        bias = (b_ih + b_hh).unsqueeze(1)
        input_gates = torch.baddbmm(bias, h.reshape(k, b * length, -1), w_ih.transpose(1, 2))
        h = _lstm_layer(input_gates.view(k, b, length, -1), w_hh)
    logits = _linear(h.reshape(k, b * length, -1), params, arch.decoder)  # (K, B*T, V)
    return logits.view(k, b, length, -1).transpose(2, 3)  # (K, B, V, T), as the plain model's (B, V, T)


class Family(NamedTuple):
    describe: Callable[[nn.Module], Arch]
    forward: Callable[[Arch, dict[str, Tensor], dict[str, Tensor], Tensor, bool], Tensor]


FAMILIES: dict[str, Family] = {
    "mlp": Family(_describe_mlp, mlp_forward),
    "cnn": Family(_describe_cnn, cnn_forward),
    "gru": Family(_describe_gru, gru_forward),
    **{name: Family(_describe_resnet, resnet_forward) for name in RESNETS},
    "keskar_f1": Family(_describe_keskar_f1, keskar_f1_forward),
    "keskar_c1": Family(_describe_keskar_c1, keskar_c1_forward),
    "drn": Family(_describe_drn, drn_forward),
    "lstm_lm": Family(_describe_lstm, lstm_forward),
}
assert set(FAMILIES) == set(MODEL_NAMES), "every registered model needs a stacked family"


# ---------------------------------------------------------------------------------------
# The stacked model.


class StackedModel:
    """K members of one architecture (see batchlab.models.build_model), stacked on a leading run dimension.

    params: plain state_dict name -> (K, *shape) leaf tensors with requires_grad=True.
    buffers: BN buffers: running_mean/running_var -> (K, C), num_batches_tracked -> (K,);
        empty for models without BatchNorm.
    """

    def __init__(
        self, name: str, arch: Arch, params: dict[str, Tensor], buffers: dict[str, Tensor], state_keys: tuple[str, ...],
        plain: nn.Module,
    ) -> None:
        self.name = name
        self.arch = arch
        self.params = params
        self.buffers = buffers
        self.state_keys = state_keys  # the plain state_dict's key order
        self.k = next(iter(params.values())).shape[0]
        self._plain = plain  # one plain module of this architecture, for `_forward_member_by_member`

    def __repr__(self) -> str:
        return f"StackedModel({self.name!r}, k={self.k})"

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def forward(self, x: Tensor, train: bool) -> Tensor:
        """x: (K, B, *input_shape), member k's batch in x[k] -> logits, the plain model's with K in
        front: (K, B, C), (K, B, V, T) for the language model, (K, B, C, H, W) for segmentation.

        train=True: BN uses batch (or ghost-batch) statistics and updates its running
        statistics in place exactly as the plain module in train mode would; train=False:
        running statistics (eval mode).
        """
        if x.shape[0] != self.k:
            raise ValueError(f"input has {x.shape[0]} members on its leading dimension, the model {self.k}")
        if self.runs_member_by_member(x.shape[1], x.device):
            return self._forward_member_by_member(x, train)
        return FAMILIES[self.name].forward(self.arch, self.params, self.buffers, x, train)

    def _forward_member_by_member(self, x: Tensor, train: bool) -> Tensor:
        """The plain module once per member, on views of that member's weights and buffers (BN's
        in-place running-statistics updates land in the stacked buffers)."""
        self._plain.train(train)
        return torch.stack([
            functional_call(self._plain, {**{key: p[k] for key, p in self.params.items()},
                                          **{key: b[k] for key, b in self.buffers.items()}}, (x[k],))
            for k in range(self.k)
        ])

    __call__ = forward

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member k as a plain model's state_dict (detached clones)."""
        self._check_member(k)
        stacked = {**self.params, **self.buffers}
        return {key: stacked[key][k].detach().clone() for key in self.state_keys}

    def runs_member_by_member(self, batch_size: int, device: torch.device) -> bool:
        """Whether `forward` runs the members one by one at this many examples per member (see
        MEMBER_LOOP_MIN_BATCH), rather than all at once."""
        least = MEMBER_LOOP_MIN_BATCH.get(device.type)
        return isinstance(self.arch, CONV_ARCHS) and least is not None and batch_size >= least

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
        return self._rebuild(lambda t: t.index_select(0, index))

    def to(self, device_or_dtype: torch.device | str | torch.dtype) -> StackedModel:
        """A new StackedModel on that device, or with floating-point tensors of that dtype
        (num_batches_tracked stays int64, as nn.Module.to leaves it)."""
        if isinstance(device_or_dtype, torch.dtype):
            dtype = device_or_dtype
            if not dtype.is_floating_point:
                raise ValueError(f"StackedModel.to takes a floating-point dtype, got {dtype}")
            return self._rebuild(lambda t: t.to(dtype) if t.is_floating_point() else t, copy.deepcopy(self._plain).to(dtype))
        return self._rebuild(lambda t: t.to(device_or_dtype), copy.deepcopy(self._plain).to(device_or_dtype))

    def _rebuild(self, convert: Callable[[Tensor], Tensor], plain: nn.Module | None = None) -> StackedModel:
        with torch.no_grad():
            params = {key: convert(p.detach()).requires_grad_(True) for key, p in self.params.items()}
            buffers = {key: convert(b) for key, b in self.buffers.items()}
        plain = copy.deepcopy(self._plain) if plain is None else plain
        return StackedModel(self.name, self.arch, params, buffers, self.state_keys, plain)

    def _check_member(self, k: int) -> None:
        if not 0 <= k < self.k:
            raise IndexError(f"member {k} out of range for a stack of {self.k}")


def stack_modules(name: str, modules: list[nn.Module], bn_batch_size: int | None = None) -> StackedModel:
    """Stack K plain modules of build_model(name, ...) (their current weights and buffers).

    `bn_batch_size` means what it means for build_model; it must match the modules.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if not modules:
        raise ValueError("stack_modules needs at least one module")
    describe = FAMILIES[name].describe
    arch = describe(modules[0])
    _check_fits_name(name, arch, bn_batch_size)
    first = modules[0].state_dict()
    for i, module in enumerate(modules[1:], start=1):
        if describe(module) != arch or _signature(module.state_dict()) != _signature(first):
            raise ValueError(f"module {i} differs in architecture from module 0")
    states = [module.state_dict() for module in modules]
    param_keys = [key for key, _ in modules[0].named_parameters()]
    buffer_keys = [key for key, _ in modules[0].named_buffers()]
    with torch.no_grad():
        params = {key: torch.stack([state[key] for state in states]).requires_grad_(True) for key in param_keys}
        buffers = {key: torch.stack([state[key] for state in states]) for key in buffer_keys}
    return StackedModel(name, arch, params, buffers, tuple(first), copy.deepcopy(modules[0]))


def _check_fits_name(name: str, arch: Arch, bn_batch_size: int | None) -> None:
    check_bn_batch_size(name, bn_batch_size)
    if not isinstance(arch, ResNetArch):
        return
    depth, batchnorm = RESNETS[name]
    if 2 * len(arch.blocks) + 2 != depth or (arch.norm is not None) != batchnorm:
        raise ValueError(f"modules are not {name}: {len(arch.blocks)} blocks, BatchNorm: {arch.norm is not None}")
    ghost = arch.norm.ghost_batch_size if arch.norm is not None else None
    if ghost != bn_batch_size:
        raise ValueError(f"modules have ghost BatchNorm batch size {ghost}, bn_batch_size={bn_batch_size} given")


def _signature(state_dict: dict[str, Tensor]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(key, tuple(t.shape), t.dtype) for key, t in state_dict.items()]


def build_stacked_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    seeds: list[int],
    bn_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> StackedModel:
    """Member k is exactly the model the single-run trainer builds for seed k:
    torch.manual_seed(seeds[k]); build_model(...). Seeds the global RNG as that trainer does."""
    modules = []
    for seed in seeds:
        torch.manual_seed(seed)
        modules.append(build_model(name, input_shape, num_classes, bn_batch_size))
    stacked = stack_modules(name, modules, bn_batch_size).to(device)
    return stacked.to(dtype) if dtype is not None else stacked
