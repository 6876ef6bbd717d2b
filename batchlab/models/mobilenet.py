"""MobileNetV2 (Sandler et al. 2018) for 32x32 images (`mobilenetv2`), one of the architectures
Golmant et al. 2018 compare on CIFAR-10.

Golmant et al. name MobileNetV2 without saying how they adapted it to CIFAR; this is the
paper's network at width 1.0 with the common CIFAR adaptation (as in
github.com/kuangliu/pytorch-cifar, `models/mobilenetv2.py`): the stem and the second stage
have stride 1 instead of 2, so the total stride is 8 rather than 32 (32x32 -> 4x4 before
the pooling). Layer by layer:
  stem     conv 32 3x3 stride 1 -> BN -> ReLU6
  blocks   inverted residuals (t, c, n, s): (1, 16, 1, 1) (6, 24, 2, 1) (6, 32, 3, 2)
           (6, 64, 4, 2) (6, 96, 3, 1) (6, 160, 3, 2) (6, 320, 1, 1): n blocks of c output
           channels, the first with stride s; a block is [1x1 conv to t * in channels -> BN ->
           ReLU6, left out where t = 1] -> 3x3 depthwise conv (stride s) -> BN -> ReLU6 ->
           1x1 conv to c -> BN (linear bottleneck), plus the input where s = 1 and in = c
  head     conv 1280 1x1 -> BN -> ReLU6 -> global average pooling -> linear to the classes.
The blocks are the paper's (and torchvision's), where the CIFAR adaptation above differs: it
keeps the expansion conv at t = 1, has ReLU instead of ReLU6 and adds 1x1 projection
shortcuts where the channels change. No dropout before the classifier (torchvision has 0.2,
the CIFAR adaptation none). Convs have no bias; PyTorch's BatchNorm constants; plain
BatchNorm only (no ghost batches). Initialisation is torchvision's: convs He-normal with
fan_out, BatchNorm weight 1 and bias 0, the linear layer normal with std 0.01 and bias 0.

Input (B, C, H, W) images with any C and any H, W (global average pooling); output logits
(B, num_classes).
"""

from __future__ import annotations

import torch
from torch import nn

STEM = 32
# (expansion t, output channels c, blocks n, first stride s); the second stage's s is 1 for CIFAR.
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
HEAD = 1280


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
             relu6: bool = True) -> list[nn.Module]:
    """conv (no bias, 'same' padding) -> BN (-> ReLU6)."""
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_ch)]
    return layers + [nn.ReLU6()] if relu6 else layers


class InvertedResidual(nn.Module):
    """(expand 1x1 ->) depthwise 3x3 -> linear 1x1, plus the input where the shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers = _conv_bn(in_ch, hidden, 1) if expansion != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, out_ch, 1, relu6=False)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, STEM, 3))
        blocks, in_ch = [], STEM
        for expansion, out_ch, n, stride in BLOCKS:
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expansion))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(in_ch, HEAD, 1))
        self.classifier = nn.Linear(HEAD, num_classes)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out")
            elif isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.01)
                nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(self.blocks(self.stem(x)))  # (B, 1280, H/8, W/8)
        return self.classifier(h.mean(dim=(2, 3)))
