"""The MNIST-1D paper's model families (Greydanus 2020): MLP, CNN and GRU.

Sizes follow the paper's reference code: an MLP with two hidden layers of 100 units, a
three-layer 1-D CNN with 25 channels, and a bidirectional GRU with 6 hidden units whose
outputs at every time step feed a linear classifier.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, hidden: int = 100, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, L) -> (B, classes)


class CNN(nn.Module):
    def __init__(self, length: int, num_classes: int, channels: int = 25):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        out_len = length
        for k in (5, 3, 3):
            out_len = math.floor((out_len + 2 - k) / 2) + 1
        self.head = nn.Linear(channels * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x.unsqueeze(1))  # (B, 1, L) -> (B, C, L/8)
        return self.head(h.flatten(1))


class GRU(nn.Module):
    def __init__(self, length: int, num_classes: int, hidden: int = 6, bidirectional: bool = True):
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1) * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x.unsqueeze(-1))  # (B, L, 1) -> (B, L, dirs*H)
        return self.head(h.flatten(1))
