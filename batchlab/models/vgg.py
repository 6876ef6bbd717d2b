"""VGG-11 with BatchNorm for 32x32 images (`vgg11_bn`), one of the architectures Golmant et al.
2018 compare on CIFAR-10.

Golmant et al. name "VGG" without the variant; this is the common CIFAR adaptation of
pytorch-classification (github.com/bearpaw/pytorch-classification, `models/cifar/vgg.py`,
`vgg11_bn`): VGG's configuration A of 3x3 'same' convs, each followed by BatchNorm and ReLU,
  64 M 128 M 256 256 M 512 512 M 512 512 M                  (32 -> 16 -> 8 -> 4 -> 2 -> 1)
where M is a 2x2 stride-2 max-pool, then a single linear layer from the 512 features to the
classes (ImageNet VGG's three fully connected layers and dropout removed). Its
initialisation: convs normal with std sqrt(2 / (k * k * out_channels)) (He, fan_out) and bias
0, BatchNorm weight 1 and bias 0, the linear layer normal with std 0.01 and bias 0.
PyTorch's BatchNorm constants (eps 1e-5, momentum 0.1); plain BatchNorm only (no ghost
batches).

One change: the max-pools round up (`ceil_mode=True`), which is the same on 32x32 inputs and
keeps a 28x28 input from pooling to nothing (28 -> 14 -> 7 -> 4 -> 2 -> 1). Input
(B, C, H, W) images with any C; output logits (B, num_classes); the flattened size follows H, W.
"""

from __future__ import annotations

import torch
from torch import nn

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11BN(nn.Module):
    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for item in VGG11:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                height, width = (height + 1) // 2, (width + 1) // 2
            else:
                layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels * height * width, num_classes)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.01)
                nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
