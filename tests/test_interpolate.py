"""Keskar's 1-D interpolation: the alpha grid, state mixing, and the curve with and without BatchNorm."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from batchlab import io
from batchlab.analysis.interpolate import alpha_grid, interpolate_pair, interpolate_states
from batchlab.data import Dataset, load_prepared
from batchlab.models import build_model
from batchlab.train.evaluation import evaluate
from batchlab.train.loop import train_run
from tests.conftest import make_spec

EVAL_BS = 4096  # the tiny config's eval.batch_size (checked below), so evaluations match training's


# --- alpha_grid ----------------------------------------------------------------------------

def test_alpha_grid_default_is_31_points_of_step_0_1_with_exact_0_and_1():
    g = alpha_grid()
    assert len(g) == 31 and g[0] == -1.0 and g[-1] == 2.0
    assert np.all(np.diff(g) > 0)
    assert np.allclose(np.diff(g), 0.1)
    assert (g == 0.0).sum() == 1 and (g == 1.0).sum() == 1


def test_alpha_grid_snaps_near_points_to_exact_0_and_1():
    raw = np.linspace(-0.7, 1.1, 19)  # its points near 0 and 1 are off by float rounding
    assert not (raw == 0.0).any() and not (raw == 1.0).any()
    g = alpha_grid(19, -0.7, 1.1)
    assert len(g) == 19 and g[0] == -0.7 and g[-1] == 1.1
    assert (g == 0.0).sum() == 1 and (g == 1.0).sum() == 1
    assert np.allclose(g, raw, atol=1e-12)


def test_alpha_grid_adds_0_and_1_when_they_are_off_the_grid():
    g = alpha_grid(6)  # -1, -0.4, 0.2, 0.8, 1.4, 2
    assert len(g) == 8 and np.all(np.diff(g) > 0)
    assert np.allclose(g, [-1, -0.4, 0, 0.2, 0.8, 1, 1.4, 2])
    assert (g == 0.0).sum() == 1 and (g == 1.0).sum() == 1
    assert list(alpha_grid(4)) == [-1.0, 0.0, 1.0, 2.0]
    assert len(alpha_grid(2)) == 4 and alpha_grid(2)[0] == -1.0 and alpha_grid(2)[-1] == 2.0


@pytest.mark.parametrize("kwargs", [{"k": 1}, {"k": 0}, {"k": 2.5}, {"lo": 0.0}, {"lo": 0.5}, {"hi": 1.0}, {"hi": 0.5}])
def test_alpha_grid_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        alpha_grid(**kwargs)


# --- interpolate_states --------------------------------------------------------------------

def _states(model_name="mlp", shape=(40,)):
    torch.manual_seed(0)
    a = build_model(model_name, shape, 10).state_dict()
    torch.manual_seed(1)
    b = build_model(model_name, shape, 10).state_dict()
    return a, b


def test_interpolate_states_is_exact_at_endpoints_and_averages_at_the_midpoint():
    small, large = _states()
    small_copy = copy.deepcopy(small)
    at0, at1, mid = (interpolate_states(small, large, a) for a in (0.0, 1.0, 0.5))
    assert at0.keys() == small.keys()
    for k in small:
        assert not torch.equal(small[k], large[k])  # otherwise the test proves nothing
        assert torch.equal(at0[k], small[k]) and torch.equal(at1[k], large[k])
        torch.testing.assert_close(mid[k], (small[k] + large[k]) / 2, rtol=1e-6, atol=1e-7)
        assert torch.equal(small[k], small_copy[k])  # inputs untouched
    at2 = interpolate_states(small, large, 2.0)
    k = next(iter(small))
    torch.testing.assert_close(at2[k], 2 * large[k] - small[k])
    at0[k].add_(1.0)  # a fresh tensor, not a view of the input
    assert torch.equal(small[k], small_copy[k])


def test_interpolate_states_buffers_small_or_interpolated():
    small, large = _states("resnet8_bn", (3, 8, 8))
    for k in small:
        if k.endswith("running_mean"):
            small[k].fill_(1.0), large[k].fill_(3.0)
        elif k.endswith("running_var"):
            small[k].fill_(2.0), large[k].fill_(4.0)
        elif k.endswith("num_batches_tracked"):
            small[k].fill_(5), large[k].fill_(7)
    kept = interpolate_states(small, large, 0.5)
    mixed = interpolate_states(small, large, 0.5, buffers="interpolate")
    w = "stem.0.weight"
    torch.testing.assert_close(kept[w], (small[w] + large[w]) / 2)
    torch.testing.assert_close(mixed[w], kept[w])
    for prefix in ("stem.1.", "stages.1.0.shortcut.1."):
        assert torch.equal(kept[prefix + "running_mean"], small[prefix + "running_mean"])
        assert torch.equal(kept[prefix + "running_var"], small[prefix + "running_var"])
        assert torch.all(mixed[prefix + "running_mean"] == 2.0) and torch.all(mixed[prefix + "running_var"] == 3.0)
        for out in (kept, mixed):
            nbt = out[prefix + "num_batches_tracked"]
            assert nbt.dtype == torch.long and nbt.item() == 5
    # explicit parameter names decide the same way
    names = [n for n, _ in build_model("resnet8_bn", (3, 8, 8), 10).named_parameters()]
    named = interpolate_states(small, large, 0.5, param_names=names)
    assert all(torch.equal(named[k], kept[k]) for k in small)
    with pytest.raises(ValueError, match="buffers"):
        interpolate_states(small, large, 0.5, buffers="recompute")


def test_interpolate_states_rejects_mismatched_keys_and_shapes():
    small, large = _states()
    missing = dict(large)
    del missing["net.2.bias"]
    with pytest.raises(ValueError, match="net.2.bias"):
        interpolate_states(small, missing, 0.5)
    with pytest.raises(ValueError, match="net.2.bias"):
        interpolate_states(missing, small, 0.5)
    extra = dict(large, **{"net.9.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="net.9.weight"):
        interpolate_states(small, extra, 0.5)
    reshaped = dict(large, **{"net.0.weight": large["net.0.weight"][:50]})
    with pytest.raises(ValueError, match=r"net\.0\.weight.*\(100, 40\).*\(50, 40\)"):
        interpolate_states(small, reshaped, 0.5)
    with pytest.raises(ValueError, match="checkpoint"):
        interpolate_states({"model": small, "spec": {}}, {"model": large, "spec": {}}, 0.5)


# --- a trained pair from the real trainer --------------------------------------------------

@pytest.fixture(scope="module")
def trained_pair(tiny_data_path, tmp_path_factory):
    """Two MLP runs of the tiny config that differ only in batch size (16 and 64, same seed)."""
    torch.set_num_threads(1)  # module fixtures run before the autouse one; results depend on threads
    data = load_prepared(tiny_data_path, "cpu")
    root = tmp_path_factory.mktemp("pair")
    out = {}
    for name, b in (("small", 16), ("large", 64)):
        spec = make_spec(run=f"tiny/mlp/bs{b}/constant/lr0.05/seed0")
        assert spec.eval["batch_size"] == EVAL_BS
        summary = train_run(spec, data, root / name, device="cpu", progress=False)
        final = io.load_torch(root / name / "final.pt")
        assert summary["status"] == "completed" and final["spec"]["batch_size"] == b
        out[name] = (final["model"], io.read_json(root / name / "run.json"))
    out["dirs"] = {out[name][1]["run_id"]: root / name for name in ("small", "large")}
    return data, out


@pytest.fixture(scope="module")
def pair_curve(trained_pair):
    data, runs = trained_pair
    torch.set_num_threads(1)
    df = interpolate_pair(build_model("mlp", data.input_shape, data.num_classes), runs["small"][0], runs["large"][0],
                          data, alpha_grid(7), eval_batch_size=EVAL_BS, progress=False)
    return df


def test_endpoints_reproduce_the_runs_own_final_evaluations(trained_pair, pair_curve):
    _, runs = trained_pair
    df = pair_curve
    assert list(df.columns) == ["alpha", "split", "loss", "accuracy", "bn_mode"]
    assert len(df) == 2 * 7 and set(df["split"]) == {"train", "test"}
    assert (df["bn_mode"] == "none").all()  # the MLP has no BatchNorm
    assert runs["small"][1]["final_train_loss"] != pytest.approx(runs["large"][1]["final_train_loss"], rel=1e-3)
    for alpha, name in ((0.0, "small"), (1.0, "large")):
        info = runs[name][1]
        row = df[df["alpha"] == alpha].set_index("split")
        assert row.loc["train", "loss"] == pytest.approx(info["final_train_loss"], rel=1e-6, abs=1e-9)
        assert row.loc["train", "accuracy"] == pytest.approx(info["final_train_acc"], abs=1e-12)
        assert row.loc["test", "loss"] == pytest.approx(info["final_test_loss"], rel=1e-6, abs=1e-9)
        assert row.loc["test", "accuracy"] == pytest.approx(info["final_test_acc"], abs=1e-12)


def test_the_curve_rises_when_extrapolating_past_either_solution(pair_curve):
    train = pair_curve[pair_curve["split"] == "train"].set_index("alpha")["loss"]
    assert np.isfinite(train).all()
    assert train[-1.0] > train[0.0] + 0.05  # beyond the small-batch solution
    assert train[2.0] > train[1.0] + 0.05  # beyond the large-batch solution
    assert train.max() - train.min() > 0.1


def test_interpolate_pair_validates_its_inputs(trained_pair, capsys):
    data, runs = trained_pair
    small, large = runs["small"][0], runs["large"][0]
    model = build_model("mlp", data.input_shape, data.num_classes)
    with pytest.raises(ValueError, match="recompute.*interpolate"):
        interpolate_pair(model, small, large, data, [0.0], bn_mode="eval")
    bad = dict(large)
    del bad["net.4.weight"]
    with pytest.raises(ValueError, match="net.4.weight"):
        interpolate_pair(model, small, bad, data, [0.0])
    cnn_state = build_model("cnn", data.input_shape, data.num_classes).state_dict()
    with pytest.raises(ValueError, match="state mismatch"):
        interpolate_pair(model, cnn_state, cnn_state, data, [0.0])
    with pytest.raises(ValueError, match="alphas"):
        interpolate_pair(model, small, large, data, [])
    # "interpolate" asked of a model without BN still records "none"; progress goes to stderr, one tick per alpha
    df = interpolate_pair(model, small, large, data, [0.0, 0.5, 1.0], bn_mode="interpolate")
    assert (df["bn_mode"] == "none").all() and list(df["alpha"]) == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    err = capsys.readouterr().err
    assert "interpolate" in err and "3/3" in err


# --- BatchNorm -----------------------------------------------------------------------------

N_BN = 32
BN_SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def bn_data():
    g = torch.Generator().manual_seed(0)
    return Dataset(
        name="random-images",
        x_train=torch.randn(N_BN, *BN_SHAPE, generator=g) * 2 + 0.5,
        y_train=torch.randint(0, 10, (N_BN,), generator=g),
        x_test=torch.randn(16, *BN_SHAPE, generator=g) * 2 + 0.5,
        y_test=torch.randint(0, 10, (16,), generator=g),
        num_classes=10,
    )


def _trained_bn_state(seed: int, data: Dataset, bn_batch_size=None) -> dict:
    """A resnet8_bn state after a few SGD steps in train mode: running stats far from their init."""
    torch.manual_seed(seed)
    model = build_model("resnet8_bn", data.input_shape, data.num_classes, bn_batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(4):
        idx = torch.arange(16) + 16 * (step % 2)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return copy.deepcopy(model.state_dict())


@pytest.fixture(scope="module")
def bn_states(bn_data):
    torch.set_num_threads(1)
    return _trained_bn_state(0, bn_data), _trained_bn_state(1, bn_data)


def _eval_state(state, data, bn_batch_size=None, recompute_batch=None):
    """Evaluate a state as-is, or after recomputing BN stats the straightforward way."""
    model = build_model("resnet8_bn", data.input_shape, data.num_classes, bn_batch_size)
    model.load_state_dict(state)
    if recompute_batch is not None:
        bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for i in range(0, len(data.x_train), recompute_batch):
                model(data.x_train[i : i + recompute_batch])
        model.eval()
    return (*evaluate(model, data.x_train, data.y_train), *evaluate(model, data.x_test, data.y_test))


def _curve_values(df, alpha):
    row = df[df["alpha"] == alpha].set_index("split")
    return row.loc["train", "loss"], row.loc["train", "accuracy"], row.loc["test", "loss"], row.loc["test", "accuracy"]


def _bn_model(data, bn_batch_size=None, momentum=0.3):
    model = build_model("resnet8_bn", data.input_shape, data.num_classes, bn_batch_size)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 9
    for m in bns:
        m.momentum = momentum  # not the default, so restoring it is really checked
    return model, bns


def test_bn_interpolate_mode_reproduces_each_state_with_its_own_buffers(bn_data, bn_states):
    small, large = bn_states
    assert not torch.allclose(small["stem.1.running_var"], torch.ones(16))  # stats moved off their init
    model, _ = _bn_model(bn_data)
    df = interpolate_pair(model, small, large, bn_data, [0.0, 1.0, 2.0], bn_mode="interpolate", progress=False)
    assert (df["bn_mode"] == "interpolate").all()
    assert _curve_values(df, 0.0) == pytest.approx(_eval_state(small, bn_data), rel=1e-6)
    assert _curve_values(df, 1.0) == pytest.approx(_eval_state(large, bn_data), rel=1e-6)
    # the model is left with the last alpha's weights *and* interpolated buffers
    last = interpolate_states(small, large, 2.0, buffers="interpolate")
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())


def test_bn_recompute_mode_matches_a_direct_recomputation(bn_data, bn_states):
    small, large = bn_states
    model, bns = _bn_model(bn_data)
    df = interpolate_pair(model, small, large, bn_data, [0.0, 0.5, 1.0], bn_mode="recompute", bn_batch_size=16,
                          progress=False)
    assert (df["bn_mode"] == "recompute").all()
    assert all(m.momentum == 0.3 for m in bns)  # restored after the cumulative-average passes
    direct0 = _eval_state(small, bn_data, recompute_batch=16)
    direct1 = _eval_state(large, bn_data, recompute_batch=16)
    assert _curve_values(df, 0.0) == pytest.approx(direct0, rel=1e-5)
    assert _curve_values(df, 1.0) == pytest.approx(direct1, rel=1e-5)
    # the recomputed statistics differ from the stored ones, and so does the loss
    own = _eval_state(small, bn_data)
    assert abs(direct0[0] - own[0]) > 1e-3 and abs(direct0[2] - own[2]) > 1e-3
    # at the midpoint: mixed weights, then the same recomputation
    mid = interpolate_states(small, large, 0.5)
    assert _curve_values(df, 0.5) == pytest.approx(_eval_state(mid, bn_data, recompute_batch=16), rel=1e-5)
    # left holding the recomputed stats of the last alpha (two batches of 16 were averaged)
    assert model.stem[1].num_batches_tracked.item() == 2
    # and at alpha = 0 it is not what "interpolate" (the stored buffers) gives
    kept = interpolate_pair(model, small, large, bn_data, [0.0], bn_mode="interpolate", progress=False)
    assert abs(_curve_values(df, 0.0)[0] - _curve_values(kept, 0.0)[0]) > 1e-3


def test_bn_recompute_uses_full_batches_only(bn_data, bn_states):
    small, large = bn_states
    model, _ = _bn_model(bn_data)
    df = interpolate_pair(model, small, large, bn_data, [0.0], progress=False)  # bn_batch_size 256 > 32 examples
    assert _curve_values(df, 0.0) == pytest.approx(_eval_state(small, bn_data, recompute_batch=N_BN), rel=1e-5)
    assert _curve_values(df, 0.0) != pytest.approx(_eval_state(small, bn_data, recompute_batch=16), rel=1e-5)
    # 32 examples in batches of 12: the last 8 are left out, so two equal batches are averaged
    df12 = interpolate_pair(model, small, large, bn_data, [0.0], bn_batch_size=12, progress=False)
    first24 = Dataset("first24", bn_data.x_train[:24], bn_data.y_train[:24], bn_data.x_test, bn_data.y_test, 10)
    direct = _eval_state(small, first24, recompute_batch=12)  # BN stats from the first 24 examples, in two batches
    assert _curve_values(df12, 0.0)[2:] == pytest.approx(direct[2:], rel=1e-5)  # same test set, so same test metrics
    assert model.stem[1].num_batches_tracked.item() == 2


def test_ghost_bn_recompute_uses_ghost_batches_and_checks_divisibility(bn_data):
    torch.set_num_threads(1)
    small, large = _trained_bn_state(0, bn_data, bn_batch_size=8), _trained_bn_state(1, bn_data, bn_batch_size=8)
    model, bns = _bn_model(bn_data, bn_batch_size=8)
    assert all(getattr(m, "ghost_batch_size", None) == 8 for m in bns)
    df = interpolate_pair(model, small, large, bn_data, [0.0], bn_batch_size=16, progress=False)
    direct = _eval_state(small, bn_data, bn_batch_size=8, recompute_batch=16)
    assert _curve_values(df, 0.0) == pytest.approx(direct, rel=1e-5)
    with pytest.raises(ValueError, match="ghost"):
        interpolate_pair(model, small, large, bn_data, [0.0], bn_batch_size=12, progress=False)
    assert all(m.momentum == 0.3 for m in bns)


def test_a_studys_pairs_interpolate_into_one_table(trained_pair):
    from batchlab.analysis.interpolate import PAIR_COLUMNS, interpolate_run_pair, interpolate_run_pairs
    from batchlab.config import Pair

    data, runs = trained_pair
    small, large = runs["dirs"]
    spec = make_spec(run=small)
    cfg = {"alphas": 5, "bn_mode": "recompute", "bn_batch_size": 64}
    pairs = [(Pair("a", "tiny", (small, large)), spec, runs["dirs"]),
             (Pair("b", "tiny", (small,)), spec, {small: runs["dirs"][small]}),  # one healthy end: no rows
             (Pair("c", "tiny", (large, small)), spec, runs["dirs"])]
    table = interpolate_run_pairs(pairs, data, cfg)
    alone = [interpolate_run_pair(*pairs[i], data, cfg) for i in (0, 2)]
    pd.testing.assert_frame_equal(table, pd.concat(alone, ignore_index=True))
    assert list(table["pair_id"].unique()) == ["a", "c"] and list(table.columns) == list(PAIR_COLUMNS)
    assert interpolate_run_pairs([pairs[1]], data, cfg).empty
