"""Model registry: a name in the config maps to a constructor here.

- MNIST-1D families (`mlp`, `cnn`, `gru`) take 1-D signals (Greydanus 2020).
- CIFAR ResNets (He et al. 2016, depth 6n+2) take (C, H, W) images. As in Masters &
  Luschi 2018, with and without BatchNorm: `resnet8`, `resnet20_nobn`, `resnet32_nobn` have
  none; `resnet8_bn`, `resnet20`, `resnet32` have it, and `bn_batch_size` sets their ghost
  BatchNorm's sub-batch.
- Keskar et al. 2017's `keskar_f1` (fully connected, MNIST) and `keskar_c1` (shallow
  convolutional, CIFAR-10) take (C, H, W) images; they have plain BatchNorm.
- `drn`, a small DRN-D (Yu et al. 2017) for semantic segmentation, takes (C, H, W) images
  and gives a class per pixel; plain BatchNorm.
- `lstm_lm`, a word-level LSTM language model (Golmant et al. 2018, WikiText-2), takes
  (T,) token ids and gives the next token's logits at every position.

Logits carry the class on dim 1, so `F.cross_entropy(logits, targets)` applies directly:
(B, C) for classification, (B, V, T) for the language model (targets (B, T)), (B, C, H, W)
for segmentation (targets (B, H, W)). MODEL_INPUTS names the kind of data each model takes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from batchlab.data.catalog import INPUTS

if TYPE_CHECKING:
    from torch import nn

# ResNet name -> (depth, BatchNorm).
RESNETS: dict[str, tuple[int, bool]] = {
    "resnet8": (8, False),
    "resnet8_bn": (8, True),
    "resnet20": (20, True),
    "resnet32": (32, True),
    "resnet20_nobn": (20, False),
    "resnet32_nobn": (32, False),
}
# Models that accept `bn_batch_size` (ghost BatchNorm): the ResNets with BatchNorm.
BN_MODELS = tuple(name for name, (_, bn) in RESNETS.items() if bn)
# Models with plain BatchNorm only: giving them a `bn_batch_size` is an error.
PLAIN_BN_MODELS = ("keskar_f1", "keskar_c1", "drn")

MODEL_INPUTS: dict[str, str] = {
    "mlp": "signal",
    "cnn": "signal",
    "gru": "signal",
    **{name: "image" for name in RESNETS},
    "keskar_f1": "image",
    "keskar_c1": "image",
    "drn": "segmentation",
    "lstm_lm": "tokens",
}
MODEL_NAMES = tuple(MODEL_INPUTS)
# Recurrent nets: torch.func.vmap has no batching rule for nn.GRU/nn.LSTM, so no per-example gradients.
RECURRENT_MODELS = ("gru", "lstm_lm")
INPUT_KINDS = INPUTS  # the data kinds of batchlab.data.catalog, which a model must take
assert set(MODEL_INPUTS.values()) <= set(INPUT_KINDS)


def has_batchnorm(name: str) -> bool:
    """Whether the model takes `bn_batch_size` (ghost BatchNorm): the ResNets with BatchNorm.

    Models with plain BatchNorm only (`uses_batchnorm` but not this) reject a bn_batch_size."""
    return name in BN_MODELS


def uses_batchnorm(name: str) -> bool:
    """Whether the model has BatchNorm layers at all (ghost-capable or not)."""
    return name in BN_MODELS or name in PLAIN_BN_MODELS


def check_bn_batch_size(name: str, bn_batch_size: int | None) -> None:
    """ValueError unless `bn_batch_size` is None or the model supports ghost BatchNorm."""
    if bn_batch_size is None or has_batchnorm(name):
        return
    if uses_batchnorm(name):
        raise ValueError(
            f"model {name!r} has plain BatchNorm without ghost batches, so bn_batch_size={bn_batch_size} "
            f"is not supported; only {', '.join(BN_MODELS)} take a bn_batch_size"
        )
    raise ValueError(f"model {name!r} has no BatchNorm, so bn_batch_size={bn_batch_size} means nothing")


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, bn_batch_size: int | None = None
) -> nn.Module:
    """Build the named model for inputs of `input_shape` (without the batch dimension).

    `num_classes` is the vocabulary size for `lstm_lm` and the number of pixel classes for `drn`.
    """
    if name not in MODEL_INPUTS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    check_bn_batch_size(name, bn_batch_size)
    input_shape = tuple(input_shape)
    kind = MODEL_INPUTS[name]
    if kind in ("signal", "tokens"):
        if len(input_shape) != 1:
            what = "1-D signals" if kind == "signal" else "(T,) sequences of token ids"
            raise ValueError(f"model {name!r} takes {what}, got inputs of shape {input_shape}")
    elif len(input_shape) != 3:
        raise ValueError(f"model {name!r} takes (C, H, W) images, got inputs of shape {input_shape}")

    if name in ("mlp", "cnn", "gru"):
        from batchlab.models.mnist1d import CNN, GRU, MLP

        length = input_shape[0]
        if name == "mlp":
            return MLP(length, num_classes)
        if name == "cnn":
            return CNN(length, num_classes)
        return GRU(length, num_classes)
    if name in RESNETS:
        from batchlab.models.resnet import cifar_resnet

        depth, batchnorm = RESNETS[name]
        return cifar_resnet(depth, num_classes, in_channels=input_shape[0], batchnorm=batchnorm,
                            bn_batch_size=bn_batch_size)  # fmt: skip
    if name == "keskar_f1":
        from batchlab.models.keskar import KeskarF1

        return KeskarF1(math.prod(input_shape), num_classes)
    if name == "keskar_c1":
        from batchlab.models.keskar import KeskarC1

        return KeskarC1(*input_shape, num_classes)
    if name == "drn":
        from batchlab.models.drn import DRNSeg

        return DRNSeg(num_classes, in_channels=input_shape[0])
    from batchlab.models.lstm import LSTMLanguageModel

    return LSTMLanguageModel(num_classes)


def parameter_count(name: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Number of trainable parameters of build_model(name, input_shape, num_classes)."""
    return sum(p.numel() for p in build_model(name, input_shape, num_classes).parameters())
