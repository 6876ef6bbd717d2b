"""The large image nets stacked: each member is its plain module.

keskar_c2, alexnet, vgg11_bn and mobilenetv2 have millions of weights whatever the input
size, so they get this one test (a train step, then an evaluation) rather than every test of
tests/test_stacked_models.py, through the stacked leaves (convolutions grouped over the
members, depthwise ones included, dropout on 4-D activations); the member-by-member path is
the plain module itself and is covered there. float64, so that "the same computation" can be
checked to ~1e-10, except mobilenetv2: PyTorch's CPU depthwise convolution in float64 is ~25x
slower than in float32 (seconds a layer at K * 960 groups), so it runs in float32 with
tolerances far below what another member's weights or examples leaking in would change.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from batchlab.models import build_model
from batchlab.stacked import models
from batchlab.stacked.models import build_stacked_model

SEEDS = [3, 7]
INPUT_SHAPE = (3, 8, 8)
NUM_CLASSES = 10
BATCH = 4
CASES = [("keskar_c2", torch.float64), ("alexnet", torch.float64), ("vgg11_bn", torch.float64),
         ("mobilenetv2", torch.float32)]


def _close(actual: torch.Tensor, expected: torch.Tensor, scale: float, what: str) -> None:
    """Equal to ~1e-10 in float64; in float32 to 1e-3 of `scale`, the size of such values in the model
    (a gradient that is zero in exact arithmetic, as a bias before BatchNorm has, is rounding noise)."""
    tol = {"rtol": 0.0, "atol": 1e-10} if expected.dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-3 * scale}
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name, dtype", CASES, ids=[name for name, _ in CASES])
def test_each_member_of_a_large_net_trains_and_evaluates_as_its_plain_module(name, dtype, monkeypatch):
    monkeypatch.setitem(models.MEMBER_LOOP_MIN_BATCH, "cpu", None)  # the stacked leaves, whatever the batch
    stacked = build_stacked_model(name, INPUT_SHAPE, NUM_CLASSES, SEEDS, dtype=dtype)
    gen = torch.Generator().manual_seed(42)
    with torch.no_grad():  # members different everywhere: BN's weight 1 / bias 0 and fresh statistics hide mistakes
        for p in stacked.params.values():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for key, buf in stacked.buffers.items():
            if key.endswith("running_var"):
                buf.mul_(0.5 + torch.rand(buf.shape, generator=gen, dtype=buf.dtype))
    plains = []
    for k in range(len(SEEDS)):
        with torch.device("meta"):  # no time initialising weights that the member's replace
            plain = build_model(name, INPUT_SHAPE, NUM_CLASSES)
        plain.load_state_dict(stacked.member_state_dict(k), assign=True)
        plains.append(plain.train())

    x = torch.randn(len(SEEDS), BATCH, *INPUT_SHAPE, generator=gen, dtype=dtype)
    y = torch.randint(NUM_CLASSES, (len(SEEDS), BATCH), generator=gen)
    out = stacked.forward(x, train=True)
    F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(len(SEEDS), -1).mean(1).sum().backward()
    for k, plain in enumerate(plains):
        expected = plain(x[k])
        _close(out[k].detach(), expected.detach(), expected.abs().max().item(), "logits")
        F.cross_entropy(expected, y[k]).backward()
        grad_scale = max(p.grad.abs().max().item() for p in plain.parameters())
        for key, p in plain.named_parameters():
            _close(stacked.params[key].grad[k], p.grad, grad_scale, key)
        member = stacked.member_state_dict(k)
        for key, value in plain.state_dict().items():  # running statistics, dropout streams
            _close(member[key], value, value.abs().max().item(), key)
    out = stacked.forward(x, train=False)
    for k, plain in enumerate(plains):
        expected = plain.eval()(x[k])
        _close(out[k], expected, expected.abs().max().item(), "eval logits")
