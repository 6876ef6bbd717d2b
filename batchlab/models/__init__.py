"""Model registry: a name in the config maps to a constructor here.

- MNIST-1D families (`mlp`, `cnn`, `gru`) take 1-D signals (Greydanus 2020).
- CIFAR ResNets (He et al. 2016, depth 6n+2) take (C, H, W) images. As in Masters &
  Luschi 2018, with and without BatchNorm: `resnet8`, `resnet20_nobn`, `resnet32_nobn` have
  none; `resnet8_bn`, `resnet20`, `resnet32` have it, and `bn_batch_size` sets their ghost
  BatchNorm's sub-batch.
- Masters & Luschi's reduced AlexNet for CIFAR, `alexnet_reduced` (no BatchNorm).
- Keskar et al. 2017's `keskar_f1` (fully connected, MNIST), `keskar_c1` / `keskar_c3`
  (shallow convolutional, CIFAR-10 / CIFAR-100: one net, the class count from the data) and
  `keskar_c2` / `keskar_c4` (deep, VGG-like, likewise); plain BatchNorm, dropout in C1-C4.
- Golmant et al. 2018's architecture comparison on CIFAR-10, besides the ResNets: `alexnet`,
  `vgg11_bn` and `mobilenetv2` (the common CIFAR variants; plain BatchNorm in the last two).
- `drn`, a small DRN-D (Yu et al. 2017) for semantic segmentation, takes (C, H, W) images
  and gives a class per pixel; plain BatchNorm.
- `lstm_lm`, a word-level LSTM language model (Golmant et al. 2018, WikiText-2), takes
  (T,) token ids and gives the next token's logits at every position.
Image models take any number of channels and derive their flattened sizes from the input's
height and width (28x28 MNIST-like and 32x32 CIFAR-like inputs alike).

Logits carry the class on dim 1, so `F.cross_entropy(logits, targets)` applies directly:
(B, C) for classification, (B, V, T) for the language model (targets (B, T)), (B, C, H, W)
for segmentation (targets (B, H, W)). MODEL_INPUTS names the kind of data each model takes.

Some models take options, keyword arguments of their constructor that a config gives by
name: `model_options(name)` lists them with their defaults (the papers' settings), and
`check_model_options` checks given ones, both without importing torch:
- `residual_init` ("he" | "zero") of the ResNets without BatchNorm (batchlab.models.resnet);
- `dropout` (a probability) of the models with dropout layers, and `conv_dropout`,
  `first_conv_dropout` of Keskar's deep net (batchlab.models.keskar, batchlab.models.lstm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
# Keskar et al.'s convolutional nets by name: C3 and C4 are C1 and C2 on CIFAR-100.
KESKAR_SHALLOW = ("keskar_c1", "keskar_c3")
KESKAR_DEEP = ("keskar_c2", "keskar_c4")
# Models that accept `bn_batch_size` (ghost BatchNorm): the ResNets with BatchNorm.
BN_MODELS = tuple(name for name, (_, bn) in RESNETS.items() if bn)
# Models with plain BatchNorm only: giving them a `bn_batch_size` is an error.
PLAIN_BN_MODELS = ("keskar_f1", *KESKAR_SHALLOW, *KESKAR_DEEP, "vgg11_bn", "mobilenetv2", "drn")

MODEL_INPUTS: dict[str, str] = {
    "mlp": "signal",
    "cnn": "signal",
    "gru": "signal",
    **{name: "image" for name in RESNETS},
    "alexnet_reduced": "image",
    "keskar_f1": "image",
    **{name: "image" for name in (*KESKAR_SHALLOW, *KESKAR_DEEP)},
    "alexnet": "image",
    "vgg11_bn": "image",
    "mobilenetv2": "image",
    "drn": "segmentation",
    "lstm_lm": "tokens",
}
MODEL_NAMES = tuple(MODEL_INPUTS)
# Recurrent nets: torch.func.vmap has no batching rule for nn.GRU/nn.LSTM, so no per-example gradients.
RECURRENT_MODELS = ("gru", "lstm_lm")
INPUT_KINDS = INPUTS  # the data kinds of batchlab.data.catalog, which a model must take
assert set(MODEL_INPUTS.values()) <= set(INPUT_KINDS)

RESIDUAL_INITS = ("he", "zero")  # see batchlab.models.resnet
# Options that are dropout probabilities: a model has active dropout layers where one is > 0.
DROPOUT_OPTIONS = ("dropout", "conv_dropout", "first_conv_dropout")
# Per model, its options and their defaults (the constructors' defaults, checked by the tests).
MODEL_OPTIONS: dict[str, dict[str, object]] = {
    **{name: {"residual_init": "he"} for name, (_, bn) in RESNETS.items() if not bn},
    **{name: {"dropout": 0.5, "bn_momentum": 0.01} for name in KESKAR_SHALLOW},
    **{name: {"dropout": 0.5, "conv_dropout": 0.4, "first_conv_dropout": 0.3, "bn_momentum": 0.01} for name in KESKAR_DEEP},
    "lstm_lm": {"dropout": 0.0},
    # a narrower, shallower F1 for a grid that must fit a CPU; Keras's BN momentum, or PyTorch's for a short run
    "keskar_f1": {"hidden": 512, "depth": 5, "bn_momentum": 0.01},
}
assert set(MODEL_OPTIONS) <= set(MODEL_INPUTS)


def check_probability(p: object, what: str = "dropout") -> float:
    """p as a float, or ValueError unless it is a number with 0 <= p < 1."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"{what} must be a probability in [0, 1), got {p!r}")
    return float(p)


def _check_residual_init(value: object, what: str) -> None:
    if value not in RESIDUAL_INITS:
        raise ValueError(f"{what} must be one of {', '.join(RESIDUAL_INITS)}, got {value!r}")


def _check_positive_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


_OPTION_CHECKS = {"residual_init": _check_residual_init, "hidden": _check_positive_int, "depth": _check_positive_int,
                  "bn_momentum": check_probability,
                  **{key: check_probability for key in DROPOUT_OPTIONS}}


def _check_known(name: str) -> None:
    if name not in MODEL_INPUTS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def model_options(name: str) -> dict[str, object]:
    """The options `name` takes, each with its default: {} for a model without options."""
    _check_known(name)
    return dict(MODEL_OPTIONS.get(name, {}))


def check_model_options(name: str, options: Mapping[str, object]) -> None:
    """ValueError naming the model's options unless every given option is one of them, with a valid value."""
    allowed = model_options(name)
    unknown = [key for key in options if key not in allowed]
    if unknown:
        offered = f"its options are {', '.join(allowed)}" if allowed else "it takes no options"
        raise ValueError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; {offered}")
    for key, value in options.items():
        _OPTION_CHECKS[key](value, f"model {name!r} option {key!r}")


def uses_dropout(name: str, options: Mapping[str, object] | None = None) -> bool:
    """Whether the model built with these options (defaults for the others) has dropout that acts in training."""
    merged = {**model_options(name), **(options or {})}
    return any(merged[key] > 0 for key in DROPOUT_OPTIONS if key in merged)


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
    name: str, input_shape: tuple[int, ...], num_classes: int, bn_batch_size: int | None = None, **options: object
) -> nn.Module:
    """Build the named model for inputs of `input_shape` (without the batch dimension).

    `num_classes` is the vocabulary size for `lstm_lm` and the number of pixel classes for `drn`.
    `options` are the model's options (`model_options(name)`); those not given take their defaults.
    """
    _check_known(name)
    check_bn_batch_size(name, bn_batch_size)
    check_model_options(name, options)
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
                            bn_batch_size=bn_batch_size, **options)  # fmt: skip
    if name == "keskar_f1":
        from batchlab.models.keskar import KeskarF1

        return KeskarF1(math.prod(input_shape), num_classes, **options)
    if name in KESKAR_SHALLOW:
        from batchlab.models.keskar import KeskarC1

        return KeskarC1(*input_shape, num_classes, **options)
    if name in KESKAR_DEEP:
        from batchlab.models.keskar import KeskarC2

        return KeskarC2(*input_shape, num_classes, **options)
    if name == "alexnet_reduced":
        from batchlab.models.alexnet import AlexNetReduced

        return AlexNetReduced(*input_shape, num_classes)
    if name == "alexnet":
        from batchlab.models.alexnet import CifarAlexNet

        return CifarAlexNet(*input_shape, num_classes)
    if name == "vgg11_bn":
        from batchlab.models.vgg import VGG11BN

        return VGG11BN(*input_shape, num_classes)
    if name == "mobilenetv2":
        from batchlab.models.mobilenet import CifarMobileNetV2

        return CifarMobileNetV2(input_shape[0], num_classes)
    if name == "drn":
        from batchlab.models.drn import DRNSeg

        return DRNSeg(num_classes, in_channels=input_shape[0])
    from batchlab.models.lstm import LSTMLanguageModel

    return LSTMLanguageModel(num_classes, **options)


def parameter_count(name: str, input_shape: tuple[int, ...], num_classes: int, **options: object) -> int:
    """Number of trainable parameters of build_model(name, input_shape, num_classes, **options).

    Built on the meta device: no memory for weights, no time initialising them, and torch's
    global RNG untouched."""
    import torch

    with torch.device("meta"):
        model = build_model(name, input_shape, num_classes, **options)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
