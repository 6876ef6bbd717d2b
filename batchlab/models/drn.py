"""A small dilated residual network for semantic segmentation, in DRN-D's style.

Golmant et al. 2018 train DRN-D-22 (Yu, Koltun & Funkhouser 2017, "Dilated Residual
Networks") on Cityscapes. This is the same architecture, layer for layer as in the authors'
code (github.com/fyu/drn, `drn.py`: `DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], arch='D')`
with the `DRNSeg` head of `segment.py`), with narrower layers so that it trains on a CPU
at 32x32 to 64x64:

  layer0   7x7 conv, stride 1 (a stem without max-pool)            16 channels (DRN-D-22: 16)
  layer1   3x3 conv                                                16          (16)
  layer2   3x3 conv, stride 2                                      32          (32)
  layer3   2 residual blocks, the first with stride 2              32          (64)
  layer4   2 residual blocks, the first with stride 2              64          (128)
  layer5   2 residual blocks, dilation 2 instead of a stride       64          (256)
  layer6   2 residual blocks, dilation 4 instead of a stride       64          (512)
  layer7   3x3 conv, dilation 2, no residual (degridding)          64          (512)
  layer8   3x3 conv, dilation 1, no residual (degridding)          64          (512)
  seg      1x1 conv to the classes (with bias), then bilinear upsampling x8 to the input size

Every conv is followed by BatchNorm and ReLU (in a block: conv-BN-ReLU-conv-BN, plus the
shortcut, then ReLU); convs other than `seg` have no bias. The output stride is 8 as in
DRN-D. Only the widths are scaled: by 1 up to layer2, 1/2 in layers 3-4, 1/4 in layer 5
and 1/8 from layer 6 on; the depth (22 layers) and strides and dilations are DRN-D-22's.
This gives 0.55 M parameters for 21 classes where DRN-D-22 with the same head has 15.9 M
(`DRNSeg(21, channels=DRN_D_22_CHANNELS)`; see `batchlab.models.parameter_count`).

Choices, so that results can be read correctly:
- A block's shortcut is DRN's: identity, or a strided 1x1 conv + BN where the shape changes.
  Within layer5 and layer6 every conv has that layer's dilation (DRN's `new_level=False`).
- The final upsampling is `F.interpolate(mode="bilinear", align_corners=False)` to the
  input's size. DRNSeg uses a fixed (untrained) bilinear ConvTranspose2d of stride 8, which
  is the same interpolation away from the borders.
- Initialisation is DRN's: convs He-normal with fan_out (normal with std sqrt(2 / (k*k*out))),
  `seg` likewise with bias 0; BatchNorm weight 1, bias 0.
- Only plain BatchNorm2d: ghost BatchNorm (`bn_batch_size`) is not supported here.

Input (B, C, H, W) images; output logits (B, num_classes, H, W), the class on dim 1 so that
`F.cross_entropy(logits, labels)` applies directly to labels (B, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Output channels of layer0/1, layer2, ..., layer8, as DRN's `channels` tuple.
CHANNELS = (16, 32, 32, 64, 64, 64, 64, 64)
DRN_D_22_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
DRN_D_22_LAYERS = (1, 1, 2, 2, 2, 2, 1, 1)
OUTPUT_STRIDE = 8


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    padding = dilation * (kernel - 1) // 2
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [_conv(in_ch, out_ch, kernel, stride, dilation), nn.BatchNorm2d(out_ch), nn.ReLU()]


class DilatedBlock(nn.Module):
    """DRN's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convs of one dilation."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = _conv(in_ch, out_ch, 3, stride, dilation)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv(out_ch, out_ch, 3, 1, dilation)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DRNSeg(nn.Module):
    """DRN-D with a segmentation head; see the module docstring."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        channels: tuple[int, ...] = CHANNELS,
        layers: tuple[int, ...] = DRN_D_22_LAYERS,
    ) -> None:
        super().__init__()
        if len(channels) != 8 or len(layers) != 8:
            raise ValueError("DRN-D takes 8 channel widths and 8 layer counts")
        c = channels
        self.layer0 = nn.Sequential(*_conv_bn_relu(in_channels, c[0], 7))
        self.layer1 = nn.Sequential(*self._convs(c[0], c[0], layers[0]))
        self.layer2 = nn.Sequential(*self._convs(c[0], c[1], layers[1], stride=2))
        self.layer3 = self._blocks(c[1], c[2], layers[2], stride=2, dilation=1)
        self.layer4 = self._blocks(c[2], c[3], layers[3], stride=2, dilation=1)
        self.layer5 = self._blocks(c[3], c[4], layers[4], stride=1, dilation=2)
        self.layer6 = self._blocks(c[4], c[5], layers[5], stride=1, dilation=4)
        self.layer7 = nn.Sequential(*self._convs(c[5], c[6], layers[6], dilation=2))
        self.layer8 = nn.Sequential(*self._convs(c[6], c[7], layers[7], dilation=1))
        self.seg = nn.Conv2d(c[7], num_classes, kernel_size=1, bias=True)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    @staticmethod
    def _convs(in_ch: int, out_ch: int, n: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
        modules: list[nn.Module] = []
        for i in range(n):
            modules += _conv_bn_relu(in_ch if i == 0 else out_ch, out_ch, 3, stride if i == 0 else 1, dilation)
        return modules

    @staticmethod
    def _blocks(in_ch: int, out_ch: int, n: int, stride: int, dilation: int) -> nn.Sequential:
        return nn.Sequential(*[
            DilatedBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, dilation) for i in range(n)
        ])

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i}") for i in range(9)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for stage in self.stages():
            h = stage(h)  # (B, 64, H/8, W/8) at the end
        return F.interpolate(self.seg(h), size=x.shape[-2:], mode="bilinear", align_corners=False)
