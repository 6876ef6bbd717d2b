"""Stacked models: each member behaves exactly like its plain module, alone.

The plain modules of batchlab.models are the reference. Comparisons run in float64 so
that "the same computation" can be checked to ~1e-10; isolation is checked bit for bit.
Every model is covered: classification (signals, images), segmentation (dense logits
(K, B, C, H, W)) and the language model (token inputs, logits (K, B, V, T)); so are models
the stacked code has never seen, and one it cannot stack.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.models import BN_MODELS, MODEL_INPUTS, MODEL_NAMES, build_model, uses_batchnorm
from batchlab.stacked import layers, models
from batchlab.stacked.models import StackedModel, build_stacked_model, stack_modules

SEEDS = [3, 0, 7]
NUM_CLASSES = 10
BATCH = 4
TIGHT = {"atol": 1e-10, "rtol": 0.0}

# (name, input_shape, bn_batch_size, options): every family, plain and ghost BatchNorm, dropout, tiny inputs.
CASES = [
    ("mlp", (40,), None, {}),
    ("cnn", (40,), None, {}),
    ("gru", (40,), None, {}),
    ("resnet8", (3, 8, 8), None, {}),
    ("resnet8_bn", (3, 8, 8), None, {}),
    ("resnet20", (3, 8, 8), 2, {}),
    ("resnet20_nobn", (3, 8, 8), None, {"residual_init": "zero"}),
    ("alexnet_reduced", (3, 8, 8), None, {}),
    ("keskar_f1", (1, 8, 8), None, {}),
    ("keskar_c1", (3, 8, 8), None, {}),  # dropout 0.5 after both hidden FC layers
    ("drn", (3, 16, 16), None, {}),  # output stride 8: 2x2 feature maps, dilated convs reach into the padding
    ("lstm_lm", (6,), None, {}),  # 6 tokens, a vocabulary of NUM_CLASSES
    ("lstm_lm", (6,), None, {"dropout": 0.3}),  # per-layer LSTMs with dropout around them
]
CASE_IDS = [f"{name}-ghost{bn}" if bn else name + "".join(f"-{k}{v}" for k, v in opts.items())
            for name, _, bn, opts in CASES]
CASE = dict(zip(CASE_IDS, CASES))
# Tiny inputs of every model, for tests over MODEL_NAMES.
KIND_SHAPES = {"signal": (40,), "image": (3, 8, 8), "segmentation": (3, 16, 16), "tokens": (6,)}
INPUT_SHAPES = {name: KIND_SHAPES[MODEL_INPUTS[name]] for name in MODEL_NAMES} | {n: s for n, s, *_ in CASES}
assert {MODEL_INPUTS[name] for name, *_ in CASES} == set(KIND_SHAPES), "a case of every kind of input"
# The large image nets (millions of weights whatever the input size) have a test of their own
# (tests/test_models_stacked_large.py); resnet32* and keskar_c3/c4 are classes covered here.
LARGE = {"keskar_c2", "alexnet", "vgg11_bn", "mobilenetv2"}
SAME_CLASS = {"resnet32", "resnet32_nobn", "keskar_c3", "keskar_c4"}
assert {name for name, *_ in CASES} | LARGE | SAME_CLASS == set(MODEL_NAMES)


@pytest.fixture(autouse=True, params=["grouped", "member-loop"])
def layout(request, monkeypatch):
    """Every test twice: all members at once (conv nets as grouped convolutions, recurrent nets
    as one loop over time steps), and member by member (conv nets through the plain module, as
    on a CPU at large batches; recurrent leaves through the fused kernel)."""
    loop = request.param == "member-loop"
    monkeypatch.setitem(models.MEMBER_LOOP_MIN_BATCH, "cpu", 1 if loop else None)
    fused = {"lstm": None if loop else 0, "gru": None if loop else 0}
    monkeypatch.setitem(layers.RECURRENT_MEMBER_LOOP, "cpu", fused)
    return request.param


def _perturbed_stack(name, input_shape, bn_batch_size, options) -> StackedModel:
    """A float64 stack whose members are made different everywhere: zero-initialised
    branches, BN's weight 1 / bias 0 and fresh running statistics would hide mistakes."""
    stacked = build_stacked_model(name, input_shape, NUM_CLASSES, SEEDS, bn_batch_size, dtype=torch.float64,
                                  options=options)
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


def _plain_members(stacked: StackedModel, input_shape, bn_batch_size, options) -> list[torch.nn.Module]:
    members = []
    for k in range(stacked.k):
        module = build_model(stacked.name, input_shape, NUM_CLASSES, bn_batch_size, **options).double()
        module.load_state_dict(stacked.member_state_dict(k))
        members.append(module)
    return members


def _inputs(name, shape, gen) -> torch.Tensor:
    """Inputs of `shape` (leading batch dimensions included) for the model: token ids or floats."""
    if MODEL_INPUTS[name] == "tokens":
        return torch.randint(NUM_CLASSES, shape, generator=gen)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def _targets_shape(name, input_shape) -> tuple[int, ...]:
    """A target per example (classification), per token, or per pixel."""
    kind = MODEL_INPUTS[name]
    return tuple(input_shape) if kind == "tokens" else tuple(input_shape[1:]) if kind == "segmentation" else ()


def _logits_shape(name, input_shape, k, b) -> tuple[int, ...]:
    """The class on dim 2: (K, B, C), (K, B, V, T), (K, B, C, H, W)."""
    return (k, b, NUM_CLASSES, *_targets_shape(name, input_shape))


def _batch(name, input_shape, k=len(SEEDS), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = _inputs(name, (k, BATCH, *input_shape), gen)
    y = torch.randint(NUM_CLASSES, (k, BATCH, *_targets_shape(name, input_shape)), generator=gen)
    return x, y


def _summed_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over members of each member's mean cross-entropy (over examples, tokens or pixels)."""
    per_target = F.cross_entropy(logits.flatten(0, 1), y.flatten(0, 1), reduction="none")
    return per_target.view(y.shape[0], -1).mean(1).sum()


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
    input_shape = INPUT_SHAPES[name]
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
    name, input_shape, bn, options = case
    stacked = _perturbed_stack(*case)
    plains = _plain_members(stacked, input_shape, bn, options)
    for step in range(2):  # twice, so running statistics build on an update
        x, _ = _batch(name, input_shape, seed=step)
        out = stacked.forward(x, train=True)
        assert out.shape == _logits_shape(name, input_shape, 3, BATCH)
        for k, plain in enumerate(plains):
            torch.testing.assert_close(out[k], plain.train()(x[k]), **TIGHT)
    for k, plain in enumerate(plains):
        expected = plain.state_dict()
        for key, value in stacked.member_state_dict(k).items():
            torch.testing.assert_close(value, expected[key], **TIGHT)
    counters = [key for key in stacked.buffers if key.endswith("num_batches_tracked")]
    assert bool(counters) == uses_batchnorm(name)
    assert all(stacked.buffers[key].tolist() == [2, 2, 2] for key in counters)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_eval_forward_matches_plain_modules_and_leaves_buffers(case):
    name, input_shape, bn, options = case
    stacked = _perturbed_stack(*case)
    plains = _plain_members(stacked, input_shape, bn, options)
    buffers_before = {key: b.clone() for key, b in stacked.buffers.items()}
    x, _ = _batch(name, input_shape)
    x = x[:, :3]  # in eval mode the batch need not be a multiple of the ghost batch size
    out = stacked.forward(x, train=False)
    for k, plain in enumerate(plains):
        torch.testing.assert_close(out[k], plain.eval()(x[k]), **TIGHT)
    assert all(torch.equal(stacked.buffers[key], before) for key, before in buffers_before.items())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_summed_loss_gives_each_member_its_own_gradient(case):
    name, input_shape, bn, options = case
    stacked = _perturbed_stack(*case)
    plains = _plain_members(stacked, input_shape, bn, options)
    x, y = _batch(name, input_shape)
    _, grads = _outputs_and_grads(stacked, x, y)
    for k, plain in enumerate(plains):
        F.cross_entropy(plain.train()(x[k]), y[k]).backward()
        for key, p in plain.named_parameters():
            torch.testing.assert_close(grads[key][k], p.grad, **TIGHT, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_members_are_isolated_bit_for_bit(case):
    name, input_shape, _, _ = case
    stacked = _perturbed_stack(*case)
    x, y = _batch(name, input_shape)
    others = [0, 2]

    base = stacked.select([0, 1, 2])  # select copies: each run starts from the same state
    out, grads = _outputs_and_grads(base, x, y)

    changed = stacked.select([0, 1, 2])
    with torch.no_grad():
        for p in changed.params.values():
            p[1].mul_(-3.0).add_(1.0)
    x_changed = x.clone()
    fresh = _inputs(name, x[1].shape, torch.Generator().manual_seed(9))
    x_changed[1] = fresh if fresh.dtype == torch.int64 else 5 * fresh  # other tokens, or larger inputs
    out_changed, grads_changed = _outputs_and_grads(changed, x_changed, y)

    poisoned = stacked.select([0, 1, 2])
    x_nan = x.clone()
    if MODEL_INPUTS[name] == "tokens":  # no NaN token: poison the embedding of member 1's first token
        with torch.no_grad():
            poisoned.params["encoder.weight"][1, x[1, 0, 0]] = float("nan")
    else:
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


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_select_keeps_exactly_those_members(case):
    name, input_shape, _, _ = case
    stacked = _perturbed_stack(*case)
    picked = stacked.select([2, 0])
    assert picked.k == 2
    _assert_state_dicts_equal(picked.member_state_dict(0), stacked.member_state_dict(2))
    _assert_state_dicts_equal(picked.member_state_dict(1), stacked.member_state_dict(0))
    x, _ = _batch(name, input_shape)
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


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_load_member_round_trips_a_plain_state_dict(case):
    name, input_shape, bn, options = case
    stacked = build_stacked_model(name, input_shape, NUM_CLASSES, SEEDS, bn, options=options)
    untouched = [stacked.member_state_dict(k) for k in (0, 2)]
    torch.manual_seed(11)
    plain = build_model(name, input_shape, NUM_CLASSES, bn, **options)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p))
    x = _inputs(name, (4, *input_shape), torch.Generator().manual_seed(3))
    plain(x if x.dtype == torch.int64 else x.float())  # train mode: running statistics and counters move
    stacked.load_member(1, plain.state_dict())
    _assert_state_dicts_equal(stacked.member_state_dict(1), plain.state_dict())
    _assert_state_dicts_equal(stacked.member_state_dict(0), untouched[0])
    _assert_state_dicts_equal(stacked.member_state_dict(2), untouched[1])
    assert all(p.is_leaf and p.grad_fn is None for p in stacked.params.values())
    first_key, first = next(iter(plain.state_dict().items()))
    with pytest.raises(KeyError, match="missing"):
        stacked.load_member(0, {first_key: first})


ONE_IDS = ["gru", "resnet8_bn", "keskar_f1", "keskar_c1", "drn", "lstm_lm", "lstm_lm-dropout0.3"]


@pytest.mark.parametrize("case", [CASE[i] for i in ONE_IDS], ids=ONE_IDS)
def test_a_stack_of_one_is_the_plain_model(case):
    name, input_shape, bn, options = case
    stacked = build_stacked_model(name, input_shape, NUM_CLASSES, [5], bn, dtype=torch.float64, options=options)
    (plain,) = _plain_members(stacked, input_shape, bn, options)
    x, y = _batch(name, input_shape, k=1)
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
    with pytest.raises(ValueError, match="modules are not resnet20_nobn"):
        stack_modules("resnet20_nobn", [build_model("resnet20", (3, 8, 8), 10)])
    with pytest.raises(ValueError, match="plain BatchNorm without ghost batches, so bn_batch_size=2"):
        stack_modules("drn", [build_model("drn", (3, 16, 16), 10)], bn_batch_size=2)
    with pytest.raises(TypeError, match="expected a KeskarC1 module, got DRNSeg"):
        stack_modules("keskar_c1", [build_model("drn", (3, 16, 16), 10)])
    with pytest.raises(ValueError, match="ghost BatchNorm batch size 2, bn_batch_size=4"):
        stack_modules("my_resnet", modules, bn_batch_size=4)  # a name outside the registry: still checked


def test_stack_modules_checks_the_models_options():
    with_dropout = [build_model("lstm_lm", (6,), NUM_CLASSES, dropout=0.3) for _ in range(2)]
    assert stack_modules("lstm_lm", with_dropout, options={"dropout": 0.3}).k == 2
    with pytest.raises(ValueError, match="modules are not lstm_lm with bn_batch_size=None: lstm is ModuleList, LSTM "):
        stack_modules("lstm_lm", with_dropout)  # the default, dropout 0, has one two-layer nn.LSTM
    plain = [build_model("lstm_lm", (6,), NUM_CLASSES)]
    with pytest.raises(ValueError, match="lstm_lm with bn_batch_size=None, dropout=0.3: lstm is LSTM, ModuleList "):
        stack_modules("lstm_lm", plain, options={"dropout": 0.3})
    with pytest.raises(ValueError, match="model 'resnet8' has no option 'dropout'; its options are residual_init"):
        stack_modules("resnet8", [build_model("resnet8", (3, 8, 8), NUM_CLASSES)], options={"dropout": 0.1})


def test_build_stacked_model_passes_options_to_every_member():
    stacked = build_stacked_model("lstm_lm", (6,), NUM_CLASSES, SEEDS, options={"dropout": 0.3})
    for k, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        _assert_state_dicts_equal(stacked.member_state_dict(k), build_model("lstm_lm", (6,), NUM_CLASSES,
                                                                            dropout=0.3).state_dict())
    streams = [key for key in stacked.buffers if key.endswith("stream")]
    assert streams == ["dropouts.0.stream", "dropouts.1.stream", "dropouts.2.stream"]
    seeds = torch.stack([stacked.buffers[key][:, 0] for key in streams])  # (layers, K)
    assert seeds.unique().numel() == seeds.numel()  # every member and layer its own stream
    zero = build_stacked_model("resnet8", (3, 8, 8), NUM_CLASSES, SEEDS, options={"residual_init": "zero"})
    assert all(torch.count_nonzero(zero.params[f"stages.{i}.0.conv2.weight"]) == 0 for i in range(3))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_to_converts_floating_tensors_and_keeps_fresh_leaves(case):
    name, input_shape, bn, options = case
    stacked = build_stacked_model(name, input_shape, NUM_CLASSES, SEEDS, bn, options=options).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in stacked.params.values())
    for key, b in stacked.buffers.items():  # BN's counters and dropout's streams stay integers
        assert b.dtype == (torch.int64 if key.endswith(("num_batches_tracked", "stream")) else torch.float64), key
    assert all(p.is_leaf and p.requires_grad for p in stacked.params.values())
    assert all(p.device.type == "cpu" for p in stacked.to("cpu").params.values())
    x, _ = _batch(name, input_shape)
    assert stacked.forward(x, train=False).dtype == torch.float64


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
    """Per target (example, token or labelled pixel), with mean IoU where there are pixels."""
    from batchlab.data import IGNORE_INDEX
    from batchlab.metrics import member_confusion, mean_iou
    from batchlab.train import evaluate, evaluate_stack

    name, input_shape, bn, options = CASE[case]
    stacked = _perturbed_stack(name, input_shape, bn, options)
    x, y = (t[0] for t in _batch(name, input_shape, k=1, seed=1))  # (BATCH, ...) inputs and targets
    x, y = torch.cat([x, x[:2]]), torch.cat([y, y[:2]])  # 10 examples: chunks of 8 and 2
    segmentation = MODEL_INPUTS[name] == "segmentation"
    if segmentation:
        y[:3, :2] = IGNORE_INDEX  # unlabelled pixels count nowhere
    scores = evaluate_stack(stacked, x, y, batch_size=8, num_classes=NUM_CLASSES, miou=segmentation)
    assert len(scores) == (3 if segmentation else 2)
    for k, reference in enumerate(_plain_members(stacked, input_shape, bn, options)):
        ref_loss, ref_acc = evaluate(reference, x, y)
        assert scores[0][k] == pytest.approx(ref_loss, rel=1e-10) and scores[1][k] == pytest.approx(ref_acc, rel=1e-12)
        if segmentation:
            with torch.no_grad():
                confusion = member_confusion(reference.eval()(x)[None], y[None], NUM_CLASSES)
            assert scores[2][k] == pytest.approx(mean_iou(confusion)[0].item(), rel=1e-12)


def test_the_stacked_lstm_is_nn_lstm_over_longer_sequences():
    """Two layers over 40 steps, float64: outputs and every gradient as nn.LSTM's."""
    stacked = _perturbed_stack("lstm_lm", (40,), None, {})
    plains = _plain_members(stacked, (40,), None, {})
    assert all(isinstance(plain.lstm, torch.nn.LSTM) and plain.lstm.num_layers == 2 for plain in plains)
    x, y = _batch("lstm_lm", (40,))
    out, grads = _outputs_and_grads(stacked, x, y)
    for k, plain in enumerate(plains):
        plain_out = plain(x[k])
        torch.testing.assert_close(out[k], plain_out.detach(), **TIGHT)
        F.cross_entropy(plain_out, y[k]).backward()
        for key, p in plain.named_parameters():
            torch.testing.assert_close(grads[key][k], p.grad, **TIGHT, msg=lambda m: f"{key}: {m}")


def test_a_token_out_of_a_members_vocabulary_raises_instead_of_reading_another_member():
    stacked = build_stacked_model("lstm_lm", (6,), NUM_CLASSES, SEEDS)
    x = torch.zeros(3, 2, 6, dtype=torch.int64)
    x[0, 0, 0] = NUM_CLASSES  # would be row 0 of member 1's table in a flattened (K*V, E) lookup
    with pytest.raises(IndexError):
        stacked.forward(x, train=True)


# ---------------------------------------------------------------------------------------
# Models the stacked code has never seen.


class VGG(nn.Module):
    """A small VGG-style net: (conv-BN-ReLU-max-pool) x 2, then an MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class Zoo(nn.Module):
    """Leaf settings no registered model uses: a strided, dilated, grouped Conv1d, BatchNorm1d over
    (N, C, L) with a cumulative average and without affine parameters or running statistics, a
    sequence-first two-layer bidirectional LSTM, a biasless two-layer GRU given a hidden state,
    its final states read, and a Linear over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.norm = nn.BatchNorm1d(6, momentum=None)
        self.free_norm = nn.BatchNorm1d(6, affine=False, track_running_stats=False)
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(10, 3, num_layers=2, batch_first=True, bias=False)
        self.head = nn.Linear(3, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.free_norm(self.norm(self.conv(x)))  # (N, 6, L')
        h, (h_n, c_n) = self.lstm(h.permute(2, 0, 1))  # (L', N, 10)
        h, g_n = self.gru(h.transpose(0, 1), h_n[:2, :, :3].contiguous())  # (N, L', 3)
        return self.head(h).mean(1) + c_n.sum((0, 2)).unsqueeze(1) + g_n.sum((0, 2)).unsqueeze(1)


class Unstackable(nn.Module):
    """A LayerNorm, and a module of its own with a raw nn.Parameter: leaves with no stacked version."""

    class Scale(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(n))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(40, 16)
        self.norm = nn.LayerNorm(16)
        self.scale = self.Scale(16)
        self.bn = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.bn(self.scale(self.norm(self.fc(x))))))


def _custom_members(make) -> list[nn.Module]:
    """float64 members of seeds SEEDS, their parameters and running statistics perturbed apart."""
    gen = torch.Generator().manual_seed(42)
    members = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        module = make().double()
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            for key, buf in module.named_buffers():
                if key.endswith("running_var"):
                    buf.mul_(0.5 + torch.rand(buf.shape, generator=gen, dtype=buf.dtype))
        members.append(module)
    return members


def _assert_stack_matches_members(stacked: StackedModel, members: list[nn.Module], input_shape) -> None:
    """Two train steps' outputs, accumulated gradients and running statistics, then an eval forward."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(len(members), BATCH, *input_shape, generator=gen, dtype=torch.float64)
        y = torch.randint(NUM_CLASSES, (len(members), BATCH), generator=gen)
        out, grads = _outputs_and_grads(stacked, x, y)
        for k, member in enumerate(members):
            expected = member.train()(x[k])
            torch.testing.assert_close(out[k], expected.detach(), **TIGHT)
            F.cross_entropy(expected, y[k]).backward()
    for k, member in enumerate(members):
        for key, p in member.named_parameters():
            torch.testing.assert_close(grads[key][k], p.grad, **TIGHT, msg=lambda m: f"{key}: {m}")
        for key, value in member.state_dict().items():
            torch.testing.assert_close(stacked.member_state_dict(k)[key], value, **TIGHT, msg=lambda m: f"{key}: {m}")
    out = stacked.forward(x, train=False)
    for k, member in enumerate(members):
        torch.testing.assert_close(out[k], member.eval()(x[k]), **TIGHT)


def test_a_vgg_never_seen_stacks_and_each_member_is_its_plain_module():
    members = _custom_members(VGG)
    stacked = stack_modules("vgg", members)
    assert list(stacked.params) == [key for key, _ in members[0].named_parameters()]
    assert all(isinstance(stacked.params[key], nn.Parameter) for key in stacked.params)
    _assert_stack_matches_members(stacked, members, (3, 8, 8))


def test_leaf_settings_no_registered_model_uses_stack_exactly(monkeypatch):
    monkeypatch.setitem(models.MEMBER_LOOP_MIN_BATCH, "cpu", None)  # the stacked leaves, recurrent ones both ways
    members = _custom_members(Zoo)
    stacked = stack_modules("zoo", members)
    assert not stacked.runs_member_by_member(BATCH, torch.device("cpu"))
    _assert_stack_matches_members(stacked, members, (4, 12))


def test_torch_dropout_is_stacked_with_a_warning_that_members_share_its_generator(caplog):
    class Dropping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(40, NUM_CLASSES)
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.drop(self.fc(x))

    with caplog.at_level(logging.WARNING, logger=models.__name__):
        stack_modules("dropping", [Dropping(), Dropping()])
    assert "dropping: drop (Dropout) draws every member's masks from torch's global generator" in caplog.text


def test_a_model_with_leaves_that_cannot_be_stacked_warns_and_runs_member_by_member(caplog):
    members = _custom_members(Unstackable)
    with caplog.at_level(logging.WARNING, logger=models.__name__):
        stacked = stack_modules("unstackable", members)
    assert "norm (LayerNorm): no stacked version" in caplog.text
    assert "scale (Scale): no stacked version" in caplog.text
    assert "fc " not in caplog.text and "bn " not in caplog.text  # leaves with a stacked version say nothing
    assert stacked.runs_member_by_member(BATCH, torch.device("cpu"))
    assert all(p.is_leaf and p.requires_grad and p.shape[0] == len(SEEDS) for p in stacked.params.values())
    _assert_stack_matches_members(stacked, members, (40,))
    picked = stacked.select([2, 0])
    _assert_state_dicts_equal(picked.member_state_dict(0), stacked.member_state_dict(2))
