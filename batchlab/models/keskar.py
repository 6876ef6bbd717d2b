"""Keskar et al. 2017's networks F1 (fully connected, MNIST), C1/C3 (shallow convolutional) and
C2/C4 (deep convolutional), C1/C2 on CIFAR-10 and C3/C4 on CIFAR-100.

From "On Large-Batch Training for Deep Learning: Generalization Gap and Sharp Minima"
(ICLR 2017), whose appendix lists the networks' configurations, and the authors' Keras code
(github.com/keskarnitish/large-batch-training, `network_zoo.py`: `shallownet` = C1,
`deepnet` = C2). C3 and C4 are C1 and C2 with 100 classes: the same classes here, the class
count coming from the data set (the registry's names `keskar_c3` and `keskar_c4` map to them).

F1 (`KeskarF1`): 784 inputs (a flattened 28x28 MNIST image) -> 5 hidden layers of 512 units,
each Linear -> BatchNorm -> ReLU -> a linear layer to the 10 classes. Source of the sizes:
the paper's appendix as the project brief recalls it (784 - 5 x 512 - 10, BN + ReLU); it
could not be checked against the paper's text here, and the authors' repository has no code
for F1. No dropout.

C1 (`KeskarC1`), sizes from `shallownet`:
  conv 64 5x5 'same' -> BN -> ReLU -> max-pool 3x3 stride 2 'same'
  conv 64 5x5 'same' -> BN -> ReLU -> max-pool 3x3 stride 2 'same'    (32 -> 16 -> 8)
  flatten (64 * 8 * 8 = 4096) -> FC 384 -> BN -> ReLU -> dropout
                              -> FC 192 -> BN -> ReLU -> dropout -> FC 10.
Keras 'same' max-pooling under Theano (the authors' backend) pads one pixel on every side
and keeps ceil(n / 2) outputs, which is `nn.MaxPool2d(3, 2, padding=1)` here.

C2 (`KeskarC2`), from `deepnet`, a VGG-16-like stack of 3x3 'same' convs, each followed by
BN and ReLU, in five blocks ending in a 2x2 stride-2 max-pool:
  64 64 M | 128 128 M | 256 256 256 M | 512 512 512 M | 512 512 512 M      (32 -> 1)
with dropout after every conv that another conv of its block follows (0.3 after the very
first conv, 0.4 after the others; none before a max-pool), then
  flatten (512) -> dropout -> FC 512 -> BN -> ReLU -> dropout -> FC 10.
Keras 'same' 2x2 max-pooling keeps ceil(n / 2) outputs, `nn.MaxPool2d(2, 2, ceil_mode=True)`
here (the same as without ceil_mode on 32x32; on 28x28 it goes 28-14-7-4-2-1).

Options (keyword arguments, see batchlab.models.model_options): `dropout`, the rate of the
dropout layers of the fully connected part (default 0.5, the authors'), and for C2
`conv_dropout` (0.4) and `first_conv_dropout` (0.3), the rates after the convs. A rate of 0
makes that dropout the identity.

Choices and differences from the authors' code, so results can be read correctly:
- Dropout is `SeededDropout` (batchlab.models.dropout): each run draws its masks from its own
  stream held in the model's state, so stacked runs stay independent and reproducible and a
  resumed run continues with the masks it would have drawn.
- BatchNorm has Keras's constants: epsilon 1e-3 and moving-average momentum 0.99, which is
  PyTorch momentum 0.01 (running = 0.99 * running + 0.01 * batch statistic). It uses its
  running statistics in eval mode (PyTorch's BatchNorm); the Keras code's
  `BatchNormalization(mode=2)` normalises with the batch's own statistics at test time too.
- Initialisation follows Keras 1's defaults, as the authors' models had them: Glorot-uniform
  weights and zero biases for every Linear and conv layer, BN weight 1 and bias 0. Layers
  keep their biases before BatchNorm, as in Keras (redundant in training, where BN's shift
  absorbs them).
- Only plain BatchNorm: ghost BatchNorm (`bn_batch_size`) is not supported for these models.
- Flattened sizes follow the input's shape, so the convolutional nets also take 28x28
  images with 1 channel (MNIST, Fashion-MNIST).

F1: input images (B, C, H, W), flattened (any shape works; MNIST gives 784);
C1, C2: (B, C, H, W) images; all output logits (B, num_classes).
"""

from __future__ import annotations

import torch
from torch import nn

from batchlab.models.dropout import SeededDropout

F1_HIDDEN = 512
F1_DEPTH = 5
C1_CHANNELS = 64
C1_KERNEL = 5
C1_FC = (384, 192)
# C2's blocks: (channels, convs), each block ending in a max-pool; then one hidden FC layer.
C2_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
C2_FC = 512
# The authors' dropout rates: fully connected part, after the convs, after the first conv.
DROPOUT, CONV_DROPOUT, FIRST_CONV_DROPOUT = 0.5, 0.4, 0.3
# Keras's BatchNormalization defaults: epsilon 1e-3, momentum 0.99 on the running average,
# which weighs the new batch statistic by 1 - 0.99 (PyTorch's momentum).
KERAS_BN = {"eps": 1e-3, "momentum": 0.01}


def _set_bn_momentum(module: nn.Module, momentum: float) -> None:
    """Every BatchNorm's running-average momentum (PyTorch's sense): Keras's 0.01 needs hundreds of steps
    before the running statistics are the data's, so a run of a few dozen steps (a smoke run) sets more."""
    for mod in module.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = momentum


def _glorot_init(module: nn.Module) -> None:
    for mod in module.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(mod.weight)
            nn.init.zeros_(mod.bias)


def _fc_bn_relu(in_features: int, widths: tuple[int, ...], dropout: float | None = None) -> nn.Sequential:
    """Linear -> BN -> ReLU per width, each followed by SeededDropout(dropout) unless dropout is None."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width, **KERAS_BN), nn.ReLU()]
        if dropout is not None:
            layers.append(SeededDropout(dropout))
        in_features = width
    return nn.Sequential(*layers)


def _halved(n: int) -> int:
    """ceil(n / 2): the output length of Keras's stride-2 'same' max-pools, MaxPool2d(3, 2,
    padding=1) and MaxPool2d(2, 2, ceil_mode=True)."""
    return (n + 1) // 2


class KeskarF1(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, hidden: int = F1_HIDDEN, depth: int = F1_DEPTH,
                 bn_momentum: float = KERAS_BN["momentum"]) -> None:
        super().__init__()
        self.hidden = _fc_bn_relu(input_dim, (hidden,) * depth)
        self.out = nn.Linear(hidden, num_classes)
        _glorot_init(self)
        _set_bn_momentum(self, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x.flatten(1)))


class KeskarC1(nn.Module):
    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, dropout: float = DROPOUT,
                 bn_momentum: float = KERAS_BN["momentum"]) -> None:
        super().__init__()
        c, pad = C1_CHANNELS, C1_KERNEL // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c, C1_KERNEL, padding=pad), nn.BatchNorm2d(c, **KERAS_BN), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(c, c, C1_KERNEL, padding=pad), nn.BatchNorm2d(c, **KERAS_BN), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )  # fmt: skip
        flat = c * _halved(_halved(height)) * _halved(_halved(width))
        self.hidden = _fc_bn_relu(flat, C1_FC, dropout)
        self.out = nn.Linear(C1_FC[-1], num_classes)
        _glorot_init(self)
        _set_bn_momentum(self, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, 64, H/4, W/4)
        return self.out(self.hidden(h.flatten(1)))


def _vgg_features(in_channels: int, conv_dropout: float, first_conv_dropout: float) -> nn.Sequential:
    """C2's conv blocks: conv3x3 'same' -> BN -> ReLU, dropout between the convs of a block, a max-pool ending each."""
    layers: list[nn.Module] = []
    rate = first_conv_dropout
    for channels, convs in C2_BLOCKS:
        for i in range(convs):
            layers += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels, **KERAS_BN), nn.ReLU()]
            if i < convs - 1:
                layers.append(SeededDropout(rate))
                rate = conv_dropout
            in_channels = channels
        layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
    return nn.Sequential(*layers)


class KeskarC2(nn.Module):
    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, dropout: float = DROPOUT,
                 conv_dropout: float = CONV_DROPOUT, first_conv_dropout: float = FIRST_CONV_DROPOUT,
                 bn_momentum: float = KERAS_BN["momentum"]) -> None:
        super().__init__()
        self.features = _vgg_features(in_channels, conv_dropout, first_conv_dropout)
        for _ in C2_BLOCKS:
            height, width = _halved(height), _halved(width)
        self.dropout = SeededDropout(dropout)
        self.hidden = _fc_bn_relu(C2_BLOCKS[-1][0] * height * width, (C2_FC,), dropout)
        self.out = nn.Linear(C2_FC, num_classes)
        _glorot_init(self)
        _set_bn_momentum(self, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, 512, H/32, W/32), each halving rounded up
        return self.out(self.hidden(self.dropout(h.flatten(1))))
