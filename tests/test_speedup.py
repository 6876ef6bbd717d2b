import numpy as np
import pandas as pd
import pytest

from batchlab.speedup import (
    CRITICAL_COLUMNS, SPEEDUP_COLUMNS, cell_steps, fit_critical_batch, median_with_interval, noise_at_target,
    noise_prediction, regime, run_steps_to_target, speedup_curve, speedup_tables,
)


def curve(run_id, steps, losses, accs=None):
    return pd.DataFrame(dict(run_id=run_id, step=steps, train_loss=losses, test_loss=losses,
                             test_acc=accs if accs is not None else [np.nan] * len(steps)))


def test_first_evaluated_step_reaching_the_target():
    runs = pd.DataFrame(dict(run_id=["a", "b", "c", "d", "e"],
                             status=["completed", "completed", "diverged", "completed", "stalled"]))
    curves = pd.concat([
        curve("a", [0, 1, 2, 3, 4], [2.0, np.nan, 0.9, np.nan, 0.4]),  # NaN rows: not evaluated there
        curve("b", [0, 5, 10], [2.0, 1.5, 1.2]),  # never reaches
        curve("c", [0, 5], [2.0, 0.1]),  # reached, then diverged: not reached
        curve("d", [0, 5, 10], [2.0, 1.0, 0.3], accs=[0.1, 0.5, 0.85]),
        curve("e", [0, 5], [2.0, 0.5]),  # reached, then stalled: not reached
    ])
    steps = run_steps_to_target(runs, curves, "train_loss", 1.0)
    assert steps.tolist()[0] == 2 and np.isnan(steps.iloc[1]) and np.isnan(steps.iloc[2]) and steps.iloc[3] == 5
    assert np.isnan(steps.iloc[4])
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
    assert fit["fit_status"] == "ok" and fit["b_crit_bound"] is None
    assert fit["ci_low"] < 256 < fit["ci_high"]
    assert fit["b_crit"] == pytest.approx(256, rel=0.25) and fit["s_min"] == pytest.approx(500, rel=0.15)
    assert fit["n_points"] == len(b)


def test_fit_needs_three_reached_points():
    fit = fit_critical_batch([8, 16, 32], [100, np.nan, 50])
    assert np.isnan(fit["b_crit"]) and fit["n_points"] == 2 and fit["fit_status"] == "too_few_points"
    assert fit_critical_batch([8, 8, 16, 16], [100, 110, 60, 70])["fit_status"] == "too_few_points"  # 2 batch sizes


@pytest.mark.parametrize("batches", [[16, 64, 512], [16, 32, 64, 128, 256, 512]])
def test_an_exact_curve_gives_back_its_critical_batch(batches):
    b = np.array(batches, dtype=float)
    fit = fit_critical_batch(b, 300 * (1 + 64 / b))
    assert fit["fit_status"] == "ok"
    assert fit["b_crit"] == pytest.approx(64, rel=1e-6) and fit["s_min"] == pytest.approx(300, rel=1e-6)
    assert fit["ci_low"] <= fit["b_crit"] <= fit["ci_high"]


BATCHES = 2.0 ** np.arange(4, 10)  # 16 .. 512


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_a_critical_batch_beyond_the_scan_is_only_a_lower_bound(noise):
    # B_crit = 1e5 with batches up to 512: the curve is still near-linear, the data only say B_crit is large
    s = 50 * (1 + 1e5 / BATCHES) * np.exp(np.random.default_rng(3).normal(0, noise, len(BATCHES)))
    fit = fit_critical_batch(BATCHES, s)
    assert fit["fit_status"] == "beyond_grid" and np.isnan(fit["b_crit"]) and np.isnan(fit["s_min"])
    assert fit["b_crit_bound"] == f">{np.floor(fit['ci_low']):.0f}" and fit["ci_high"] == np.inf
    assert 512 < fit["ci_low"] < 1e5


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_a_critical_batch_below_the_scan_is_only_an_upper_bound(noise):
    # B_crit = 0.01: the curve is flat from the smallest batch on
    s = 800 * (1 + 0.01 / BATCHES) * np.exp(np.random.default_rng(4).normal(0, noise, len(BATCHES)))
    fit = fit_critical_batch(BATCHES, s)
    assert fit["fit_status"] == "below_grid" and np.isnan(fit["b_crit"]) and fit["ci_low"] == 0
    assert fit["b_crit_bound"] == f"<{np.ceil(fit['ci_high']):.0f}" and 0.01 < fit["ci_high"] < 16


def test_an_estimate_far_beyond_the_batches_is_a_bound_not_a_number():
    # exact data pin B_crit = 2e4 inside the scan, but 40x past the largest batch is extrapolation
    fit = fit_critical_batch(BATCHES, 50 * (1 + 2e4 / BATCHES))
    assert fit["fit_status"] == "above_range" and np.isnan(fit["b_crit"]) and fit["b_crit_bound"] == ">19999"


def synthetic_fits(n_curves, sigma, seed, batches=BATCHES):
    """Fits to noisy curves with B_crit log-uniform over the batches, and the true B_crit of each."""
    rng = np.random.default_rng(seed)
    truths = np.exp(rng.uniform(np.log(batches[0]), np.log(batches[-1]), n_curves))
    return [(fit_critical_batch(batches, 1000 * (1 + t / batches) * np.exp(rng.normal(0, sigma, len(batches)))), t)
            for t in truths]


def covers(fit, truth):
    if fit["fit_status"] == "ok":
        return fit["ci_low"] <= truth <= fit["ci_high"]
    bound = float(fit["b_crit_bound"][1:])
    return truth > bound if fit["b_crit_bound"].startswith(">") else truth < bound


def test_the_interval_covers_the_truth_about_95_percent_of_the_time():
    fits = synthetic_fits(300, sigma=0.1, seed=0)
    judged = [(fit, t) for fit, t in fits if fit["fit_status"] == "ok" or fit["b_crit_bound"] is not None]
    assert len(judged) >= 270
    coverage = np.mean([covers(fit, t) for fit, t in judged])
    assert 0.90 <= coverage <= 0.99, coverage  # measured: 0.947


@pytest.mark.parametrize("batches", [BATCHES[[0, 2, 5]], BATCHES[[0, 2, 4, 5]], BATCHES])
def test_no_reported_critical_batch_breaks_the_acceptance_rule(batches):
    # noisy curves with few points: most fits cannot be accepted, none may slip through as a number
    fits = [fit for fit, _ in synthetic_fits(200, sigma=0.3, seed=5, batches=batches)]
    for fit in fits:
        if fit["fit_status"] == "ok":
            assert batches[0] / 10 <= fit["b_crit"] <= batches[-1] * 10 and fit["ci_high"] / fit["ci_low"] <= 100
            assert fit["b_crit_bound"] is None
        else:
            assert np.isnan(fit["b_crit"]) and np.isnan(fit["s_min"])
            bounded = fit["fit_status"] in ("beyond_grid", "below_grid", "above_range", "below_range")
            assert (fit["b_crit_bound"] is not None) == bounded
    statuses = {fit["fit_status"] for fit in fits}
    assert {"ok", "beyond_grid", "below_grid"} <= statuses
    if len(batches) == 3:
        assert {"interval_too_wide", "unconstrained"} <= statuses


def test_regimes_follow_the_local_scaling_exponent():
    assert [regime(b, 100) for b in (10, 25, 100, 400, 1000)] == ["near-linear", "near-linear", "diminishing", "plateau", "plateau"]
    assert regime(10, np.nan) is None


def noise_rows(run_id, steps, values, ci_low=None, ci_high=None):
    return pd.DataFrame(dict(run_id=run_id, step=steps, metric="noise_scale", value=values,
                             ci_low=values if ci_low is None else ci_low,
                             ci_high=values if ci_high is None else ci_high))


def noise_study():
    """Runs a and b (rule linear) reach loss 0.5 at steps 10 and 100; their B_simple there is 20 and 40."""
    runs = pd.DataFrame(dict(run_id=["a", "b"], study="s", model="m", lr_rule="linear", status="completed"))
    curves = pd.concat([curve("a", [0, 5, 10, 40, 100], [2.0, 1.0, 0.4, 0.3, 0.1]),
                        curve("b", [0, 50, 100], [2.0, 0.7, 0.5])])
    # a's checkpoints 6 and 15: 6 is nearer to 10 in steps, 15 in log steps; step 0 never counts
    sharp = pd.concat([noise_rows("a", [0, 6, 15, 100], [20.0, 1.0, 20.0, 500.0],
                                  ci_low=[0, 0, 15.0, 0], ci_high=[0, 0, 25.0, 0]),
                       noise_rows("b", [100], [40.0], ci_low=[30.0], ci_high=[60.0])])
    return runs, curves, sharp


def test_noise_prediction_takes_the_checkpoint_nearest_the_target_step():
    runs, curves, sharp = noise_study()
    at = noise_at_target(sharp, curves, runs, "train_loss", 0.5).set_index("run_id")
    assert at.loc["a", "step"] == 15 and at.loc["a", "target_step"] == 10 and at.loc["b", "step"] == 100
    pred = noise_prediction(sharp, curves, runs, "train_loss", 0.5)
    assert list(pred.columns) == ["b_noise_predicted", "b_noise_ci_low", "b_noise_ci_high", "b_noise_n_runs"]
    # two runs: the median, and the span of their own intervals
    assert pred.loc[("s", "m", "linear")].to_dict() == dict(b_noise_predicted=30.0, b_noise_ci_low=15.0,
                                                           b_noise_ci_high=60.0, b_noise_n_runs=2)
    assert pred.loc[("s", "m", "best")].to_dict() == pred.loc[("s", "m", "linear")].to_dict()
    # a table without interval columns: each value is its own interval
    old = noise_prediction(sharp.drop(columns=["ci_low", "ci_high"]), curves, runs, "train_loss", 0.5)
    assert old.loc[("s", "m", "linear")].tolist() == [30.0, 20.0, 40.0, 2]


def test_runs_that_did_not_reach_the_target_do_not_move_the_prediction():
    runs, curves, sharp = noise_study()
    before = noise_prediction(sharp, curves, runs, "train_loss", 0.5)
    others = dict(
        never=("completed", [2.0, 1.0, 0.9], [0, 10, 100]),  # never reaches the target
        diverged=("diverged", [2.0, 0.1, np.nan], [0, 10, 100]),  # reached it, then diverged
        stalled=("stalled", [2.0, 0.1, 0.1], [0, 10, 100]),
        far=("completed", [2.0, 1.0, 0.4], [0, 10, 100]),  # reaches at 100; its only checkpoint at 10 is too far
        infinite=("completed", [2.0, 0.4, 0.3], [0, 10, 100]),  # noise swamped at the nearest checkpoint
    )
    runs = pd.concat([runs, pd.DataFrame(dict(run_id=list(others), study="s", model="m", lr_rule="linear",
                                              status=[v[0] for v in others.values()]))])
    curves = pd.concat([curves, *(curve(r, steps, losses) for r, (_, losses, steps) in others.items())])
    sharp = pd.concat([sharp, *(noise_rows(r, [10, 100], [5000.0, 5000.0]) for r in ("never", "diverged", "stalled")),
                       noise_rows("far", [10], [5000.0]), noise_rows("infinite", [10, 15], [np.inf, 5000.0])])
    pd.testing.assert_frame_equal(noise_prediction(sharp, curves, runs, "train_loss", 0.5), before)
    assert noise_prediction(sharp, curves, runs, "train_loss", 0.05).empty  # nobody reached it


def test_noise_prediction_pools_rules_and_bootstraps_three_runs_or_more():
    runs, curves, sharp = noise_study()
    runs = pd.concat([runs, pd.DataFrame(dict(run_id=["c"], study="s", model="m", lr_rule="sqrt", status="completed"))])
    curves = pd.concat([curves, curve("c", [0, 20], [2.0, 0.5])])
    sharp = pd.concat([sharp, noise_rows("c", [20], [100.0], ci_low=[50.0], ci_high=[300.0])])
    pred = noise_prediction(sharp, curves, runs, "train_loss", 0.5)
    assert pred.loc[("s", "m", "sqrt")].tolist() == [100.0, 50.0, 300.0, 1]
    best = pred.loc[("s", "m", "best")]
    assert best["b_noise_predicted"] == 40.0 and best["b_noise_n_runs"] == 3
    assert 20.0 <= best["b_noise_ci_low"] < 40.0 < best["b_noise_ci_high"] <= 100.0  # bootstrap of the median
    pd.testing.assert_frame_equal(pred, noise_prediction(sharp, curves, runs, "train_loss", 0.5))  # seeded


def test_median_with_interval_of_no_runs_is_nan():
    empty = median_with_interval([], [], [])
    assert np.isnan(empty["b_noise_predicted"]) and np.isnan(empty["b_noise_ci_low"]) and empty["b_noise_n_runs"] == 0


def test_speedup_tables_cover_every_rule_and_target():
    runs, curves = synthetic_runs(seeds=(0, 1))
    speed, crit = speedup_tables(runs, curves, {"s": {"targets": {"train_loss": [0.1, 0.01]}, "n_bootstrap": 100}})
    assert list(speed.columns) == list(SPEEDUP_COLUMNS) and list(crit.columns) == list(CRITICAL_COLUMNS)
    assert set(speed["lr_rule"]) == {"linear", "best"} and set(speed["target_value"]) == {0.1, 0.01}
    reached = speed[speed["target_value"] == 0.1]
    assert reached["reached"].all() and not speed[speed["target_value"] == 0.01]["reached"].any()
    linear, best = (reached[reached["lr_rule"] == r].reset_index(drop=True) for r in ("linear", "best"))
    pd.testing.assert_series_equal(linear["steps_to_target"], best["steps_to_target"])  # one rule: best is the same
    row = crit[(crit["lr_rule"] == "linear") & (crit["target_value"] == 0.1)].iloc[0]
    assert row["fit_status"] == "ok" and row["b_crit_bound"] is None
    assert row["b_crit"] == pytest.approx(64, rel=0.2) and row["ci_low"] < row["b_crit"] < row["ci_high"]
    unreached = crit[crit["target_value"] == 0.01]
    assert np.isnan(unreached["b_crit"]).all() and (unreached["fit_status"] == "too_few_points").all()
    assert set(speed["regime"].dropna()) <= {"near-linear", "diminishing", "plateau"}
    assert reached["regime"].notna().all() and speed[~speed["reached"]]["regime"].isna().all()
    assert crit["b_noise_predicted"].isna().all() and (crit["b_noise_n_runs"] == 0).all()  # no sharpness table


def test_no_regime_without_an_accepted_fit():
    # B_crit = 1e5 with batches up to 512: every point reached, but the fit only gives a bound
    runs, curves = synthetic_runs(b_crit=1e5, s_min=0.1, seeds=(0, 1))
    speed, crit = speedup_tables(runs, curves, {"s": {"targets": {"train_loss": [0.1]}, "n_bootstrap": 20}})
    assert speed["reached"].all() and speed["regime"].isna().all()
    assert (crit["fit_status"] == "beyond_grid").all() and crit["b_crit"].isna().all()
    assert crit["b_crit_bound"].str.startswith(">").all()


def test_speedup_tables_carry_the_noise_prediction():
    runs, curves = synthetic_runs(seeds=(0, 1))
    target_step = run_steps_to_target(runs, curves, "train_loss", 0.1)
    sharp = noise_rows(runs["run_id"], target_step.astype(int), 64.0)
    sharp = pd.concat([sharp, noise_rows(runs["run_id"], 4 * target_step.astype(int), 9999.0)])  # beyond factor 2
    _, crit = speedup_tables(runs, curves, {"s": {"targets": {"train_loss": [0.1, 0.01]}, "n_bootstrap": 20}},
                             sharpness=sharp)
    reached = crit[crit["target_value"] == 0.1]
    assert (reached["b_noise_predicted"] == 64.0).all() and (reached["b_noise_n_runs"] == len(runs)).all()
    assert (reached["b_noise_ci_low"] == 64.0).all() and (reached["b_noise_ci_high"] == 64.0).all()
    unreached = crit[crit["target_value"] == 0.01]
    assert unreached["b_noise_predicted"].isna().all() and (unreached["b_noise_n_runs"] == 0).all()


def test_a_study_without_targets_gives_typed_empty_tables():
    runs, curves = synthetic_runs(seeds=(0,))
    speed, crit = speedup_tables(runs, curves, {"s": {"targets": {}, "n_bootstrap": 20}})
    assert speed.empty and crit.empty
    assert list(speed.columns) == list(SPEEDUP_COLUMNS) and list(crit.columns) == list(CRITICAL_COLUMNS)
    assert speed["reached"].dtype == bool and speed["speedup"].dtype == float and speed["study"].dtype == object
    assert crit["b_crit"].dtype == float and crit["fit_status"].dtype == object
    assert speed[speed["reached"]].shape == (0, len(SPEEDUP_COLUMNS))  # a boolean mask, not a column selection
    # the same dtypes as tables with rows
    full_speed, full_crit = speedup_tables(runs, curves, {"s": {"targets": {"train_loss": [0.1]}, "n_bootstrap": 20}})
    pd.testing.assert_series_equal(speed.dtypes, full_speed.dtypes)
    pd.testing.assert_series_equal(crit.dtypes, full_crit.dtypes)
