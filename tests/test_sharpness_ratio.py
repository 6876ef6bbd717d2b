import numpy as np
import pandas as pd
import pytest
from scipy import stats

from batchlab.sharpness_ratio import geometric_mean_interval, headline_ratio, sharpness_ratios


def fake_runs(batch_sizes=(32, 400), seeds=(0, 1, 2), statuses=None) -> pd.DataFrame:
    rows = []
    for b in batch_sizes:
        for s in seeds:
            run_id = f"k/mlp/bs{b}/constant/lr0.001/seed{s}"
            rows.append(dict(run_id=run_id, study="k", model="mlp", batch_size=b, lr_rule="constant", base_lr=0.001,
                             seed=s, bn_batch_size=pd.NA, steps=100 + b, final_train_loss=0.01 * b / 32,
                             final_test_acc=0.9 - b / 4000, status=(statuses or {}).get(run_id, "completed")))
    return pd.DataFrame(rows).astype({"bn_batch_size": "Int64"})


def fake_sharpness(runs: pd.DataFrame, lb_factor=(4.0, 5.0, 6.0)) -> pd.DataFrame:
    """SB sharpness 1 + seed; batch >= 400: that x lb_factor[seed]; lambda_max 10x that; plus an earlier checkpoint."""
    rows = []
    for r in runs.itertuples():
        base = (1.0 + r.seed) * (lb_factor[r.seed] if r.batch_size >= 400 else 1.0)
        for step, scale in ((r.steps, 1.0), (r.steps // 2, 100.0)):
            for eps in (1e-3, 5e-4):
                rows.append(dict(run_id=r.run_id, step=step, metric="eps_sharpness_full", epsilon=eps, value=base * scale * eps * 1e3))
            rows.append(dict(run_id=r.run_id, step=step, metric="hessian_lambda_max", epsilon=np.nan, value=10 * base * scale))
            rows.append(dict(run_id=r.run_id, step=step, metric="noise_scale", epsilon=np.nan, value=123.0))
    return pd.DataFrame(rows)


def test_ratio_is_the_geometric_mean_of_seed_pairs_with_a_t_interval():
    runs = fake_runs()
    ratios = sharpness_ratios(runs, fake_sharpness(runs))
    assert set(ratios["metric"]) == {"eps_sharpness_full", "hessian_lambda_max"}  # not the noise scale
    full = ratios[(ratios["metric"] == "eps_sharpness_full") & (ratios["epsilon"] == 1e-3)].iloc[0]
    logs = np.log([4.0, 5.0, 6.0])
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / np.sqrt(3)
    assert full["ratio"] == pytest.approx(np.exp(logs.mean()))  # final checkpoints only, not the x100 earlier ones
    assert (full["ratio_ci_low"], full["ratio_ci_high"]) == pytest.approx((np.exp(logs.mean() - half), np.exp(logs.mean() + half)))
    assert (full["sb_batch_size"], full["lb_batch_size"], full["n_pairs"]) == (32, 400, 3)
    assert full["sb_value"] == pytest.approx(2.0) and full["lb_value"] == pytest.approx(2.0 * 5)
    assert full["sb_train_loss"] == pytest.approx(0.01) and full["lb_train_loss"] == pytest.approx(0.125)
    lam = ratios[ratios["metric"] == "hessian_lambda_max"].iloc[0]
    assert np.isnan(lam["epsilon"]) and lam["ratio"] == pytest.approx(full["ratio"])


def test_unhealthy_runs_are_never_an_end_and_do_not_move_the_ratio():
    runs = fake_runs(batch_sizes=(32, 400, 800))
    sharp = fake_sharpness(runs)
    # every bs800 run stalled: LB falls back to 400, and the result equals a grid without bs800
    stalled = runs.assign(status=np.where(runs["batch_size"] == 800, "stalled", "completed"))
    without = runs[runs["batch_size"] != 800]
    expected = sharpness_ratios(without, fake_sharpness(without))
    got = sharpness_ratios(stalled, sharp)
    assert (got["lb_batch_size"] == 400).all()
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    # one diverged LB seed drops its pair only
    one = runs[runs["batch_size"] != 800].copy()
    one.loc[one["run_id"] == "k/mlp/bs400/constant/lr0.001/seed2", "status"] = "diverged"
    row = headline_ratio(sharpness_ratios(one, fake_sharpness(one))).iloc[0]
    assert row["n_pairs"] == 2 and row["ratio"] == pytest.approx(np.sqrt(4.0 * 5.0))


def test_headline_is_full_space_at_the_largest_epsilon():
    runs = fake_runs()
    head = headline_ratio(sharpness_ratios(runs, fake_sharpness(runs)))
    assert len(head) == 1 and head.iloc[0]["metric"] == "eps_sharpness_full" and head.iloc[0]["epsilon"] == 1e-3


def test_one_pair_has_no_interval_and_non_positive_values_are_counted_out():
    assert np.isnan(geometric_mean_interval(np.array([3.0]))[1])
    runs = fake_runs(seeds=(0, 1))
    sharp = fake_sharpness(runs)
    sharp.loc[(sharp["run_id"] == "k/mlp/bs32/constant/lr0.001/seed0") & (sharp["metric"] == "hessian_lambda_max"), "value"] = 0.0
    lam = sharpness_ratios(runs, sharp).query("metric == 'hessian_lambda_max'").iloc[0]
    assert lam["n_pairs"] == 1 and lam["ratio"] == pytest.approx(5.0) and np.isnan(lam["ratio_ci_low"])


def test_a_single_batch_size_gives_no_comparison():
    runs = fake_runs(batch_sizes=(32,))
    assert sharpness_ratios(runs, fake_sharpness(runs)).empty
