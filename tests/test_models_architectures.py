"""The image architectures against their reference layouts.

Parameter counts are computed here from each paper's or reference code's layer list, not
read from the code under test; torchvision's ImageNet models, whose conv stacks the CIFAR
variants share, check the counts independently. Layouts are compared as the list of leaf
module types in order. Also: He initialisation, and every image model on 28x28 and 32x32
inputs with 1 or 3 channels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from batchlab.models import MODEL_INPUTS, MODEL_NAMES, RESNETS, build_model, parameter_count

IMAGE_MODELS = [name for name in MODEL_NAMES if MODEL_INPUTS[name] == "image"]


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(channels: int) -> int:
    return 2 * channels  # weight and bias


def fc(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def leaf_types(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules() if not list(m.children())]


def meta_model(name: str, shape=(3, 32, 32), classes: int = 10) -> nn.Module:
    with torch.device("meta"):  # layouts and counts without initialising millions of weights
        return build_model(name, shape, classes)


def torchvision_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------
# Masters & Luschi's reduced AlexNet.

def test_alexnet_reduced_is_five_stride_1_convs_three_pools_and_two_fc_of_256():
    channels, kernels = [16, 48, 96, 64, 64], [5, 3, 3, 3, 3]
    cins = [3] + channels[:-1]
    flat = 64 * 4 * 4  # 32 -> 16 -> 8 -> 4 through three 3x3 stride-2 max-pools padded by one
    convs = sum(conv(i, o, k) for i, o, k in zip(cins, channels, kernels))
    expected = convs + fc(flat, 256) + fc(256, 256) + fc(256, 10)
    assert parameter_count("alexnet_reduced", (3, 32, 32), 10) == expected == 472_794
    model = meta_model("alexnet_reduced")
    c, r, m, lin = "Conv2d", "ReLU", "MaxPool2d", "Linear"
    assert leaf_types(model) == [c, r, m, c, r, m, c, r, c, r, c, r, m, lin, r, lin, r, lin]
    convs = [x for x in model.modules() if isinstance(x, nn.Conv2d)]
    assert [(x.out_channels, x.kernel_size[0], x.stride, x.padding[0]) for x in convs] == [
        (o, k, (1, 1), k // 2) for o, k in zip(channels, kernels)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in model.modules() if isinstance(p, nn.MaxPool2d))
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in model.modules())
    assert meta_model("alexnet_reduced", (1, 28, 28)).hidden[0].in_features == 64 * 4 * 4  # 28 -> 14 -> 7 -> 4


def test_alexnet_reduced_has_he_initialisation():
    torch.manual_seed(0)
    model = build_model("alexnet_reduced", (3, 32, 32), 10)
    layers = [x for x in model.modules() if isinstance(x, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 8
    for layer in layers:
        fan_in = layer.weight[0].numel()
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1), layer
        assert layer.weight.mean().abs().item() < 0.1 * math.sqrt(2 / fan_in)
        assert torch.count_nonzero(layer.bias) == 0


# ---------------------------------------------------------------------------------------
# ResNets without BN: He initialisation by default, the Fixup-like zero start on request.

@pytest.mark.parametrize("name", ["resnet8", "resnet20_nobn", "resnet32_nobn"])
def test_resnets_without_bn_start_from_he_initialisation_by_default(name):
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 10)
    convs = [x for x in model.modules() if isinstance(x, nn.Conv2d)]
    for layer in convs:
        fan_out = layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.15), layer
        assert torch.count_nonzero(layer.bias) == 0
    branch_ends = [block.conv2.weight for stage in model.stages for block in stage]
    assert len(branch_ends) == (RESNETS[name][0] - 2) // 2  # 2 convs a block: depth 8 -> 3 blocks
    assert all(torch.count_nonzero(w) == w.numel() for w in branch_ends)  # not zeroed
    zero = build_model(name, (3, 32, 32), 10, residual_init="zero")
    assert all(torch.count_nonzero(block.conv2.weight) == 0 and torch.count_nonzero(block.conv2.bias) == 0
               for stage in zero.stages for block in stage)
    assert all(torch.count_nonzero(block.conv1.weight) > 0 for stage in zero.stages for block in stage)


# ---------------------------------------------------------------------------------------
# Keskar et al.'s deep net (C2 / C4).

C2_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
C2_BLOCKS = [2, 2, 3, 3, 3]


@pytest.mark.parametrize("name, classes", [("keskar_c2", 10), ("keskar_c4", 100)])
def test_keskar_c2_is_the_authors_vgg_like_net_with_their_dropout(name, classes):
    cins = [3] + C2_CHANNELS[:-1]
    convs = sum(conv(i, o, 3) + bn(o) for i, o in zip(cins, C2_CHANNELS))  # Keras convs keep their bias
    expected = convs + fc(512, 512) + bn(512) + fc(512, classes)
    assert parameter_count(name, (3, 32, 32), classes) == expected
    layout = []
    for n in C2_BLOCKS:
        for i in range(n):
            layout += ["Conv2d", "BatchNorm2d", "ReLU"] + (["SeededDropout"] if i < n - 1 else [])
        layout.append("MaxPool2d")
    layout += ["SeededDropout", "Linear", "BatchNorm1d", "ReLU", "SeededDropout", "Linear"]
    model = meta_model(name, classes=classes)
    assert leaf_types(model) == layout
    rates = [m.p for m in model.modules() if type(m).__name__ == "SeededDropout"]
    assert rates == [0.3] + [0.4] * 7 + [0.5, 0.5]
    assert [c.out_channels for c in model.modules() if isinstance(c, nn.Conv2d)] == C2_CHANNELS
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in model.modules() if isinstance(c, nn.Conv2d))
    assert meta_model(name, (1, 28, 28), classes).hidden[0].in_features == 512  # 28-14-7-4-2-1, pools rounding up


def test_keskar_c1_and_c3_are_one_net():
    c1, c3 = meta_model("keskar_c1"), meta_model("keskar_c3", classes=100)
    assert type(c1) is type(c3) and leaf_types(c1) == leaf_types(c3)
    assert c3.out.out_features == 100


# ---------------------------------------------------------------------------------------
# Golmant et al.'s comparison on CIFAR-10: the common CIFAR AlexNet, VGG-11 with BN, MobileNetV2.

def test_cifar_alexnet_is_pytorch_classifications():
    expected = (conv(3, 64, 11) + conv(64, 192, 5) + conv(192, 384, 3) + conv(384, 256, 3) + conv(256, 256, 3)
                + fc(256, 10))
    assert parameter_count("alexnet", (3, 32, 32), 10) == expected == 2_472_266
    model = meta_model("alexnet")
    c, r, m = "Conv2d", "ReLU", "MaxPool2d"
    assert leaf_types(model) == [c, r, m, c, r, m, c, r, c, r, c, r, m, "Linear"]
    first = model.features[0]
    assert (first.kernel_size, first.stride, first.padding) == ((11, 11), (4, 4), (5, 5))
    # ImageNet AlexNet's convs are the same five (different padding): the same weights.
    with torch.device("meta"):
        reference = torchvision.models.alexnet().features
    assert torchvision_count(model.features) == torchvision_count(reference)


def test_vgg11_bn_is_configuration_a_with_batchnorm_and_one_linear_classifier():
    channels = [64, 128, 256, 256, 512, 512, 512, 512]
    cins = [3] + channels[:-1]
    expected = sum(conv(i, o, 3) + bn(o) for i, o in zip(cins, channels)) + fc(512, 10)
    assert parameter_count("vgg11_bn", (3, 32, 32), 10) == expected
    layout = []
    for item in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        layout += ["MaxPool2d"] if item == "M" else ["Conv2d", "BatchNorm2d", "ReLU"]
    model = meta_model("vgg11_bn")
    assert leaf_types(model) == layout + ["Linear"]
    assert model.classifier.in_features == 512
    with torch.device("meta"):
        reference = torchvision.models.vgg11_bn().features
    assert torchvision_count(model.features) == torchvision_count(reference)


# MobileNetV2's table: (expansion t, channels c, blocks n, stride s); strides 2 of the stem and
# of the second row become 1 in the CIFAR variant.
MOBILENET = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def test_mobilenetv2_is_the_papers_net_with_cifar_strides():
    count, cin, layout, residuals = conv(3, 32, 3, bias=False) + bn(32), 32, ["Conv2d", "BatchNorm2d", "ReLU6"], 0
    for t, c, n, _ in MOBILENET:
        for _ in range(n):
            hidden = cin * t
            if t != 1:
                count += conv(cin, hidden, 1, bias=False) + bn(hidden)
                layout += ["Conv2d", "BatchNorm2d", "ReLU6"]
            count += hidden * 9 + bn(hidden) + conv(hidden, c, 1, bias=False) + bn(c)  # depthwise, linear 1x1
            layout += ["Conv2d", "BatchNorm2d", "ReLU6", "Conv2d", "BatchNorm2d"]
            residuals += cin == c  # and stride 1: the first of a row changes the channels or strides
            cin = c
    count += conv(320, 1280, 1, bias=False) + bn(1280) + fc(1280, 10)
    layout += ["Conv2d", "BatchNorm2d", "ReLU6", "Linear"]
    assert parameter_count("mobilenetv2", (3, 32, 32), 10) == count
    with torch.device("meta"):
        assert count == torchvision_count(torchvision.models.mobilenet_v2(num_classes=10))
    model = meta_model("mobilenetv2")
    assert leaf_types(model) == layout
    depthwise = [x for x in model.modules() if isinstance(x, nn.Conv2d) and x.groups > 1]
    assert len(depthwise) == 17 and all(x.groups == x.in_channels == x.out_channels for x in depthwise)
    assert [x.stride[0] for x in depthwise] == [s if i == 0 else 1 for _, _, n, s in MOBILENET for i in range(n)]
    assert sum(block.residual for block in model.blocks) == residuals == 10
    assert model.stem[0].stride == (1, 1)
    features = model.head(model.blocks(model.stem(torch.empty(2, 3, 32, 32, device="meta"))))
    assert features.shape == (2, 1280, 4, 4)  # total stride 8


# ---------------------------------------------------------------------------------------
# Every image model: MNIST-like and CIFAR-like inputs. The channels set the first layer's
# inputs and the size the flattened features, independently: both change between the two shapes.

@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=str)
def test_image_models_take_28_and_32_pixel_inputs_with_1_or_3_channels(name, shape):
    model = meta_model(name, shape, classes=7)  # in train mode: dropout draws its masks (on the meta device)
    assert model(torch.empty(5, *shape, device="meta")).shape == (5, 7)
