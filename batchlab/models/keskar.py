"""Keskar et al. 2017's networks F1 (fully connected, MNIST) and C1 (shallow convolutional, CIFAR-10).

From "On Large-Batch Training for Deep Learning: Generalization Gap and Sharp Minima"
(ICLR 2017), whose appendix lists the networks' configurations, and the authors' Keras code
(github.com/keskarnitish/large-batch-training, `network_zoo.py`, `shallownet` = C1).

F1 (`KeskarF1`): 784 inputs (a flattened 28x28 MNIST image) -> 5 hidden layers of 512 units,
each Linear -> BatchNorm -> ReLU -> a linear layer to the 10 classes. Source of the sizes:
the paper's appendix as the project brief recalls it (784 - 5 x 512 - 10, BN + ReLU); it
could not be checked against the paper's text here, and the authors' repository has no code
for F1.

C1 (`KeskarC1`), sizes from `shallownet` in `network_zoo.py`:
  conv 64 5x5 'same' -> BN -> ReLU -> max-pool 3x3 stride 2 'same'
  conv 64 5x5 'same' -> BN -> ReLU -> max-pool 3x3 stride 2 'same'    (32 -> 16 -> 8)
  flatten (64 * 8 * 8 = 4096) -> FC 384 -> BN -> ReLU -> FC 192 -> BN -> ReLU -> FC 10.
Keras 'same' max-pooling under Theano (the authors' backend) pads one pixel on every side
and keeps ceil(n / 2) outputs, which is `nn.MaxPool2d(3, 2, padding=1)` here.

Deliberate differences from the authors' code, so results can be read correctly:
- No dropout (C1 has Dropout(0.5) after both hidden FC layers): stacked members would each
  need their own stream of dropout masks to stay isolated, so dropout is left out.
- BatchNorm uses running statistics in eval mode (PyTorch's BatchNorm, eps 1e-5, momentum
  0.1). The Keras code uses `BatchNormalization(mode=2)`, which normalises with the batch's
  own statistics at test time too.
- Initialisation follows Keras 1's defaults, as the authors' models had them: Glorot-uniform
  weights and zero biases for every Linear and conv layer. Layers keep their biases before
  BatchNorm, as in Keras (redundant in training, where BN's shift absorbs them).
- Only plain BatchNorm: ghost BatchNorm (`bn_batch_size`) is not supported for these models.

F1: input images (B, C, H, W), flattened (any shape works; MNIST gives 784);
C1: (B, C, H, W) images; both output logits (B, num_classes).
"""

from __future__ import annotations

import torch
from torch import nn

F1_HIDDEN = 512
F1_DEPTH = 5
C1_CHANNELS = 64
C1_KERNEL = 5
C1_FC = (384, 192)


def _glorot_init(module: nn.Module) -> None:
    for mod in module.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(mod.weight)
            nn.init.zeros_(mod.bias)


def _fc_bn_relu(in_features: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers)


class KeskarF1(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, hidden: int = F1_HIDDEN, depth: int = F1_DEPTH) -> None:
        super().__init__()
        self.hidden = _fc_bn_relu(input_dim, (hidden,) * depth)
        self.out = nn.Linear(hidden, num_classes)
        _glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x.flatten(1)))


def _pooled(n: int) -> int:
    """Output length of MaxPool2d(3, stride 2, padding 1) over n: ceil(n / 2)."""
    return (n + 2 - 3) // 2 + 1


class KeskarC1(nn.Module):
    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        c, pad = C1_CHANNELS, C1_KERNEL // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c, C1_KERNEL, padding=pad), nn.BatchNorm2d(c), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(c, c, C1_KERNEL, padding=pad), nn.BatchNorm2d(c), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )  # fmt: skip
        flat = c * _pooled(_pooled(height)) * _pooled(_pooled(width))
        self.hidden = _fc_bn_relu(flat, C1_FC)
        self.out = nn.Linear(C1_FC[-1], num_classes)
        _glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, 64, H/4, W/4)
        return self.out(self.hidden(h.flatten(1)))
