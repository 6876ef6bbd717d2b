import numpy as np
import pandas as pd
import pytest

from batchlab.speedup import (
    SPEEDUP_COLUMNS, cell_steps, fit_critical_batch, noise_prediction, regime, run_steps_to_target, speedup_curve,
    speedup_tables,
)


def curve(run_id, steps, losses, accs=None):
    return pd.DataFrame(dict(run_id=run_id, step=steps, train_loss=losses, test_loss=losses,
                             test_acc=accs if accs is not None else [np.nan] * len(steps)))


def test_first_evaluated_step_reaching_the_target():
    runs = pd.DataFrame(dict(run_id=["a", "b", "c", "d"], status=["completed", "completed", "diverged", "completed"]))
    curves = pd.concat([
        curve("a", [0, 1, 2, 3, 4], [2.0, np.nan, 0.9, np.nan, 0.4]),  # NaN rows: not evaluated there
        curve("b", [0, 5, 10], [2.0, 1.5, 1.2]),  # never reaches
        curve("c", [0, 5], [2.0, 0.1]),  # reached, then diverged: not reached
        curve("d", [0, 5, 10], [2.0, 1.0, 0.3], accs=[0.1, 0.5, 0.85]),
    ])
    steps = run_steps_to_target(runs, curves, "train_loss", 1.0)
    assert steps.tolist()[0] == 2 and np.isnan(steps.iloc[1]) and np.isnan(steps.iloc[2]) and steps.iloc[3] == 5
    assert run_steps_to_target(runs, curves, "test_error", 0.2).iloc[3] == 10  # 1 - 0.85 = 0.15 <= 0.2
    with pytest.raises(ValueError, match="unknown target metric 'accuracy'"):
        run_steps_to_target(runs, curves, "accuracy", 0.5)


@pytest.mark.parametrize("seeds, expected", [
    ([100, 200], 150),            # all reached: median
    ([100, np.nan], 100),         # half reached: median of those that did
    ([100, np.nan, np.nan], np.nan),  # more than half did not: not reached
    ([np.nan, np.nan], np.nan),
    ([100, 300, -1], 200),        # -1 pads an absent seed
])
def test_cell_rule(seeds, expected):
    got = cell_steps(np.array(seeds, dtype=float))
    assert (np.isnan(got) and np.isnan(expected)) or got == expected


def synthetic_runs(b_crit=64.0, s_min=100.0, batches=(8, 16, 32, 64, 128, 256, 512), seeds=(0, 1, 2), noise=0.05):
    rng = np.random.default_rng(1)
    runs, curves = [], []
    for b in batches:
        for base_lr, slow in ((0.1, 1.0), (0.3, 1.5)):  # the second LR is always slower: 0.1 must win
            for seed in seeds:
                run_id = f"s/m/bs{b}/linear/lr{base_lr}/seed{seed}"
                target_step = int(round(s_min * (1 + b_crit / b) * slow * np.exp(rng.normal(0, noise))))
                steps = np.arange(0, 3 * target_step, 1)
                losses = np.where(steps >= target_step, 0.05, 1.0)
                runs.append(dict(run_id=run_id, study="s", model="m", lr_rule="linear", base_lr=base_lr, lr=base_lr * b / 64,
                                 batch_size=b, seed=seed, status="completed"))
                curves.append(curve(run_id, steps, losses))
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True)


def test_speedup_curve_tunes_lr_per_batch_and_bootstraps():
    runs, curves = synthetic_runs()
    per_run = runs.assign(steps=run_steps_to_target(runs, curves, "train_loss", 0.1).to_numpy(),
                          setting="linear:" + runs["base_lr"].astype(str))
    table = speedup_curve(per_run, n_boot=300)
    assert (table["best_base_lr"] == 0.1).all() and table["reached"].all()
    expected = per_run[per_run["base_lr"] == 0.1].groupby("batch_size")["steps"].median().to_numpy()
    np.testing.assert_array_equal(table["steps_to_target"], expected)
    np.testing.assert_allclose(table["speedup"], expected[0] / expected)
    np.testing.assert_allclose(table["perfect_speedup"], table["batch_size"] / 8)
    assert table["best_lr"].iloc[-1] == pytest.approx(0.1 * 512 / 64)
    assert (table["speedup_ci_low"] <= table["speedup"] + 1e-12).all() and (table["speedup"] <= table["speedup_ci_high"] + 1e-12).all()
    assert table["speedup_ci_low"].iloc[-1] < table["speedup_ci_high"].iloc[-1]
    pd.testing.assert_frame_equal(table, speedup_curve(per_run, n_boot=300))  # seeded


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_a_known_critical_batch_inside_its_interval(seed):
    b = 2.0 ** np.arange(2, 13)
    s = 500 * (1 + 256 / b) * np.exp(np.random.default_rng(seed).normal(0, 0.05, len(b)))
    fit = fit_critical_batch(b, s)
    assert fit["ci_low"] < 256 < fit["ci_high"]
    assert fit["b_crit"] == pytest.approx(256, rel=0.25) and fit["s_min"] == pytest.approx(500, rel=0.15)
    assert fit["n_points"] == len(b)


def test_fit_needs_three_reached_points():
    fit = fit_critical_batch([8, 16, 32], [100, np.nan, 50])
    assert np.isnan(fit["b_crit"]) and fit["n_points"] == 2


def test_regimes_follow_the_local_scaling_exponent():
    assert [regime(b, 100) for b in (10, 25, 100, 400, 1000)] == ["near-linear", "near-linear", "diminishing", "plateau", "plateau"]
    assert regime(10, np.nan) is None


def test_noise_prediction_takes_the_checkpoint_nearest_the_target():
    runs = pd.DataFrame(dict(run_id=["a", "b"], study="s", model="m", lr_rule="linear"))
    curves = pd.concat([curve("a", [0, 10, 100], [2.0, 0.5, 0.1]), curve("b", [0, 10, 100], [2.0, 0.6, 0.01])])
    sharp = pd.DataFrame(dict(run_id=["a", "a", "a", "b", "b", "b"], step=[0, 10, 100] * 2, metric="noise_scale",
                              value=[1.0, 20.0, 300.0, 2.0, 40.0, np.inf]))
    pred = noise_prediction(sharp, curves, runs, "train_loss", 0.5)
    assert pred[("s", "m", "linear")] == pytest.approx(30.0)  # median of a@10 (20) and b@10 (40)
    assert pred[("s", "m", "best")] == pytest.approx(30.0)
    # a run with its final checkpoint only does not count beside runs measured along training
    runs = pd.concat([runs, pd.DataFrame(dict(run_id=["c"], study="s", model="m", lr_rule="linear"))])
    curves = pd.concat([curves, curve("c", [0, 100], [2.0, 0.5])])
    sharp = pd.concat([sharp, pd.DataFrame(dict(run_id=["c"], step=[100], metric="noise_scale", value=[5000.0]))])
    assert noise_prediction(sharp, curves, runs, "train_loss", 0.5)[("s", "m", "linear")] == pytest.approx(30.0)


def test_speedup_tables_cover_every_rule_and_target():
    runs, curves = synthetic_runs(seeds=(0, 1))
    speed, crit = speedup_tables(runs, curves, {"s": {"targets": {"train_loss": [0.1, 0.01]}, "n_bootstrap": 100}})
    assert list(speed.columns) == list(SPEEDUP_COLUMNS)
    assert set(speed["lr_rule"]) == {"linear", "best"} and set(speed["target_value"]) == {0.1, 0.01}
    reached = speed[speed["target_value"] == 0.1]
    assert reached["reached"].all() and not speed[speed["target_value"] == 0.01]["reached"].any()
    linear, best = (reached[reached["lr_rule"] == r].reset_index(drop=True) for r in ("linear", "best"))
    pd.testing.assert_series_equal(linear["steps_to_target"], best["steps_to_target"])  # one rule: best is the same
    row = crit[(crit["lr_rule"] == "linear") & (crit["target_value"] == 0.1)].iloc[0]
    assert row["b_crit"] == pytest.approx(64, rel=0.2) and row["ci_low"] < row["b_crit"] < row["ci_high"]
    assert np.isnan(crit[crit["target_value"] == 0.01]["b_crit"]).all()
    assert set(speed["regime"].dropna()) <= {"near-linear", "diminishing", "plateau"}
    assert speed[~speed["reached"]]["regime"].isna().all()
