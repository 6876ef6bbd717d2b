import numpy as np
import pandas as pd
import pytest
from scipy import stats

from batchlab.noise_prediction import (
    NOISE_COLUMNS, READ_TOLERANCE, attach_noise_predictions, pooled, read_at_level, run_levels,
)


def points(steps, losses, values, ci_low=None, ci_high=None):
    nan = [np.nan] * len(steps)
    return pd.DataFrame(dict(step=steps, train_loss=losses, value=values, ci_low=nan if ci_low is None else ci_low,
                             ci_high=nan if ci_high is None else ci_high))


def test_a_bracketed_level_is_interpolated_in_log_loss():
    read = read_at_level(points([0, 10, 20, 30], [2.3, 1.2, 0.9, 0.5], [1.0, 100.0, 400.0, 9000.0],
                                ci_low=[1, 50, 200, 1], ci_high=[1, 200, 800, 1]), 1.0)
    w = np.log(1.2) / np.log(1.2 / 0.9)
    assert read["value"] == pytest.approx(np.exp((1 - w) * np.log(100) + w * np.log(400)))
    assert read["ci_low"] == pytest.approx(read["value"] / 2) and read["ci_high"] == pytest.approx(read["value"] * 2)
    assert read["train_loss"] == 1.0
    exact = read_at_level(points([10, 20], [1.2, 0.9], [100.0, 400.0]), 1.0)  # no interval of its own: none read
    assert np.isnan(exact["ci_low"]) and np.isnan(exact["ci_high"])


def test_a_wide_bracket_falls_back_to_the_nearest_checkpoint_or_to_nothing():
    # 1.1 and 0.3 bracket 1.0, but 0.3 is far from it: the nearest checkpoint, 1.1, is read as it is
    read = read_at_level(points([5, 10, 40], [2.0, 1.1, 0.3], [10.0, 135.0, 8819.0]), 1.0)
    assert read["value"] == 135.0 and read["train_loss"] == 1.1
    # the case: 1.51 and 0.32 around a target of 0.9, neither within a factor 1.25
    assert read_at_level(points([1157, 3750], [1.51, 0.32], [135.0, 8819.0]), 0.9) is None
    # just inside and just outside the tolerance
    assert read_at_level(points([10], [0.9 * READ_TOLERANCE * 0.999], [7.0]), 0.9)["value"] == 7.0
    assert read_at_level(points([10], [0.9 * READ_TOLERANCE * 1.001], [7.0]), 0.9) is None


def test_step_zero_and_unusable_values_are_never_read():
    assert read_at_level(points([0], [1.0], [50.0]), 1.0) is None
    assert read_at_level(points([10, 20], [1.0, 1.0], [np.inf, -3.0]), 1.0) is None
    read = read_at_level(points([10, 20], [1.05, 0.95], [np.nan, 80.0]), 1.0)
    assert read["value"] == 80.0 and read["train_loss"] == 0.95


def test_one_run_keeps_its_own_interval_and_an_exact_value_has_none():
    assert pooled([100.0], [60.0], [150.0]) == pytest.approx((100.0, 60.0, 150.0))
    centre, low, high = pooled([100.0], [np.nan], [np.nan])
    assert centre == 100.0 and np.isnan(low) and np.isnan(high)
    centre, low, high = pooled([100.0, 100.0], [np.nan] * 2, [np.nan] * 2)  # never an interval of width zero
    assert centre == pytest.approx(100.0) and np.isnan(low) and np.isnan(high)
    assert all(np.isnan(pooled([], [], [])))


def test_runs_pool_to_a_geometric_mean_with_a_t_interval_on_the_log_scale():
    values = np.array([50.0, 100.0, 200.0])
    centre, low, high = pooled(values, [np.nan] * 3, [np.nan] * 3)
    half = stats.t.ppf(0.975, 2) * np.log(values).std(ddof=1) / np.sqrt(3)
    assert centre == pytest.approx(100.0)
    assert (low, high) == pytest.approx((100 * np.exp(-half), 100 * np.exp(half)))
    # identical reads with their own errors: the interval comes from those errors
    z = stats.norm.ppf(0.975)
    centre, low, high = pooled([100.0, 100.0], [100 * np.exp(-z * 0.2)] * 2, [100 * np.exp(z * 0.2)] * 2)
    assert high / centre == pytest.approx(np.exp(stats.t.ppf(0.975, 1) * 0.2 / np.sqrt(2)))


def curve(run_id, steps, losses, accs=None):
    return pd.DataFrame(dict(run_id=run_id, step=steps, train_loss=losses, test_loss=[v * 1.5 for v in losses],
                             test_acc=accs if accs is not None else [1 - v / 4 for v in losses]))


def sharp_rows(run_id, steps, losses, values, metric="noise_scale"):
    return pd.DataFrame(dict(run_id=run_id, step=steps, train_loss=losses, metric=metric, value=values,
                             ci_low=np.nan, ci_high=np.nan))


def study():
    """Runs a, b (linear) and c (sqrt) reach train loss 0.5; their checkpoints bracket it."""
    runs = pd.DataFrame(dict(run_id=["a", "b", "c", "never", "diverged"], study="s", model="m",
                             lr_rule=["linear", "linear", "sqrt", "linear", "linear"],
                             status=["completed"] * 4 + ["diverged"]))
    curves = pd.concat([curve("a", [0, 10, 20, 40], [2.0, 0.55, 0.45, 0.1]),
                        curve("b", [0, 10, 20], [2.0, 0.6, 0.5]),
                        curve("c", [0, 10, 20], [2.0, 0.52, 0.48]),
                        curve("never", [0, 10, 20], [2.0, 1.0, 0.9]),
                        curve("diverged", [0, 10, 20], [2.0, 0.5, np.nan])])
    sharp = pd.concat([
        sharp_rows("a", [10, 20, 40], [0.55, 0.45, 0.1], [100.0, 100.0, 1e5]),
        sharp_rows("a", [10, 20, 40], [0.55, 0.45, 0.1], [30.0, 30.0, 1e4], metric="b_noise"),
        sharp_rows("b", [10, 20], [0.6, 0.5], [400.0, 400.0]),
        sharp_rows("c", [10, 20], [0.52, 0.48], [1000.0, 1000.0]),
        sharp_rows("never", [10, 20], [1.0, 0.9], [7.0, 7.0]),
        sharp_rows("diverged", [10], [0.5], [7.0]),
    ])
    return runs, curves, sharp


def critical_rows(rules=("linear", "sqrt", "best"), metric="train_loss", target=0.5, status="ok"):
    return pd.DataFrame(dict(study="s", model="m", train_fraction=1.0, lr_rule=list(rules), target_metric=metric,
                             target_value=target, fit_status=status, b_crit=50.0))


def test_critical_rows_get_both_measures_read_at_the_target():
    runs, curves, sharp = study()
    out = attach_noise_predictions(critical_rows(), runs, curves, sharp).set_index("lr_rule")
    assert list(out.columns[-len(NOISE_COLUMNS):]) == list(NOISE_COLUMNS) and out["b_crit"].eq(50.0).all()
    linear = out.loc["linear"]
    assert linear["b_simple"] == pytest.approx(200.0) and linear["b_simple_n_runs"] == 2  # a: 100, b: 400
    assert linear["b_simple_ci_low"] < 200.0 < linear["b_simple_ci_high"]
    assert linear["b_noise"] == pytest.approx(30.0) and linear["b_noise_n_runs"] == 1  # b has no B_noise
    assert np.isnan(linear["b_noise_ci_low"])  # one exact value: no interval
    assert linear["b_noise_train_loss"] == 0.5
    assert out.loc["sqrt", "b_simple"] == pytest.approx(1000.0) and out.loc["sqrt", "b_noise_n_runs"] == 0
    assert out.loc["best", "b_simple_n_runs"] == 3 and out.loc["best", "b_simple"] == pytest.approx(
        np.exp(np.log([100.0, 400.0, 1000.0]).mean()))


def test_a_test_target_reads_at_the_train_loss_where_each_run_met_it():
    runs, curves, sharp = study()
    # test loss is 1.5 x train loss: a meets 0.85 at step 10 (train 0.55), b at step 20 (train 0.5)
    levels = run_levels(runs, curves, "test_loss", 0.85)
    assert levels.to_dict() == {"a": 0.55, "b": 0.5, "c": 0.52}
    out = attach_noise_predictions(critical_rows(("linear",), metric="test_loss", target=0.85), runs, curves, sharp)
    assert out["b_noise_train_loss"].iloc[0] == pytest.approx(0.55)


def test_runs_that_did_not_reach_and_refused_targets_give_no_prediction():
    runs, curves, sharp = study()
    before = attach_noise_predictions(critical_rows(), runs, curves, sharp)
    extra = sharp_rows("never", [20], [0.5], [1e6])  # never reached 0.5 in its curve: not read
    pd.testing.assert_frame_equal(attach_noise_predictions(critical_rows(), runs, curves,
                                                           pd.concat([sharp, extra])), before)
    refused = attach_noise_predictions(critical_rows(status="target_above_initial"), runs, curves, sharp)
    assert (refused["b_simple_n_runs"] == 0).all() and refused["b_simple"].isna().all()
    nobody = attach_noise_predictions(critical_rows(target=0.01), runs, curves, sharp)
    assert (nobody[["b_simple_n_runs", "b_noise_n_runs"]] == 0).all().all() and nobody["b_noise_train_loss"].isna().all()
    empty = attach_noise_predictions(critical_rows(), runs, curves, sharp.iloc[:0])
    assert (empty["b_simple_n_runs"] == 0).all() and empty["b_simple_n_runs"].dtype == "int64"
