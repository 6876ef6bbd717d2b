"""The language model trained as PyTorch's word_language_model trains it (batchlab.train.language_model):
carried state, stream order, the plateau anneal, and the validation split they read."""

import copy
import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from batchlab import io
from batchlab.config import ConfigError, build_grid, check_config
from batchlab.data import load_prepared
from batchlab.data.catalog import dataset_info
from batchlab.data.fake_release import TEXT_FILES, fake_text, write_fake_release
from batchlab.data.text import encode, prepare_ptb, prepare_wikitext2, read_tokens, read_vocab, windows
from batchlab.models import build_model
from batchlab.stacked.layers import RECURRENT_MEMBER_LOOP
from batchlab.stacked.models import stack_modules
from batchlab.train import language_model as lm
from batchlab.train import loop
from batchlab.train.loop import train_stack
from batchlab.train.plan import make_plan
from tests.conftest import make_spec
from tests.test_train import assert_same_results

BPTT, BATCH, EPOCHS = 5, 4, 2
N_TRAIN_TOKENS, N_TEST_TOKENS = 300, 120  # 59 train windows (14 updates an epoch), 23 test and 23 valid


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("wikitext2")
    write_fake_release("wikitext2", root, N_TRAIN_TOKENS, N_TEST_TOKENS)
    return root


@pytest.fixture(scope="module")
def prepared(release, tmp_path_factory):
    path = tmp_path_factory.mktemp("prepared") / "wikitext2.npz"
    prepare_wikitext2(release, path, bptt=BPTT)
    return path


@pytest.fixture
def data(prepared):
    """The fake corpus, in float64 for exact comparisons (token ids train in torch's default dtype)."""
    torch.set_default_dtype(torch.float64)
    yield load_prepared(prepared)
    torch.set_default_dtype(torch.float32)


def lm_specs(release, language_model=None, base_lrs=(0.5,), seeds=(0,), epochs=EPOCHS, dataset="wikitext2", **study):
    body = {
        "dataset": dataset, "models": ["lstm_lm"], "batch_sizes": [BATCH], "lr_rules": ["constant"],
        "base_lrs": list(base_lrs), "seeds": list(seeds), "optimizer": {"name": "sgd", "momentum": 0.0},
        "budget": {"epochs": epochs}, "eval": {"regular_points": 1, "log_points": 0},
        "checkpoints": {"log_points": 0}, "analysis": {"enabled": False}, **study,
    }
    if language_model is not None:
        body["language_model"] = language_model
    datasets = {"wikitext2": {"root": str(release), "bptt": BPTT}}
    return list(build_grid(check_config({"device": "cpu", "datasets": datasets, "studies": {"s": body}})).values())


def train(specs, data, root, **kwargs):
    dirs = [root / str(i) for i in range(len(specs))]
    return train_stack(specs, data, dirs, device="cpu", progress=False, **kwargs), dirs


def reference_weights(spec, data, epoch_scales):
    """word_language_model's loop, written out on the plain model: batchify, truncated BPTT, state from zero
    at each epoch start, plain SGD at the run's LR times epoch_scales[epoch]."""
    torch.manual_seed(spec.seed)
    model = build_model("lstm_lm", data.input_shape, data.num_classes).to(data.dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr)
    steps = data.n_train // BATCH
    x = data.x_train[: steps * BATCH].view(BATCH, steps, BPTT)  # column b: windows b*steps .. (b+1)*steps - 1
    y = data.y_train[: steps * BATCH].view(BATCH, steps, BPTT)
    for scale in epoch_scales:
        optimizer.param_groups[0]["lr"] = spec.lr * scale
        state = None
        for i in range(steps):
            out, state = model.lstm(model.encoder(x[:, i]), state)
            loss = F.cross_entropy(model.decoder(out).transpose(1, 2), y[:, i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            state = tuple(s.detach() for s in state)
    return model.state_dict()


def assert_weights(run_dir, expected, **tolerance):
    final = io.load_torch(run_dir / "final.pt")["model"]
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, msg=name, **tolerance)


# --- the model's carried state ----------------------------------------------------------------


@pytest.mark.parametrize("time_steps", [False, True])  # the stacked LSTM's two ways: fused per member, or a time loop
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_carried_state_over_windows_equals_one_lstm_call_over_the_stream(dropout, time_steps, monkeypatch):
    """Member by member, a stack of 3 fed window after window gives the logits its plain model gives the
    whole stream in one call (eval mode: the dropout layers are the identity)."""
    monkeypatch.setitem(RECURRENT_MEMBER_LOOP, "cpu", {"lstm": 0 if time_steps else None, "gru": 1})
    models = []
    for seed in (0, 5, 9):
        torch.manual_seed(seed)
        models.append(build_model("lstm_lm", (BPTT,), 17, dropout=dropout).double().eval())
    stream = torch.randint(17, (2, 4 * BPTT))  # 2 columns of 4 windows
    stacked = stack_modules("lstm_lm", models, options={"dropout": dropout})
    module = lm.language_model_module(stacked)
    module.carried_state = lm.zero_state(module, 3 * 2)
    pieces = [stacked.forward(stream[:, i * BPTT : (i + 1) * BPTT].expand(3, 2, BPTT), train=False) for i in range(4)]
    carried = torch.cat(pieces, dim=3)  # (K, B, V, T)
    for k, model in enumerate(models):
        torch.testing.assert_close(carried[k], model(stream), rtol=1e-12, atol=1e-12)
    h, c = module.carried_state  # the state after the stream: each member's own nn.LSTM final state
    for k, model in enumerate(models):
        embedded = model.encoder(stream)
        if dropout == 0:
            _, (h_ref, c_ref) = model.lstm(embedded)
        else:
            finals = []
            for layer in model.lstm:
                embedded, final = layer(embedded)
                finals.append(final)
            h_ref, c_ref = (torch.cat(s) for s in zip(*finals))
        torch.testing.assert_close(h[:, 2 * k : 2 * k + 2], h_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c[:, 2 * k : 2 * k + 2], c_ref, rtol=1e-12, atol=1e-12)


def test_the_carried_state_is_detached_and_left_alone_without_one():
    torch.manual_seed(0)
    model = build_model("lstm_lm", (BPTT,), 11)
    tokens = torch.randint(11, (3, BPTT))
    assert model.carried_state is None
    plain = model(tokens)
    model.carried_state = lm.zero_state(model, 3)
    from_zero = model(tokens)
    torch.testing.assert_close(plain, from_zero, rtol=0, atol=0)  # a zero state is no state
    assert not any(s.requires_grad for s in model.carried_state) and model.carried_state[0].abs().sum() > 0
    model(tokens).sum().backward()  # the in-place update does not break the backward of the state it used


# --- stream order and reset ---------------------------------------------------------------------


def test_stream_order_feeds_window_i_of_every_column_at_update_i():
    order = lm.stream_order(11, 3)  # 3 columns of 3 windows, window 10 dropped
    assert order.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match="cannot fill"):
        lm.stream_order(2, 3)


def test_the_trainer_feeds_the_columns_in_order_and_zeroes_the_state_at_each_epoch_start(release, data, tmp_path,
                                                                                          monkeypatch):
    specs = lm_specs(release, {"carry_state": True}, base_lrs=(0.5, 0.2))
    seen = []
    step = loop.Stack.step

    def spy(self, xb, yb, lr):
        state = lm.language_model_module(self.model).carried_state
        seen.append((xb.clone(), float(state[0].abs().sum() + state[1].abs().sum())))
        return step(self, xb, yb, lr)

    monkeypatch.setattr(loop.Stack, "step", spy)
    train(specs, data, tmp_path)
    steps = data.n_train // BATCH
    assert len(seen) == EPOCHS * steps
    for s, (xb, state_size) in enumerate(seen):
        epoch, i = divmod(s, steps)
        expected = data.x_train[[b * steps + i for b in range(BATCH)]]
        assert torch.equal(xb[0], expected) and torch.equal(xb[1], expected), s  # both members, the same windows
        assert (state_size == 0) == (i == 0), s  # zero exactly at an epoch's first update


def test_a_stack_carrying_state_trains_each_member_as_word_language_model_would(release, data, tmp_path):
    specs = lm_specs(release, {"carry_state": True}, base_lrs=(0.5, 0.2), seeds=(0, 3))
    assert len(specs) == 4  # different LRs and seeds, one stack
    summaries, dirs = train(specs, data, tmp_path)
    for spec, run_dir in zip(specs, dirs):
        assert_weights(run_dir, reference_weights(spec, data, [1.0] * EPOCHS), rtol=1e-9, atol=1e-11)


def test_a_member_leaving_the_stack_leaves_the_others_their_own_state(release, data, tmp_path):
    """A diverging member leaves mid-epoch (evaluations every 7 updates): the others keep their state rows."""
    healthy = lm_specs(release, {"carry_state": True}, base_lrs=(0.5,), seeds=(0, 3),
                       eval={"regular_points": 4, "log_points": 0})
    wild = dataclasses.replace(healthy[0], base_lr=1e6)
    with_wild, dirs = train([healthy[0], wild, healthy[1]], data, tmp_path)
    assert with_wild[1]["status"] == "diverged" and with_wild[1]["steps"] == 7
    for spec, run_dir in ((healthy[0], dirs[0]), (healthy[1], dirs[2])):
        assert_weights(run_dir, reference_weights(spec, data, [1.0] * EPOCHS), rtol=1e-9, atol=1e-11)


def test_evaluation_carries_the_state_over_each_stream(release, data):
    torch.manual_seed(4)
    model = build_model("lstm_lm", data.input_shape, data.num_classes).to(data.dtype)
    stacked = stack_modules("lstm_lm", [model])
    loss, acc = lm.evaluate_streams(stacked, data.x_test, data.y_test, 10)
    steps = len(data.x_test) // 10
    x = data.x_test[: 10 * steps].reshape(10, steps * BPTT)  # each column one contiguous stream
    y = data.y_test[: 10 * steps].reshape(10, steps * BPTT)
    with torch.no_grad():
        logits = model.eval()(x)
    assert loss[0] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)
    assert acc[0] == pytest.approx((logits.argmax(1) == y).double().mean().item(), rel=1e-12)
    assert lm.language_model_module(stacked).carried_state is None  # the model's own state is left as it was


# --- the plateau anneal ----------------------------------------------------------------------------


def test_the_anneal_divides_the_lr_after_each_epoch_that_does_not_improve():
    assert lm.plateau_scale([], 4) == 1.0
    assert lm.plateau_scale([5.0], 4) == 1.0
    assert lm.plateau_scale([5.0, 4.0, 4.5, 3.0, 3.0, 2.0], 4) == 1 / 16  # 4.5 and the second 3.0 do not improve
    assert lm.plateau_scale([5.0, float("nan"), 6.0], 2) == 1 / 4


def test_a_run_anneals_when_its_crafted_valid_loss_stalls(release, data, tmp_path, monkeypatch):
    """Valid losses 9 (step 0), then per epoch 5, 6, 4, 4: the LR is divided by 4 after epochs 2 and 4."""
    epochs = 4
    specs = lm_specs(release, {"carry_state": True, "plateau_anneal": 4}, epochs=epochs)
    crafted = iter([9.0, 5.0, 6.0, 4.0, 4.0])
    evaluate = lm.evaluate_streams

    def fake(model, x, y, columns):
        loss, acc = evaluate(model, x, y, columns)
        return (np.full_like(loss, next(crafted)), acc) if x is data.x_valid else (loss, acc)

    monkeypatch.setattr(lm, "evaluate_streams", fake)
    summaries, dirs = train(specs, data, tmp_path)
    steps = data.n_train // BATCH
    curve = pd.read_parquet(dirs[0] / "metrics.parquet")
    scales = [1.0, 1.0, 0.25, 0.25]  # the LR of each epoch: divided after epoch 2 (6 > 5); epoch 4's comes too late
    expected_lr = np.repeat(np.array(scales) * specs[0].lr, steps)
    np.testing.assert_array_equal(curve["lr"].to_numpy()[1:], expected_lr)
    assert curve.dropna(subset=["valid_loss"])["valid_loss"].tolist() == [9.0, 5.0, 6.0, 4.0, 4.0]
    assert_weights(dirs[0], reference_weights(specs[0], data, scales), rtol=1e-9, atol=1e-11)
    assert summaries[0]["final_valid_loss"] == 4.0 and "final_valid_perplexity" in summaries[0]


def test_the_anneal_needs_every_epoch_end_evaluated():
    base = make_spec({"budget": {"epochs": 3}, "eval": {"regular_points": 1, "log_points": 0}})
    off = make_plan(base, 14 * base.batch_size)
    on = make_plan(dataclasses.replace(base, language_model={"plateau_anneal": 4}), 14 * base.batch_size)
    assert off.steps_per_epoch == on.steps_per_epoch == 14 and not {14, 28} <= off.eval_steps
    assert on.eval_steps == off.eval_steps | {14, 28, 42}


# --- resume -----------------------------------------------------------------------------------------


@pytest.mark.slow  # several seconds: `make test`, not `make check`
@pytest.mark.parametrize("cut", [20, 33])  # mid-epoch 2, before the anneal; mid-epoch 3, after it
def test_a_killed_run_resumes_bit_identical_with_its_state_and_lr(release, data, tmp_path, monkeypatch, cut):
    """A valid loss that never improves after epoch 1 (a function of nothing, so the resumed run sees the same):
    the LR is quartered from epoch 3 on, and a run cut in epoch 3 must get that back from its checkpoint."""
    evaluate = lm.evaluate_streams

    def flat(model, x, y, columns):
        loss, acc = evaluate(model, x, y, columns)
        return (np.ones_like(loss), acc) if x is data.x_valid else (loss, acc)

    monkeypatch.setattr(lm, "evaluate_streams", flat)
    specs = lm_specs(release, {"carry_state": True, "plateau_anneal": 4}, base_lrs=(0.5, 0.2), epochs=3)
    _, whole = train(specs, data, tmp_path / "whole")
    partial, cut_dirs = train(specs, data, tmp_path / "cut", max_steps=cut)
    assert all(s["status"] == "interrupted" for s in partial)
    saved = io.load_torch(cut_dirs[1] / "checkpoints" / "resume.pt")
    assert saved["step"] == cut and [tuple(s.shape) for s in saved["carried_state"]] == [(2, BATCH, 200)] * 2
    train(specs, data, tmp_path / "cut")
    for a, b in zip(whole, cut_dirs):
        assert_same_results(a, b)
    steps = data.n_train // BATCH
    lrs = pd.read_parquet(whole[1] / "metrics.parquet")["lr"].to_numpy()[1:]
    np.testing.assert_array_equal(lrs, np.repeat([0.2, 0.2, 0.05], steps))
    assert_weights(whole[1], reference_weights(specs[1], data, [1.0, 1.0, 0.25]), rtol=1e-9, atol=1e-11)


# --- defaults, config -------------------------------------------------------------------------------


def test_the_keys_absent_or_explicitly_off_train_the_shuffled_windows_as_before(release, data, tmp_path):
    explicit = lm_specs(release, {"carry_state": False, "plateau_anneal": None})[0]
    absent = dataclasses.replace(explicit, language_model={})  # a spec from before the key existed
    _, a = train([explicit], data, tmp_path / "explicit")
    _, b = train([absent], data, tmp_path / "absent")
    assert_same_results(a[0], b[0])
    curve = pd.read_parquet(a[0] / "metrics.parquet")
    assert "valid_loss" not in curve.columns
    assert_weights_differ(a[0], reference_weights(explicit, data, [1.0] * EPOCHS))  # not the stream order


def assert_weights_differ(run_dir, other):
    final = io.load_torch(run_dir / "final.pt")["model"]
    assert any(not torch.allclose(final[name], value) for name, value in other.items())


def test_the_protocol_is_refused_where_it_cannot_apply(release):
    with pytest.raises(ConfigError, match=r"studies\.s\.language_model\.plateau_anneal': pydoc_text has no validation"):
        lm_specs(release, {"plateau_anneal": 4}, dataset="pydoc_text")
    with pytest.raises(ConfigError, match=r"studies\.s\.train_fractions'.*carry_state"):
        lm_specs(release, {"carry_state": True}, train_fractions=[0.5])
    with pytest.raises(ConfigError, match=r"studies\.s\.eval\.train_subset'"):
        lm_specs(release, {"carry_state": True}, eval={"train_subset": 10})
    with pytest.raises(ConfigError, match=r"studies\.s\.language_model\.eval_columns'"):
        lm_specs(release, {"carry_state": True, "eval_columns": 24})
    specs = lm_specs(release, {"carry_state": True, "plateau_anneal": 4})
    assert specs[0].language_model == {"carry_state": True, "eval_columns": 10, "plateau_anneal": 4}


def test_the_protocol_is_refused_on_a_data_set_that_is_not_a_language_model(tiny_config):
    cfg = copy.deepcopy(tiny_config)
    cfg["studies"]["tiny"]["language_model"] = {"carry_state": True}
    with pytest.raises(ConfigError, match=r"studies\.tiny\.language_model\.carry_state': mnist1d is not a language"):
        check_config(cfg)


def test_the_anneal_needs_the_release_s_valid_file(release, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(release, bare)
    (bare / TEXT_FILES["wikitext2"]["valid"]).unlink()
    assert dataset_info("wikitext2", {"root": str(bare), "bptt": BPTT}).n_valid is None
    with pytest.raises(ConfigError, match="plateau_anneal': wikitext2 has no validation split"):
        lm_specs(bare, {"plateau_anneal": 4})
    prepare_wikitext2(bare, tmp_path / "bare.npz", bptt=BPTT)
    assert load_prepared(tmp_path / "bare.npz").x_valid is None


# --- the validation split ------------------------------------------------------------------------


@pytest.mark.parametrize("name, prepare", [("wikitext2", prepare_wikitext2), ("ptb", prepare_ptb)])
def test_the_validation_split_is_read_from_a_release(name, prepare, tmp_path):
    write_fake_release(name, tmp_path / "release", 400, 150)
    prepare(tmp_path / "release", tmp_path / "p.npz", bptt=BPTT)
    data = load_prepared(tmp_path / "p.npz")
    vocab = read_vocab(tmp_path / "p.npz")
    valid_tokens = read_tokens(tmp_path / "release" / TEXT_FILES[name]["valid"])
    assert valid_tokens == read_tokens_of(fake_text(name, 400, 150)["valid"])
    x, y = windows(encode(valid_tokens, vocab), BPTT)
    assert torch.equal(data.x_valid, torch.from_numpy(x)) and torch.equal(data.y_valid, torch.from_numpy(y))
    info = dataset_info(name, {"root": str(tmp_path / "release"), "bptt": BPTT})
    assert info.n_valid == len(x) and info.source == "measured"
    assert dataset_info(name, {"root": str(tmp_path / "nowhere")}).n_valid == {"wikitext2": (217_646 - 1) // 35,
                                                                               "ptb": (73_760 - 1) // 35}[name]


def read_tokens_of(text):
    from batchlab.data.text import tokenize_lines

    return tokenize_lines(text.splitlines())


def test_the_validation_split_leaves_train_and_test_as_they_were(release, prepared, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(release, bare)
    (bare / TEXT_FILES["wikitext2"]["valid"]).unlink()
    prepare_wikitext2(bare, tmp_path / "bare.npz", bptt=BPTT)
    with_valid, without = load_prepared(prepared), load_prepared(tmp_path / "bare.npz")
    for split in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(with_valid, split), getattr(without, split)), split
    assert with_valid.num_classes == without.num_classes  # the vocabulary is the train split's alone
