"""Model registry: a name in the config maps to a constructor here.

MNIST-1D families (`mlp`, `cnn`, `gru`) take 1-D signals; the CIFAR ResNets (He et al.
2016, depth 6n+2) take (3, 32, 32) images. `resnet8` has no BatchNorm and `resnet32` has
it, as in Masters & Luschi 2018; `bn_batch_size` sets ghost BatchNorm's sub-batch.
"""

from __future__ import annotations

from torch import nn

from batchlab.models.mnist1d import CNN, GRU, MLP

BN_MODELS = ("resnet8_bn", "resnet20", "resnet32")
MODEL_NAMES = ("mlp", "cnn", "gru", "resnet8", *BN_MODELS)


def has_batchnorm(name: str) -> bool:
    return name in BN_MODELS


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, bn_batch_size: int | None = None
) -> nn.Module:
    """Build the named model for inputs of `input_shape` (without the batch dimension)."""
    if bn_batch_size is not None and not has_batchnorm(name):
        raise ValueError(f"model {name!r} has no BatchNorm, so bn_batch_size={bn_batch_size} means nothing")
    if name in ("mlp", "cnn", "gru"):
        if len(input_shape) != 1:
            raise ValueError(f"model {name!r} takes 1-D signals, got inputs of shape {input_shape}")
        length = input_shape[0]
        if name == "mlp":
            return MLP(length, num_classes)
        if name == "cnn":
            return CNN(length, num_classes)
        return GRU(length, num_classes)
    if name in ("resnet8", "resnet8_bn", "resnet20", "resnet32"):
        from batchlab.models.resnet import cifar_resnet

        if len(input_shape) != 3:
            raise ValueError(f"model {name!r} takes (C, H, W) images, got inputs of shape {input_shape}")
        depth = int(name.removeprefix("resnet").removesuffix("_bn"))
        return cifar_resnet(
            depth, num_classes, in_channels=input_shape[0], batchnorm=has_batchnorm(name), bn_batch_size=bn_batch_size
        )
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
