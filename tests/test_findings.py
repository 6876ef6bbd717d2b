"""Each claim's verdict rule on synthetic tables: reproduced, not reproduced, and inconclusive for each reason."""

import numpy as np
import pandas as pd
import pytest

from batchlab.findings import (
    CLAIMS, FINDING_COLUMNS, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Tables, findings_table, judge_domains,
    judge_fraction, judge_ghost_bn, judge_knee, judge_lb_worse, judge_noise_scale, judge_regimes,
    judge_sharper_by_orders, judge_sharper_lb, judge_small_batches, judge_test_worse, keskar_protocol, verdict_of,
    verdict_within,
)

EQUAL_EPOCHS = {"s": {"dataset": "mnist1d", "budget": {"epochs": 10}}}
CONVERGED = {"s": {"dataset": "mnist1d", "budget": {"epochs": 800, "stop": {"train_loss": 0.01}}}}


def grid_runs(quality, batch_sizes=(16, 32, 64, 128, 256), base_lrs=(0.01, 0.1, 1.0), seeds=(0, 1, 2), study="s",
              model="mlp", task="classification", bn_batch_sizes=(None,), train_loss=0.1, median=True) -> pd.DataFrame:
    """A grid whose final test accuracy is quality(batch, base_lr, bn) plus a small seed-dependent noise; its median
    over the last 5 epochs the same where `median` (Masters & Luschi's measure recorded), else absent."""
    rows = []
    for b in batch_sizes:
        for lr in base_lrs:
            for bn in bn_batch_sizes:
                for seed in seeds:
                    rows.append(dict(run_id=f"{study}/{model}/bs{b}/bn{bn}/lr{lr}/seed{seed}", study=study, model=model,
                                     task=task, train_fraction=1.0, batch_size=b, bn_batch_size=bn, lr_rule="linear",
                                     base_lr=lr, seed=seed, status="completed",
                                     final_test_acc=quality(b, lr, bn) + 0.001 * seed, final_train_loss=train_loss))
    runs = pd.DataFrame(rows)
    return runs.assign(median_last_epochs_test_acc=runs["final_test_acc"], median_last_epochs_n=5) if median else runs


def tables(runs=None, speedup=None, critical=None, ratios=None, studies=EQUAL_EPOCHS) -> Tables:
    empty = pd.DataFrame(columns=["study", "model"])
    return Tables(runs if runs is not None else grid_runs(lambda b, lr, bn: 0.9), speedup if speedup is not None
                  else empty, critical if critical is not None else empty, ratios if ratios is not None else empty,
                  studies)


def peaked(best_batch, best_lr=0.1):
    """Accuracy peaked at one batch size and one base LR, falling away on both sides."""
    return lambda b, lr, bn: 0.9 - 0.05 * abs(np.log2(b / best_batch)) - 0.05 * abs(np.log10(lr / best_lr))


# --- the rules every claim shares --------------------------------------------------------------------------

def test_an_interval_is_judged_by_its_side_of_the_threshold():
    assert verdict_of(1.2, 3.0, 1.0) == (REPRODUCED, "")
    assert verdict_of(0.2, 0.9, 1.0) == (NOT_REPRODUCED, "")
    assert verdict_of(0.8, 1.5, 1.0) == (INCONCLUSIVE, "the interval spans 1")
    assert verdict_of(np.nan, np.nan, 1.0)[0] == INCONCLUSIVE
    assert verdict_of(8.0, 20.0, 32.5, above=False) == (REPRODUCED, "")
    assert verdict_within(0.5, 3.0, 10.0) == (REPRODUCED, "")
    assert verdict_within(12.0, 40.0, 10.0) == (NOT_REPRODUCED, "")
    assert verdict_within(0.5, 40.0, 10.0)[0] == INCONCLUSIVE


def test_keskar_protocol_needs_convergence_or_a_matched_train_loss():
    assert keskar_protocol(CONVERGED["s"], 0.008, 0.012)[0]
    assert keskar_protocol(EQUAL_EPOCHS["s"], 0.10, 0.15)[0]  # matched within 2x
    met, why = keskar_protocol(EQUAL_EPOCHS["s"], 0.088, 1.12)
    assert not met and why.startswith("protocol not met (equal epochs)") and "1.12" in why


# --- Masters & Luschi ------------------------------------------------------------------------------------------

def test_small_batches_reproduced_when_the_best_batch_is_small_and_the_lr_grid_brackets_it():
    [row] = judge_small_batches(tables(grid_runs(peaked(32))))
    assert row["verdict"] == REPRODUCED and row["value"] == 32 and row["ci_high"] <= 32


def test_small_batches_not_reproduced_when_the_best_batch_is_large():
    [row] = judge_small_batches(tables(grid_runs(peaked(128))))
    assert row["verdict"] == NOT_REPRODUCED and row["value"] == 128 and row["ci_low"] > 32


def test_small_batches_inconclusive_when_the_best_lr_sits_at_the_grid_edge():
    [row] = judge_small_batches(tables(grid_runs(peaked(32, best_lr=1.0))))
    assert row["verdict"] == INCONCLUSIVE and "does not bracket the optimum" in row["reason"]


def test_small_batches_inconclusive_without_equal_epochs_or_with_one_seed():
    [row] = judge_small_batches(tables(grid_runs(peaked(32)), studies=CONVERGED))
    assert row["verdict"] == INCONCLUSIVE and "not for equal epochs" in row["reason"]
    [row] = judge_small_batches(tables(grid_runs(peaked(32), seeds=(0,))))
    assert row["verdict"] == INCONCLUSIVE and "one seed" in row["reason"]


def test_a_best_batch_at_the_small_edge_of_the_grid_says_so():
    [row] = judge_small_batches(tables(grid_runs(peaked(4))))
    assert row["value"] == 16 and "smallest of the grid" in row["reason"]


def test_ghost_bn_reproduced_when_every_sgd_batch_prefers_a_small_bn_batch():
    quality = lambda b, lr, bn: 0.9 - 0.03 * abs(np.log2(bn / 8)) - 0.05 * abs(np.log10(lr / 0.1))  # noqa: E731
    runs = grid_runs(quality, batch_sizes=(32, 64, 128), bn_batch_sizes=(2, 8, 32))
    [row] = judge_ghost_bn(tables(runs))
    assert row["verdict"] == REPRODUCED and row["value"] == 8
    quality = lambda b, lr, bn: 0.9 - 0.03 * abs(np.log2(bn / b)) - 0.05 * abs(np.log10(lr / 0.1))  # noqa: E731
    [row] = judge_ghost_bn(tables(grid_runs(quality, batch_sizes=(32, 64, 128), bn_batch_sizes=(2, 8, 32, 128))))
    assert row["verdict"] == NOT_REPRODUCED


def test_ghost_bn_not_measured_without_a_bn_grid():
    [row] = judge_ghost_bn(tables())
    assert row["verdict"] == INCONCLUSIVE and row["reason"].startswith("not measured")


# --- Keskar ---------------------------------------------------------------------------------------------------

def ratio_row(ratio, low, high, sb_loss=0.01, lb_loss=0.012, **extra):
    return dict(study="s", model="mlp", train_fraction=1.0, metric="eps_sharpness_full", epsilon=1e-3, sb_batch_size=32,
                lb_batch_size=400, n_pairs=5, ratio=ratio, ratio_ci_low=low, ratio_ci_high=high, sb_train_loss=sb_loss,
                lb_train_loss=lb_loss, **extra)


@pytest.mark.parametrize("ratio, low, high, verdict", [(2.3, 1.9, 2.9, REPRODUCED), (0.5, 0.3, 0.8, NOT_REPRODUCED),
                                                       (1.1, 0.7, 1.6, INCONCLUSIVE)])
def test_lb_sharper_verdict_follows_the_interval_under_the_protocol(ratio, low, high, verdict):
    [row] = judge_sharper_lb(tables(ratios=pd.DataFrame([ratio_row(ratio, low, high)]), studies=CONVERGED))
    assert row["verdict"] == verdict and row["condition"] == "ε = 0.001" and "167× (F1)" in row["paper_value"]


def test_lb_sharper_is_context_only_when_the_ends_stopped_at_different_losses():
    ratios = pd.DataFrame([ratio_row(2.3, 1.9, 2.9, sb_loss=0.088, lb_loss=1.12)])
    [row] = judge_sharper_lb(tables(ratios=ratios))
    assert row["verdict"] == INCONCLUSIVE and row["reason"].startswith("protocol not met")
    assert row["value"] == pytest.approx(2.3) and "context only" in row["value_text"]


def test_lb_sharper_judges_the_converged_search_and_shows_keskars_beside_it():
    ratios = pd.DataFrame([ratio_row(0.9, 0.7, 1.1, method="lbfgsb"), ratio_row(1.95, 1.6, 2.4, method="lbfgsb_multistart")])
    [row] = judge_sharper_lb(tables(ratios=ratios, studies=CONVERGED))
    assert row["verdict"] == REPRODUCED and row["value"] == pytest.approx(1.95)
    assert "converged search; Keskar's 10-iteration search: 0.9× [0.7, 1.1]" in row["value_text"]
    [row] = judge_sharper_lb(tables(ratios=ratios.iloc[:1], studies=CONVERGED))  # Keskar's search alone
    assert row["verdict"] == INCONCLUSIVE and "Keskar's search)" in row["value_text"]


def test_keskar_magnitude_asks_for_an_order_of_magnitude():
    ratios = pd.DataFrame([ratio_row(2.3, 1.9, 2.9), ratio_row(50.0, 20.0, 90.0)])
    verdicts = [r["verdict"] for r in judge_sharper_by_orders(tables(ratios=ratios, studies=CONVERGED))]
    assert verdicts == [NOT_REPRODUCED, REPRODUCED]


def jittered(runs, seed=0):
    """Pairs that differ by seed, so that their difference has a spread."""
    noise = np.random.default_rng(seed).normal(0, 0.003, len(runs))
    return runs.assign(final_test_acc=runs["final_test_acc"] + noise)


def test_lb_worse_test_accuracy_from_paired_runs():
    worse = jittered(grid_runs(lambda b, lr, bn: 0.95 - b / 10000, batch_sizes=(32, 400), base_lrs=(0.001,),
                               seeds=range(5)))
    [row] = judge_lb_worse(tables(worse))
    assert row["verdict"] == REPRODUCED and row["value"] == pytest.approx(-0.0368, abs=0.005)
    better = jittered(grid_runs(lambda b, lr, bn: 0.9 + b / 10000, batch_sizes=(32, 400), base_lrs=(0.001,),
                                seeds=range(5)))
    assert judge_lb_worse(tables(better))[0]["verdict"] == NOT_REPRODUCED
    unmatched = worse.assign(final_train_loss=np.where(worse["batch_size"] == 400, 1.0, 0.1))
    assert judge_lb_worse(tables(unmatched))[0]["reason"].startswith("protocol not met")


# --- Golmant, Shallue, McCandlish ---------------------------------------------------------------------------

def fit(study="s", model="mlp", metric="train_loss", fraction=1.0, **values):
    row = dict(study=study, model=model, train_fraction=fraction, lr_rule="best", target_metric=metric,
               target_value=0.5, target_rule="fixed", target_batch_size=None, target_fallback=False, b_crit=64.0,
               s_min=100.0, ci_low=40.0, ci_high=100.0, n_points=5, fit_status="ok", b_crit_bound=None,
               not_reached_reason=None, b_simple=np.nan, b_simple_ci_low=np.nan, b_simple_ci_high=np.nan,
               b_simple_n_runs=0, b_noise=np.nan, b_noise_ci_low=np.nan, b_noise_ci_high=np.nan, b_noise_n_runs=0,
               b_noise_train_loss=0.5)
    return {**row, **values}


def curve(b_crit=64.0, batches=(16, 32, 64, 128, 256, 512, 1024), reached=None, speedup_ci_high=None, **key):
    """The speed-up rows of S(B) = 100 (1 + B_crit / B) at a fixed train-loss target, regimes as the fit gives."""
    rows = []
    for i, b in enumerate(batches):
        exponent = b_crit / (b + b_crit)
        ok = True if reached is None else reached[i]
        rows.append(dict(study="s", model="mlp", train_fraction=1.0, lr_rule="best", target_metric="train_loss",
                         target_value=0.5, target_rule="fixed", batch_size=b, reached=ok,
                         steps_to_target=100 * (1 + b_crit / b) if ok else np.nan,
                         speedup_ci_high=speedup_ci_high[i] if speedup_ci_high else 10.0,
                         regime=("near-linear" if exponent >= 0.8 else "plateau" if exponent <= 0.2 else "diminishing")
                         if ok else None, **key))
    return pd.DataFrame(rows)


def test_knee_reproduced_inside_the_grid_and_inconclusive_at_its_edge():
    [row] = judge_knee(tables(speedup=curve(), critical=pd.DataFrame([fit()])))
    assert row["verdict"] == REPRODUCED and row["value"] == 64
    edge = fit(b_crit=np.nan, fit_status="beyond_grid", b_crit_bound=">512", ci_high=np.inf)
    [row] = judge_knee(tables(speedup=curve(), critical=pd.DataFrame([edge])))
    assert row["verdict"] == INCONCLUSIVE and row["reason"].startswith("grid edge")


def test_knee_inconclusive_when_the_large_batches_ran_out_of_budget():
    failed = fit(b_crit=np.nan, fit_status="not_reached", not_reached_reason="budget")
    reached = [True, True, True, False, False, False, False]
    [row] = judge_knee(tables(speedup=curve(reached=reached), critical=pd.DataFrame([failed])))
    assert row["verdict"] == INCONCLUSIVE and "budget" in row["reason"] and ">" not in row["value_text"]


def test_knee_not_reproduced_when_steps_rise_with_the_batch():
    rising = curve(speedup_ci_high=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    [row] = judge_knee(tables(speedup=rising, critical=pd.DataFrame([fit(fit_status="below_grid")])))
    assert row["verdict"] == NOT_REPRODUCED


def domain_runs(study, task):
    return grid_runs(lambda b, lr, bn: 0.5, study=study, task=task, batch_sizes=(16, 32), seeds=(0,))


def test_domains_compare_separate_intervals_with_the_papers_order():
    runs = pd.concat([domain_runs("c", "classification"), domain_runs("l", "language_model")])
    in_order = [fit("c", b_crit=500.0, ci_low=300.0, ci_high=800.0), fit("l", b_crit=20.0, ci_low=10.0, ci_high=40.0)]
    assert judge_domains(tables(runs, critical=pd.DataFrame(in_order)))[0]["verdict"] == REPRODUCED
    reversed_ = [fit("c", b_crit=20.0, ci_low=10.0, ci_high=40.0), fit("l", b_crit=500.0, ci_low=300.0, ci_high=800.0)]
    assert judge_domains(tables(runs, critical=pd.DataFrame(reversed_)))[0]["verdict"] == NOT_REPRODUCED
    overlap = [fit("c", b_crit=50.0, ci_low=10.0, ci_high=800.0), fit("l", b_crit=20.0, ci_low=10.0, ci_high=40.0)]
    assert judge_domains(tables(runs, critical=pd.DataFrame(overlap)))[0]["reason"] == "the domains' intervals overlap"
    [one] = judge_domains(tables(runs, critical=pd.DataFrame(in_order[:1])))
    assert one["verdict"] == INCONCLUSIVE and "fewer than two domains" in one["reason"]


def test_test_loss_scaling_worse_than_train_loss():
    worse = [fit(), fit(metric="test_loss", b_crit=10.0, ci_low=5.0, ci_high=20.0)]
    assert judge_test_worse(tables(critical=pd.DataFrame(worse)))[0]["verdict"] == REPRODUCED
    better = [fit(), fit(metric="test_loss", b_crit=400.0, ci_low=200.0, ci_high=800.0)]
    assert judge_test_worse(tables(critical=pd.DataFrame(better)))[0]["verdict"] == NOT_REPRODUCED
    no_fit = [fit(), fit(metric="test_loss", b_crit=np.nan, fit_status="too_few_points")]
    row = judge_test_worse(tables(critical=pd.DataFrame(no_fit)))[0]
    assert row["verdict"] == INCONCLUSIVE and "test loss" in row["reason"]


def test_training_fraction_hardly_moves_b_crit():
    same = [fit(), fit(fraction=0.5, b_crit=60.0, ci_low=50.0, ci_high=70.0)]
    same[0].update(ci_low=55.0, ci_high=75.0)
    assert judge_fraction(tables(critical=pd.DataFrame(same)))[0]["verdict"] == REPRODUCED
    moved = [fit(), fit(fraction=0.5, b_crit=8.0, ci_low=5.0, ci_high=12.0)]
    assert judge_fraction(tables(critical=pd.DataFrame(moved)))[0]["verdict"] == NOT_REPRODUCED
    assert judge_fraction(tables(critical=pd.DataFrame([fit()])))[0]["reason"].startswith("not measured")


def test_noise_scale_prediction_within_an_order_of_magnitude():
    close = fit(b_simple=100.0, b_simple_ci_low=80.0, b_simple_ci_high=150.0, b_simple_n_runs=3)
    [row] = judge_noise_scale(tables(critical=pd.DataFrame([close])))
    assert row["verdict"] == REPRODUCED and row["condition"].startswith("B_simple")
    assert "read at train loss 0.5" in row["caveats"]
    far = fit(b_simple=9000.0, b_simple_ci_low=6000.0, b_simple_ci_high=12000.0)
    assert judge_noise_scale(tables(critical=pd.DataFrame([far])))[0]["verdict"] == NOT_REPRODUCED
    exact = fit(b_simple=100.0, b_simple_ci_low=np.nan, b_simple_ci_high=np.nan)
    row = judge_noise_scale(tables(critical=pd.DataFrame([exact])))[0]
    assert row["verdict"] == INCONCLUSIVE and np.isnan(row["ci_low"])
    unbounded = fit(b_simple=100.0, b_simple_ci_low=20.0, b_simple_ci_high=np.inf)
    assert judge_noise_scale(tables(critical=pd.DataFrame([unbounded])))[0]["verdict"] == INCONCLUSIVE


def test_both_noise_scales_are_judged_beside_each_other():
    both = fit(b_simple=9000.0, b_simple_ci_low=6000.0, b_simple_ci_high=12000.0,
               b_noise=100.0, b_noise_ci_low=80.0, b_noise_ci_high=150.0)
    rows = judge_noise_scale(tables(critical=pd.DataFrame([both])))
    assert [r["condition"].split(" ")[0] for r in rows] == ["B_simple", "B_noise"]
    assert [r["verdict"] for r in rows] == [NOT_REPRODUCED, REPRODUCED]


def test_three_regimes_need_the_plateau_in_the_grid():
    [row] = judge_regimes(tables(speedup=curve(), critical=pd.DataFrame([fit()])))
    assert row["verdict"] == REPRODUCED
    short = curve(batches=(16, 32, 64, 128))
    [row] = judge_regimes(tables(speedup=short, critical=pd.DataFrame([fit()])))
    assert row["verdict"] == INCONCLUSIVE and "no plateau" in row["reason"]


def test_the_table_has_a_row_for_every_claim_and_a_verdict_in_each():
    t = tables(grid_runs(peaked(32)), speedup=curve(), critical=pd.DataFrame([fit()]),
               ratios=pd.DataFrame([ratio_row(2.3, 1.9, 2.9)]))
    table = findings_table(*t)
    assert list(table.columns) == list(FINDING_COLUMNS)
    assert set(table["claim_id"]) == {c.id for c in CLAIMS}
    assert table["verdict"].isin([REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE]).all()
    assert (table["paper_value"].str.len() > 1).all()  # the paper's value, or shape, on every row


def test_the_generalization_gap_is_asked_of_classification_only():
    lm = jittered(grid_runs(lambda b, lr, bn: 0.95 - b / 10000, batch_sizes=(32, 400), base_lrs=(0.001,),
                            seeds=range(5), task="language_model"))
    [row] = judge_lb_worse(tables(lm.assign(final_test_perplexity=50.0)))
    assert row["reason"].startswith("not measured: no classification study")


def with_median(runs: pd.DataFrame, quality, n: int = 5) -> pd.DataFrame:
    """`runs` with a median test accuracy over the last `n` epochs of quality(batch, base_lr, bn), beside their final
    accuracy."""
    median = [quality(b, lr, bn) + 0.001 * seed
              for b, lr, bn, seed in zip(runs["batch_size"], runs["base_lr"], runs["bn_batch_size"], runs["seed"])]
    return runs.assign(median_last_epochs_test_acc=median, median_last_epochs_n=n)


def test_small_batches_judged_by_the_median_over_the_last_epochs_where_recorded():
    runs = with_median(grid_runs(peaked(128)), peaked(32))  # the final accuracy peaks at 128, the median at 32
    [row] = judge_small_batches(tables(runs))
    assert row["verdict"] == REPRODUCED and row["value"] == 32
    assert "median test accuracy over the last 5 epochs" in row["value_text"] and "protocol not met" not in row["reason"]
    [row] = judge_small_batches(tables(with_median(grid_runs(peaked(128)), peaked(32), n=3)))
    assert row["value"] == 32 and "a median over 3 epoch ends, not the paper's 5" in row["reason"]


def test_small_batches_fall_back_to_the_final_accuracy_and_say_so():
    [row] = judge_small_batches(tables(grid_runs(peaked(128), median=False)))  # no median column: runs of before it
    assert row["value"] == 128 and "final test quality" in row["value_text"] and row["verdict"] == INCONCLUSIVE
    assert "protocol not met for the measure: final test accuracy, not the median over the last 5 epochs" in row["reason"]
    # one completed run without it (trained without eval.last_epochs): the final accuracy for all
    runs = with_median(grid_runs(peaked(128)), peaked(32))
    runs.loc[3, "median_last_epochs_test_acc"] = np.nan
    [row] = judge_small_batches(tables(runs))
    assert row["value"] == 128 and "protocol not met for the measure" in row["reason"] and row["verdict"] == INCONCLUSIVE


def test_a_run_that_did_not_complete_needs_no_median_and_scores_worst():
    runs = with_median(grid_runs(peaked(32)), peaked(32))
    best = runs["batch_size"] == 32
    runs.loc[best, "status"] = "diverged"
    runs.loc[best, "median_last_epochs_test_acc"] = np.nan  # a diverged run records none
    [row] = judge_small_batches(tables(runs))
    assert row["value"] in (16, 64) and "protocol not met" not in row["reason"]
    assert "median test accuracy over the last 5 epochs" in row["value_text"]


def test_ghost_bn_judged_by_the_median_over_the_last_epochs_where_recorded():
    final = lambda b, lr, bn: 0.9 - 0.03 * abs(np.log2(bn / 32)) - 0.05 * abs(np.log10(lr / 0.1))  # noqa: E731
    median = lambda b, lr, bn: 0.9 - 0.03 * abs(np.log2(bn / 8)) - 0.05 * abs(np.log10(lr / 0.1))  # noqa: E731
    runs = grid_runs(final, batch_sizes=(32, 64, 128), bn_batch_sizes=(2, 8, 32), median=False)
    [row] = judge_ghost_bn(tables(with_median(runs, median)))
    assert row["verdict"] == REPRODUCED and row["value"] == 8 and "over the last 5 epochs" in row["value_text"]
    [row] = judge_ghost_bn(tables(runs))
    assert row["value"] == 32 and "protocol not met for the measure" in row["reason"] and row["verdict"] == INCONCLUSIVE
