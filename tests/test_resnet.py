"""CIFAR ResNets: architecture counts, ghost BatchNorm against BatchNorm2d, trainability without BN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.models import build_model
from batchlab.models.resnet import GhostBatchNorm2d, cifar_resnet


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _expected_params(depth: int, num_classes: int, batchnorm: bool) -> int:
    """Count by hand from the architecture: stem, 3 stages of n blocks, 1x1 projections, head."""
    n = (depth - 2) // 6
    after_conv = (lambda ch: 2 * ch) if batchnorm else (lambda ch: ch)  # BN weight+bias, or conv bias

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + after_conv(cout)

    total = conv(3, 16, 3)
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for block in range(n):
            total += conv(cin, cout, 3) + conv(cout, cout, 3)
            if stage > 0 and block == 0:
                total += conv(cin, cout, 1)
            cin = cout
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("depth", [8, 20, 32])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_shapes_and_parameter_counts(depth, batchnorm):
    model = cifar_resnet(depth, num_classes=10, batchnorm=batchnorm)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert _n_params(model) == _expected_params(depth, 10, batchnorm)
    # Depth counts the weight layers on the main path: 3x3 convs plus the linear head.
    n_3x3 = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    n_linear = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    assert n_3x3 + n_linear == depth


def test_resnet20_has_about_027m_parameters():
    # He et al. 2016, Table 6: ResNet-20 on CIFAR-10 has 0.27M parameters.
    assert abs(_n_params(cifar_resnet(20)) - 0.27e6) / 0.27e6 < 0.02


def test_stages_downsample_16_32_64():
    model = cifar_resnet(8, num_classes=100)
    shapes = []
    for stage in model.stages:
        stage.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape[1:])))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


@pytest.mark.parametrize("depth", [0, 2, 9, 21, 33, 20.5])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 2 with n >= 1"):
        cifar_resnet(depth)


def test_no_batchnorm_means_no_normalisation_and_zero_init_branches():
    model = cifar_resnet(8, batchnorm=False, residual_init="zero")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for stage in model.stages:
        for block in stage:
            assert torch.count_nonzero(block.conv2.weight) == 0 and torch.count_nonzero(block.conv2.bias) == 0
            assert torch.count_nonzero(block.conv1.weight) > 0
    with pytest.raises(ValueError, match="needs batchnorm=True"):
        cifar_resnet(8, batchnorm=False, bn_batch_size=4)


def test_batchnorm_choice():
    plain = [m for m in cifar_resnet(8).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert plain and all(type(m) is nn.BatchNorm2d for m in plain)
    ghost = [m for m in cifar_resnet(8, bn_batch_size=4).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(ghost) == len(plain)
    assert all(isinstance(m, GhostBatchNorm2d) and m.ghost_batch_size == 4 for m in ghost)


def test_registry_builds_these_models():
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build_model("resnet8", (3, 32, 32), 10).modules())
    model = build_model("resnet32", (3, 32, 32), 100, bn_batch_size=2)
    assert _n_params(model) == _expected_params(32, 100, True)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 100)


def _bn_pair(ghost_batch_size: int, channels: int = 3) -> tuple[GhostBatchNorm2d, nn.BatchNorm2d]:
    ghost = GhostBatchNorm2d(channels, ghost_batch_size)
    with torch.no_grad():  # non-trivial affine parameters, shared by both layers
        ghost.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        ghost.bias.copy_(torch.tensor([0.1, -0.3, 1.0]))
    bn = nn.BatchNorm2d(channels)
    bn.load_state_dict(ghost.state_dict())
    return ghost, bn


def test_ghost_with_whole_batch_equals_batchnorm():
    ghost, bn = _bn_pair(ghost_batch_size=6)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(6, 3, 5, 4, generator=gen) * 3 + 1
        torch.testing.assert_close(ghost(x), bn(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ghost, name), getattr(bn, name))
    ghost.eval(), bn.eval()
    torch.testing.assert_close(ghost(x), bn(x))


def test_ghost_sub_batches_are_normalised_separately():
    ghost, _ = _bn_pair(ghost_batch_size=2)
    halves = [_bn_pair(ghost_batch_size=2)[1] for _ in range(2)]  # independent BN per half
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x[2:] = x[2:] * 4 + 3  # halves with different statistics, so the split matters
    xg, xr = x.clone().requires_grad_(), x.clone().requires_grad_()

    out = ghost(xg)
    ref = torch.cat([halves[0](xr[:2]), halves[1](xr[2:])])
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(out, _bn_pair(ghost_batch_size=4)[1](x), atol=1e-3)  # not whole-batch BN

    # Gradients through the vectorised path match the two separate BatchNorms.
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)
    torch.testing.assert_close(ghost.weight.grad, halves[0].weight.grad + halves[1].weight.grad)
    torch.testing.assert_close(ghost.bias.grad, halves[0].bias.grad + halves[1].bias.grad)

    # Running stats: one momentum step with the average of the sub-batch statistics.
    torch.testing.assert_close(ghost.running_mean, (halves[0].running_mean + halves[1].running_mean) / 2)
    torch.testing.assert_close(ghost.running_var, (halves[0].running_var + halves[1].running_var) / 2)
    assert ghost.num_batches_tracked.item() == 1


def test_ghost_eval_uses_running_stats():
    ghost, _ = _bn_pair(ghost_batch_size=2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        ghost(torch.randn(8, 3, 4, 4, generator=gen) * 2 + 5)
    ghost.eval()
    x = torch.randn(3, 3, 4, 4, generator=gen)  # 3 is not a multiple of 2: fine in eval mode
    expected = F.batch_norm(x, ghost.running_mean, ghost.running_var, ghost.weight, ghost.bias, False, 0.0, ghost.eps)
    before = ghost.running_mean.clone()
    torch.testing.assert_close(ghost(x), expected)
    torch.testing.assert_close(ghost(x[:1]), expected[:1])  # each sample independent of the others
    assert torch.equal(ghost.running_mean, before)


def test_ghost_indivisible_batch_raises():
    ghost = GhostBatchNorm2d(3, 4)
    with pytest.raises(ValueError, match="batch of 6 samples is not divisible by the ghost BatchNorm batch size 4"):
        ghost(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match="positive integer"):
        GhostBatchNorm2d(3, 0)


def test_resnet8_without_bn_trains():
    # Eight random images, each with its own colour so global average pooling can tell them apart.
    torch.manual_seed(0)
    model = cifar_resnet(8, batchnorm=False, residual_init="zero")
    x = torch.randn(8, 3, 1, 1) + 0.5 * torch.randn(8, 3, 8, 8)
    y = torch.arange(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0]


def test_resnet_with_ghost_bn_trains_one_step():
    model = cifar_resnet(8, bn_batch_size=2)
    x = torch.randn(4, 3, 16, 16)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
