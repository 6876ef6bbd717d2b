"""Two AlexNets for 32x32 images: Masters & Luschi 2018's reduced AlexNet, and the CIFAR AlexNet
that Golmant et al. 2018 compare with other architectures.

`AlexNetReduced` (registry name `alexnet_reduced`), Masters & Luschi's reduced AlexNet for
CIFAR: five stride-1 convs with kernels 5, 3, 3, 3, 3 and 16, 48, 96, 64, 64 channels, each
followed by ReLU; 3x3 stride-2 max-pools after conv 1, conv 2 and conv 5 (where AlexNet has
them); two fully connected layers of 256 units with ReLU; a linear classifier. No BatchNorm.
Choices where the paper's description leaves room:
- convs are zero-padded to keep the size ('same': padding kernel // 2) and have biases;
- the max-pools pad one pixel on each side, so each halves the size rounding up:
  32 -> 16 -> 8 -> 4 (flattened 64 * 4 * 4 = 1024), 28 -> 14 -> 7 -> 4;
- He initialisation, as the paper uses: every conv and linear weight normal with std
  sqrt(2 / fan_in) (He et al. 2015's forward form, which keeps the activations' scale
  through ReLU layers without normalisation), biases 0;
- no dropout and no local response normalisation (AlexNet had both; the paper's reduced
  version is described without them).

`CifarAlexNet` (registry name `alexnet`): Golmant et al. compare "AlexNet" with ResNets, VGG
and MobileNetV2 on CIFAR-10 without saying which variant, so this is the common CIFAR
adaptation of pytorch-classification (github.com/bearpaw/pytorch-classification,
`models/cifar/alexnet.py`: AlexNet's convs with the fully connected layers removed):
  conv 64 11x11 stride 4 pad 5 -> ReLU -> max-pool 2 -> conv 192 5x5 pad 2 -> ReLU -> max-pool 2
  -> conv 384 3x3 -> ReLU -> conv 256 3x3 -> ReLU -> conv 256 3x3 -> ReLU -> max-pool 2
  -> linear to the classes                                  (32 -> 8 -> 4 -> 2 -> 1: 256 features)
with its initialisation, PyTorch's default. One change: the 2x2 max-pools round up
(`ceil_mode=True`), which is the same on 32x32 inputs and keeps a 28x28 input from pooling
to nothing (28 -> 7 -> 4 -> 2 -> 1).

Both take (B, C, H, W) images with any C (the first conv's input channels) and output
logits (B, num_classes); the flattened size follows H and W.
"""

from __future__ import annotations

import torch
from torch import nn

REDUCED_CHANNELS = (16, 48, 96, 64, 64)
REDUCED_KERNELS = (5, 3, 3, 3, 3)
REDUCED_POOL_AFTER = (0, 1, 4)  # conv indices followed by a max-pool
REDUCED_FC = (256, 256)


def _halved(n: int) -> int:
    """ceil(n / 2): the output length of MaxPool2d(3, 2, padding=1) and MaxPool2d(2, 2, ceil_mode=True)."""
    return (n + 1) // 2


class AlexNetReduced(nn.Module):
    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (channels, kernel) in enumerate(zip(REDUCED_CHANNELS, REDUCED_KERNELS)):
            layers += [nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2), nn.ReLU()]
            if i in REDUCED_POOL_AFTER:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
                height, width = _halved(height), _halved(width)
            in_channels = channels
        self.features = nn.Sequential(*layers)
        fc: list[nn.Module] = []
        features = in_channels * height * width
        for units in REDUCED_FC:
            fc += [nn.Linear(features, units), nn.ReLU()]
            features = units
        self.hidden = nn.Sequential(*fc)
        self.out = nn.Linear(features, num_classes)
        for mod in self.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.features(x).flatten(1)))


class CifarAlexNet(nn.Module):
    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=5), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
        )  # fmt: skip
        height, width = ((n + 2 * 5 - 11) // 4 + 1 for n in (height, width))  # the strided first conv
        for _ in range(3):
            height, width = _halved(height), _halved(width)
        self.classifier = nn.Linear(256 * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
