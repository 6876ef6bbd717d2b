"""Stacked models: each member behaves exactly like its plain module, alone.

The plain modules of batchlab.models are the reference. Comparisons run in float64 so
that "the same computation" can be checked to ~1e-10; isolation is checked bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from batchlab.models import BN_MODELS, MODEL_NAMES, build_model
from batchlab.stacked import models
from batchlab.stacked.models import StackedModel, build_stacked_model, stack_modules

SEEDS = [3, 0, 7]
NUM_CLASSES = 10
BATCH = 4
TIGHT = {"atol": 1e-10, "rtol": 0.0}

# (name, input_shape, bn_batch_size): every family, plain and ghost BatchNorm, tiny inputs.
CASES = [
    ("mlp", (40,), None),
    ("cnn", (40,), None),
    ("gru", (40,), None),
    ("resnet8", (3, 8, 8), None),
    ("resnet8_bn", (3, 8, 8), None),
    ("resnet20", (3, 8, 8), 2),
]
CASE_IDS = [f"{name}-ghost{bn}" if bn else name for name, _, bn in CASES]
CASE = dict(zip(CASE_IDS, CASES))


@pytest.fixture(autouse=True, params=["grouped", "member-loop"])
def layout(request, monkeypatch):
    """Every test twice: the conv nets as grouped convolutions, and (as on a CPU at large
    batches) member by member through the plain module."""
    monkeypatch.setattr(models, "CPU_MEMBER_LOOP_MIN_BATCH", 10**9 if request.param == "grouped" else 1)
    return request.param


def _perturbed_stack(name, input_shape, bn_batch_size) -> StackedModel:
    """A float64 stack whose members are made different everywhere: zero-initialised
    branches, BN's weight 1 / bias 0 and fresh running statistics would hide mistakes."""
    stacked = build_stacked_model(name, input_shape, NUM_CLASSES, SEEDS, bn_batch_size, dtype=torch.float64)
    gen = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for p in stacked.params.values():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for key, buf in stacked.buffers.items():
            if key.endswith("running_mean"):
                buf.add_(0.2 * torch.randn(buf.shape, generator=gen, dtype=buf.dtype))
            elif key.endswith("running_var"):
                buf.mul_(0.5 + torch.rand(buf.shape, generator=gen, dtype=buf.dtype))
    return stacked


def _plain_members(stacked: StackedModel, input_shape, bn_batch_size) -> list[torch.nn.Module]:
    members = []
    for k in range(stacked.k):
        module = build_model(stacked.name, input_shape, NUM_CLASSES, bn_batch_size).double()
        module.load_state_dict(stacked.member_state_dict(k))
        members.append(module)
    return members


def _batch(input_shape, k=len(SEEDS), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(k, BATCH, *input_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(NUM_CLASSES, (k, BATCH), generator=gen)
    return x, y


def _summed_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over members of each member's mean cross-entropy."""
    per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    return per_sample.view(y.shape).mean(1).sum()


def _outputs_and_grads(stacked: StackedModel, x, y, train=True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = stacked.forward(x, train)
    _summed_loss(out, y).backward()
    return out.detach(), {key: p.grad for key, p in stacked.params.items()}


def _assert_state_dicts_equal(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert torch.equal(actual[key], expected[key]), key


@pytest.mark.parametrize(
    "name, bn_batch_size", [(name, None) for name in MODEL_NAMES] + [(name, 2) for name in BN_MODELS]
)
def test_members_are_the_models_the_single_run_trainer_builds(name, bn_batch_size):
    input_shape = (40,) if name in ("mlp", "cnn", "gru") else (3, 8, 8)
    stacked = build_stacked_model(name, input_shape, NUM_CLASSES, SEEDS, bn_batch_size)
    assert stacked.k == len(SEEDS) and stacked.name == name
    for k, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        plain = build_model(name, input_shape, NUM_CLASSES, bn_batch_size)
        _assert_state_dicts_equal(stacked.member_state_dict(k), plain.state_dict())
    assert all(p.is_leaf and p.requires_grad and p.shape[0] == 3 for p in stacked.params.values())
    assert all(b.shape[0] == 3 for b in stacked.buffers.values())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_train_forward_matches_plain_modules_including_running_stats(case):
    name, input_shape, bn = case
    stacked = _perturbed_stack(*case)
    plains = _plain_members(stacked, input_shape, bn)
    for step in range(2):  # twice, so running statistics build on an update
        x, _ = _batch(input_shape, seed=step)
        out = stacked.forward(x, train=True)
        assert out.shape == (3, BATCH, NUM_CLASSES)
        for k, plain in enumerate(plains):
            torch.testing.assert_close(out[k], plain.train()(x[k]), **TIGHT)
    for k, plain in enumerate(plains):
        expected = plain.state_dict()
        for key, value in stacked.member_state_dict(k).items():
            torch.testing.assert_close(value, expected[key], **TIGHT)
        if bn:
            assert stacked.member_state_dict(k)["stem.1.num_batches_tracked"].item() == 2


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_eval_forward_matches_plain_modules_and_leaves_buffers(case):
    name, input_shape, bn = case
    stacked = _perturbed_stack(*case)
    plains = _plain_members(stacked, input_shape, bn)
    buffers_before = {key: b.clone() for key, b in stacked.buffers.items()}
    x, _ = _batch(input_shape)
    x = x[:, :3]  # in eval mode the batch need not be a multiple of the ghost batch size
    out = stacked.forward(x, train=False)
    for k, plain in enumerate(plains):
        torch.testing.assert_close(out[k], plain.eval()(x[k]), **TIGHT)
    assert all(torch.equal(stacked.buffers[key], before) for key, before in buffers_before.items())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_summed_loss_gives_each_member_its_own_gradient(case):
    name, input_shape, bn = case
    stacked = _perturbed_stack(*case)
    plains = _plain_members(stacked, input_shape, bn)
    x, y = _batch(input_shape)
    _, grads = _outputs_and_grads(stacked, x, y)
    for k, plain in enumerate(plains):
        F.cross_entropy(plain.train()(x[k]), y[k]).backward()
        for key, p in plain.named_parameters():
            torch.testing.assert_close(grads[key][k], p.grad, **TIGHT, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_members_are_isolated_bit_for_bit(case):
    name, input_shape, _ = case
    stacked = _perturbed_stack(*case)
    x, y = _batch(input_shape)
    others = [0, 2]

    base = stacked.select([0, 1, 2])  # select copies: each run starts from the same state
    out, grads = _outputs_and_grads(base, x, y)

    changed = stacked.select([0, 1, 2])
    with torch.no_grad():
        for p in changed.params.values():
            p[1].mul_(-3.0).add_(1.0)
    x_changed = x.clone()
    x_changed[1] = torch.randn(x[1].shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype) * 5
    out_changed, grads_changed = _outputs_and_grads(changed, x_changed, y)

    poisoned = stacked.select([0, 1, 2])
    x_nan = x.clone()
    x_nan[1, 0].view(-1)[0] = float("nan")
    out_nan, grads_nan = _outputs_and_grads(poisoned, x_nan, y)
    assert out_nan[1].isnan().any()  # the NaN did reach member 1

    for other, other_out, other_grads in ((changed, out_changed, grads_changed), (poisoned, out_nan, grads_nan)):
        assert torch.equal(other_out[others], out[others])
        assert other_out[others].isfinite().all()
        for key in grads:
            assert torch.equal(other_grads[key][others], grads[key][others]), key
            assert other_grads[key][others].isfinite().all(), key
        for key in base.buffers:  # running statistics after the train-mode forward
            assert torch.equal(other.buffers[key][others], base.buffers[key][others]), key


@pytest.mark.parametrize("case", [CASE["cnn"], CASE["resnet20-ghost2"]], ids=["cnn", "resnet20-ghost2"])
def test_select_keeps_exactly_those_members(case):
    name, input_shape, _ = case
    stacked = _perturbed_stack(*case)
    picked = stacked.select([2, 0])
    assert picked.k == 2
    _assert_state_dicts_equal(picked.member_state_dict(0), stacked.member_state_dict(2))
    _assert_state_dicts_equal(picked.member_state_dict(1), stacked.member_state_dict(0))
    x, _ = _batch(input_shape)
    torch.testing.assert_close(picked.forward(x[[2, 0]], train=False), stacked.forward(x, train=False)[[2, 0]], **TIGHT)
    # Fresh tensors: changing the selection leaves the original alone.
    assert all(p.is_leaf and p.requires_grad for p in picked.params.values())
    before = stacked.member_state_dict(2)
    with torch.no_grad():
        for p in picked.params.values():
            p.zero_()
        for b in picked.buffers.values():
            b.zero_()
    _assert_state_dicts_equal(stacked.member_state_dict(2), before)


def test_load_member_round_trips_a_plain_state_dict():
    stacked = build_stacked_model("resnet8_bn", (3, 8, 8), NUM_CLASSES, SEEDS)
    untouched = [stacked.member_state_dict(k) for k in (0, 2)]
    torch.manual_seed(11)
    plain = build_model("resnet8_bn", (3, 8, 8), NUM_CLASSES)
    plain(torch.randn(4, 3, 8, 8))  # train mode: running statistics and num_batches_tracked move
    stacked.load_member(1, plain.state_dict())
    _assert_state_dicts_equal(stacked.member_state_dict(1), plain.state_dict())
    _assert_state_dicts_equal(stacked.member_state_dict(0), untouched[0])
    _assert_state_dicts_equal(stacked.member_state_dict(2), untouched[1])
    assert all(p.is_leaf and p.grad_fn is None for p in stacked.params.values())
    with pytest.raises(KeyError, match="missing"):
        stacked.load_member(0, {"fc.weight": plain.fc.weight})


@pytest.mark.parametrize("case", [CASE["gru"], CASE["resnet8_bn"]], ids=["gru", "resnet8_bn"])
def test_a_stack_of_one_is_the_plain_model(case):
    name, input_shape, bn = case
    stacked = build_stacked_model(name, input_shape, NUM_CLASSES, [5], bn, dtype=torch.float64)
    (plain,) = _plain_members(stacked, input_shape, bn)
    x, y = _batch(input_shape, k=1)
    out, grads = _outputs_and_grads(stacked, x, y)
    plain_out = plain.train()(x[0])
    F.cross_entropy(plain_out, y[0]).backward()
    torch.testing.assert_close(out[0], plain_out.detach(), **TIGHT)
    for key, p in plain.named_parameters():
        torch.testing.assert_close(grads[key][0], p.grad, **TIGHT)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(stacked.member_state_dict(0)[key], value, **TIGHT)


def test_stack_modules_takes_current_weights_and_checks_them():
    modules = [build_model("resnet8_bn", (3, 8, 8), NUM_CLASSES, 2) for _ in range(2)]
    modules[1](torch.randn(4, 3, 8, 8))  # running statistics of member 1 only
    stacked = stack_modules("resnet8_bn", modules, bn_batch_size=2)
    for k, module in enumerate(modules):
        _assert_state_dicts_equal(stacked.member_state_dict(k), module.state_dict())
    with pytest.raises(ValueError, match="ghost BatchNorm batch size 2, bn_batch_size=None"):
        stack_modules("resnet8_bn", modules)
    with pytest.raises(ValueError, match="differs in architecture"):
        stack_modules("mlp", [build_model("mlp", (40,), 10), build_model("mlp", (41,), 10)])
    with pytest.raises(TypeError, match="expected a CNN module, got MLP"):
        stack_modules("cnn", [build_model("mlp", (40,), 10)])
    with pytest.raises(ValueError, match="modules are not resnet20"):
        stack_modules("resnet20", [build_model("resnet8_bn", (3, 8, 8), 10)])
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        stack_modules("vgg", modules)


def test_to_converts_floating_tensors_and_keeps_fresh_leaves():
    stacked = build_stacked_model("resnet8_bn", (3, 8, 8), NUM_CLASSES, SEEDS).to(torch.float64)
    assert stacked.params["fc.weight"].dtype == torch.float64
    assert stacked.buffers["stem.1.running_var"].dtype == torch.float64
    assert stacked.buffers["stem.1.num_batches_tracked"].dtype == torch.int64
    assert all(p.is_leaf and p.requires_grad for p in stacked.params.values())
    assert stacked.to("cpu").params["fc.weight"].device.type == "cpu"


def test_input_errors_are_explicit():
    stacked = build_stacked_model("resnet8_bn", (3, 8, 8), NUM_CLASSES, SEEDS, bn_batch_size=4)
    with pytest.raises(ValueError, match="input has 2 members on its leading dimension, the model 3"):
        stacked.forward(torch.randn(2, 4, 3, 8, 8), train=True)
    with pytest.raises(ValueError, match="batch of 6 samples is not divisible by the ghost BatchNorm batch size 4"):
        stacked.forward(torch.randn(3, 6, 3, 8, 8), train=True)
    with pytest.raises(IndexError, match="member 3 out of range"):
        stacked.member_state_dict(3)


@pytest.mark.parametrize("case", CASE_IDS)
def test_evaluate_stack_gives_each_members_plain_evaluation(case):
    from batchlab.train import evaluate, evaluate_stack

    name, input_shape, bn = CASE[case]
    stacked = _perturbed_stack(name, input_shape, bn)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, *input_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (10,), generator=gen)
    loss, acc = evaluate_stack(stacked, x, y, batch_size=8)  # chunks of 8 and 2
    for k, reference in enumerate(_plain_members(stacked, input_shape, bn)):
        ref_loss, ref_acc = evaluate(reference, x, y)
        assert loss[k] == pytest.approx(ref_loss, rel=1e-10) and acc[k] == ref_acc
