"""CIFAR ResNets (He et al. 2016, section 4.2), with or without (ghost) BatchNorm.

The family Masters & Luschi 2018 train: a 3x3 conv stem with 16 channels, then three
stages of n basic blocks with 16, 32 and 64 channels, where the first block of stages 2
and 3 halves the resolution with stride 2; global average pooling and a linear head.
Counting the stem, the two 3x3 convs of each block and the head gives depth = 6n + 2
(ResNet-8: n = 1, ResNet-20: n = 3, ResNet-32: n = 5).

Choices where the papers leave room, so results can be read correctly:
- Down-sampling shortcuts are 1x1 conv projections with stride 2 (He et al.'s option B,
  followed by normalisation like every conv); He et al.'s CIFAR nets used zero-padded
  identities (option A), so ResNet-20 has 272,474 parameters here instead of 269,722.
- With BatchNorm, convs have no bias (BN's shift replaces it) and BN starts at
  weight 1, bias 0. `bn_batch_size=m` swaps in `GhostBatchNorm2d`, which normalises
  sub-batches of m samples: Masters & Luschi's decoupling of the BN batch from the SGD batch.
- Without BatchNorm (Masters & Luschi's ResNet-8, -20, -32 without BN) there is no
  normalisation at all and convs have biases (initialised to 0).
- Every conv starts with He (Kaiming) normal weights, std sqrt(2 / fan_out) as in
  torchvision's ResNets (fan_out = out_channels * k * k; for the 3x3 convs inside a stage it
  equals fan_in); the linear head keeps PyTorch's default initialisation. This is Masters &
  Luschi's He initialisation, and `residual_init="he"` (the default) keeps it for the nets
  without BN too.
- `residual_init="zero"` (nets without BN only) instead starts the last conv of every residual
  branch at zero (weights and bias), as in Fixup (Zhang et al. 2019) but without Fixup's extra
  scalar biases and multipliers: each block starts as its shortcut, so the signal scale does
  not grow with depth at initialisation. It is not Masters & Luschi's setting (Zhang et al.
  use such a start to train deep nets without normalisation). The registry offers the option
  for the nets without BN only; with BN, which rescales every branch anyway, only "he" is
  accepted.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from batchlab.models import RESIDUAL_INITS

STAGE_CHANNELS = (16, 32, 64)

NormFactory = Callable[[int], nn.Module]


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises sub-batches of `ghost_batch_size` samples.

    Hoffer et al. 2017's "ghost" batch norm, as Masters & Luschi 2018 use it. A training
    batch of B = G * m samples is viewed as (G, m, C, H, W) and each of the G sub-batches is
    normalised with its own mean and biased variance over (m, H, W), then scaled and
    shifted by the shared `weight` and `bias`. The running statistics get one update per
    forward call, with the *mean over the G sub-batches* of each sub-batch's mean and
    unbiased variance (factor n / (n - 1), n = m * H * W) in place of BatchNorm2d's
    whole-batch ones:
        running = (1 - momentum) * running + momentum * mean_g(stat_g),
    or the cumulative average when `momentum` is None. With m = B this is exactly
    BatchNorm2d. In eval mode (with running statistics) it is BatchNorm2d.
    B must be divisible by m in training. Buffers and parameters are BatchNorm2d's, so
    state dicts and `isinstance(_, nn.modules.batchnorm._BatchNorm)` work unchanged.
    """

    def __init__(self, num_features: int, ghost_batch_size: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if int(ghost_batch_size) != ghost_batch_size or ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be a positive integer, got {ghost_batch_size!r}")
        self.ghost_batch_size = int(ghost_batch_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training and self.running_mean is not None:
            return super().forward(x)
        out, mean, unbiased_var = ghost_batch_norm(x, self.weight, self.bias, self.ghost_batch_size, self.eps)
        if self.training and self.running_mean is not None:
            self._update_running_stats(mean, unbiased_var)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        # The same momentum rule as BatchNorm2d, fed with the sub-batch averages.
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


def ghost_batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, m: int,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise each sub-batch of m samples of x (B, C, H, W) with its own statistics, then scale
    and shift; also returns the mean over sub-batches of their means and unbiased variances
    (detached), which feed the running statistics. See GhostBatchNorm2d."""
    b, c, h, w = x.shape
    if b % m != 0:
        raise ValueError(
            f"batch of {b} samples is not divisible by the ghost BatchNorm batch size {m}; "
            f"choose an SGD batch size that is a multiple of bn_batch_size"
        )
    n = m * h * w
    if n < 2:
        raise ValueError(f"ghost BatchNorm needs more than 1 value per channel, got m={m} of {h}x{w}")
    # Statistics in float32 even under autocast, as BatchNorm2d does.
    xg = x.float().reshape(b // m, m, c, h, w)  # (G, m, C, H, W)
    var, mean = torch.var_mean(xg, dim=(1, 3, 4), correction=0)  # (G, C) each
    scale = torch.rsqrt(var + eps)  # (G, C)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    out = xg * scale[:, None, :, None, None] + shift[:, None, :, None, None]
    stats = mean.detach().mean(0), var.detach().mean(0) * (n / (n - 1))
    return out.reshape(b, c, h, w).to(x.dtype), *stats


def norm_factory(batchnorm: bool, bn_batch_size: int | None = None) -> NormFactory:
    """channels -> normalisation layer: BatchNorm2d, GhostBatchNorm2d, or Identity (no BN)."""
    if not batchnorm:
        if bn_batch_size is not None:
            raise ValueError(f"bn_batch_size={bn_batch_size} needs batchnorm=True")
        return lambda channels: nn.Identity()
    if bn_batch_size is None:
        return nn.BatchNorm2d
    return lambda channels: GhostBatchNorm2d(channels, bn_batch_size)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    """relu(branch(x) + shortcut(x)), branch = conv3x3-norm-relu-conv3x3-norm."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: NormFactory, bias: bool) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride, bias)
        self.norm1 = norm(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch, 1, bias)
        self.norm2 = norm(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            # Option B: a strided 1x1 projection where the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=bias), norm(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet with n blocks per stage; see the module docstring."""

    def __init__(self, n: int, num_classes: int, in_channels: int, norm: NormFactory, batchnorm: bool,
                 zero_last_conv: bool = False) -> None:
        super().__init__()
        bias = not batchnorm  # with BN a conv bias is redundant; without BN it is the only offset
        self.stem = nn.Sequential(conv3x3(in_channels, STAGE_CHANNELS[0], 1, bias), norm(STAGE_CHANNELS[0]), nn.ReLU())
        stages, in_ch = [], STAGE_CHANNELS[0]
        for i, out_ch in enumerate(STAGE_CHANNELS):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, norm, bias))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights(zero_last_conv)

    def _init_weights(self, zero_last_conv: bool) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        if zero_last_conv:
            for mod in self.modules():
                if isinstance(mod, BasicBlock):
                    nn.init.zeros_(mod.conv2.weight)
                    if mod.conv2.bias is not None:
                        nn.init.zeros_(mod.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, 64, H/4, W/4)
        return self.fc(x.mean(dim=(2, 3)))  # global average pool -> (B, num_classes)


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    in_channels: int = 3,
    batchnorm: bool = True,
    bn_batch_size: int | None = None,
    residual_init: str = "he",
) -> nn.Module:
    """The CIFAR ResNet of `depth` = 6n + 2; `bn_batch_size` selects ghost BatchNorm.

    `residual_init`: "he" or, for nets without BatchNorm only, "zero" (see the module docstring)."""
    if isinstance(depth, bool) or int(depth) != depth or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 blocks per stage (8, 14, 20, 26, 32, ...), got {depth}"
        )
    if residual_init not in RESIDUAL_INITS:
        raise ValueError(f"residual_init must be one of {', '.join(RESIDUAL_INITS)}, got {residual_init!r}")
    if residual_init == "zero" and batchnorm:
        raise ValueError("residual_init='zero' is for the ResNets without BatchNorm only")
    norm = norm_factory(batchnorm, bn_batch_size)
    return CifarResNet((int(depth) - 2) // 6, num_classes, in_channels, norm, batchnorm,
                       zero_last_conv=residual_init == "zero")
