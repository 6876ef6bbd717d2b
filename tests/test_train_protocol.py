"""The papers' training protocol in the loop: warm-up by LR rule within one stack, and Masters & Luschi's
median test accuracy over the ends of the last epochs (the plan's evaluations, the curve's median, run.json)."""

import numpy as np
import pandas as pd
import pytest

from batchlab import io
from batchlab.lr_rules import schedule_factor
from batchlab.train.curve import Curve, last_epochs_median
from batchlab.train.loop import train_run, train_stack
from batchlab.train.plan import Plan, make_plan
from tests.conftest import make_spec
from tests.test_train import evaluations

RUN = "tiny/mlp/bs16/constant/lr0.05/seed0"  # 16 steps an epoch on the tiny data
SPARSE = {"regular_points": 2, "log_points": 0}


# --- the plan ------------------------------------------------------------------------------------------------

def test_the_plan_evaluates_the_ends_of_the_last_epochs_over_the_whole_sets():
    spec = make_spec({"budget": {"epochs": 10}, "eval": {**SPARSE, "last_epochs": 5}, "checkpoints": {"log_points": 0}},
                     run=RUN)
    plan = make_plan(spec, 256)
    ends = {96, 112, 128, 144, 160}
    assert plan.last_epoch_ends == ends and ends <= plan.eval_steps and ends <= plan.full_eval_steps
    assert plan.eval_steps == {0, 80, 160} | ends
    off = make_plan(make_spec({"budget": {"epochs": 10}, "eval": SPARSE, "checkpoints": {"log_points": 0}}, run=RUN), 256)
    assert off.last_epoch_ends == frozenset() and off.eval_steps == {0, 80, 160}


def test_the_last_epochs_are_whole_ones_and_no_more_than_the_run_has():
    steps = make_plan(make_spec({"budget": {"steps": 40}, "eval": {**SPARSE, "last_epochs": 2}}, run=RUN), 256)
    assert steps.last_epoch_ends == {16, 32}  # 40 steps: the third epoch is not whole
    short = make_plan(make_spec({"budget": {"epochs": 2}, "eval": {**SPARSE, "last_epochs": 5}}, run=RUN), 256)
    assert short.last_epoch_ends == {16, 32}
    tiny = make_plan(make_spec({"budget": {"steps": 10}, "eval": {**SPARSE, "last_epochs": 5}}, run=RUN), 256)
    assert tiny.last_epoch_ends == frozenset()  # not one whole epoch


# --- the median from a curve ----------------------------------------------------------------------------------

def curve_with_test_acc(values: dict[int, float], total: int) -> Curve:
    curve = Curve.empty(total)
    curve.evals = {s: (1.0, 0.5, 1.0, acc) for s, acc in values.items()}  # train loss, train acc, test loss, test acc
    return curve


def plan_with_ends(ends: set[int], total: int = 50) -> Plan:
    return Plan(10, total, frozenset(ends | {0, total}), frozenset({0}), frozenset(ends))


def test_the_median_of_an_odd_and_an_even_number_of_epoch_ends():
    values = {0: 0.1, 10: 0.3, 20: 0.8, 30: 0.6, 40: 0.7, 50: 0.65}
    curve = curve_with_test_acc(values, 50)
    odd = last_epochs_median(curve, plan_with_ends({30, 40, 50}), 50, "completed")
    assert odd == {"median_last_epochs_test_acc": 0.65, "median_last_epochs_n": 3, "median_last_epochs_reason": None}
    even = last_epochs_median(curve, plan_with_ends({20, 30, 40, 50}), 50, "completed")
    assert even["median_last_epochs_test_acc"] == pytest.approx(0.675) and even["median_last_epochs_n"] == 4
    stalled = last_epochs_median(curve, plan_with_ends({40, 50}), 50, "stalled")  # it trained to the end: measured
    assert stalled["median_last_epochs_test_acc"] == pytest.approx(0.675)


def test_no_median_for_a_run_that_stopped_early_diverged_or_did_not_ask():
    curve = curve_with_test_acc({0: 0.1, 10: 0.3, 20: 0.8, 30: 0.6}, 50)
    early = last_epochs_median(curve, plan_with_ends({30, 40, 50}), 30, "completed")
    assert early == {"median_last_epochs_test_acc": None, "median_last_epochs_n": 0,
                     "median_last_epochs_reason": "stopped early, at step 30 of 50"}
    diverged = last_epochs_median(curve, plan_with_ends({30, 40, 50}), 50, "diverged")
    assert diverged["median_last_epochs_test_acc"] is None and diverged["median_last_epochs_reason"] == "diverged"
    off = last_epochs_median(curve_with_test_acc({0: 0.1, 50: 0.4}, 50), plan_with_ends(set()), 50, "completed")
    assert off["median_last_epochs_test_acc"] is None and "eval.last_epochs is 0" in off["median_last_epochs_reason"]


# --- in a run -------------------------------------------------------------------------------------------------

def test_a_run_records_the_median_over_its_last_epochs_evaluated_on_the_whole_sets(tmp_path, tiny_data):
    eval_cfg = {"regular_points": 4, "log_points": 0, "last_epochs": 3, "train_subset": 100, "test_subset": 40}
    spec = make_spec({"budget": {"epochs": 4}, "eval": eval_cfg, "checkpoints": {"log_points": 0}}, run=RUN)
    summary = train_run(spec, tiny_data, tmp_path, device="cpu", progress=False)
    curve = evaluations(tmp_path)
    ends = [32, 48, 64]
    assert list(curve.index) == [0, 16, *ends]
    assert (curve.loc[[0, *ends], "eval_set"] == "full").all() and curve.loc[16, "eval_set"] == "subset"
    expected = float(np.median(curve.loc[ends, "test_acc"]))
    info = io.read_json(tmp_path / "run.json")
    assert info["median_last_epochs_test_acc"] == summary["median_last_epochs_test_acc"] == expected
    assert (info["median_last_epochs_n"], info["median_last_epochs_reason"]) == (3, None)


def test_a_run_stopped_by_its_convergence_budget_has_no_median(tmp_path, tiny_data):
    spec = make_spec({"budget": {"epochs": 20, "stop": {"train_loss": 1.5}}, "eval": {**SPARSE, "last_epochs": 5}},
                     run=RUN)
    summary = train_run(spec, tiny_data, tmp_path, device="cpu", progress=False)
    assert summary["steps"] < 320 and summary["stop_reason"] == "train_loss"
    assert summary["median_last_epochs_test_acc"] is None
    assert summary["median_last_epochs_reason"] == f"stopped early, at step {summary['steps']} of 320"


# --- warm-up by LR rule, in one stack ----------------------------------------------------------------------------

def two_rules(tmp_path, tiny_data, name: str, schedule: dict) -> dict[str, pd.DataFrame]:
    """The constant and linear runs at batch 64 (4 steps an epoch, 8 in all) trained as one stack: their curves."""
    specs = [make_spec({"schedule": schedule}, run=f"tiny/mlp/bs64/{rule}/lr0.05/seed0") for rule in ("constant", "linear")]
    dirs = [tmp_path / name / rule for rule in ("constant", "linear")]
    train_stack(specs, tiny_data, dirs, device="cpu", progress=False)
    return {rule: pd.read_parquet(d / "metrics.parquet") for rule, d in zip(("constant", "linear"), dirs)}


def test_only_the_rules_listed_warm_up_in_a_stack(tmp_path, tiny_data):
    mixed = two_rules(tmp_path, tiny_data, "mixed", {"warmup_steps": 4, "warmup_rules": ["linear"], "decay": "cosine"})
    # the linear rule's peak at batch 64 from the reference 64 is 0.05 too; row k is update k (step k - 1)
    linear_lr, constant_lr = mixed["linear"]["lr"].to_numpy(), mixed["constant"]["lr"].to_numpy()
    assert linear_lr[1:5] == pytest.approx([0.0125, 0.025, 0.0375, 0.05], rel=1e-12)
    assert constant_lr[1] == 0.05 and constant_lr[1:] == pytest.approx(
        [0.05 * schedule_factor(s, 8, {"warmup_steps": 4, "warmup_rules": ["linear"], "decay": "cosine",
                                        "decay_gamma": 0.1, "decay_milestones": [0.5, 0.75]}, "constant")
         for s in range(8)], rel=1e-12)
    # each member trains as it would beside a member of the same schedule: warm as under the default, cold as
    # without warm-up
    warm_all = two_rules(tmp_path, tiny_data, "all", {"warmup_steps": 4, "decay": "cosine"})
    cold_all = two_rules(tmp_path, tiny_data, "none", {"warmup_steps": 0, "decay": "cosine"})
    pd.testing.assert_frame_equal(mixed["linear"], warm_all["linear"])
    pd.testing.assert_frame_equal(mixed["constant"], cold_all["constant"])
    assert not mixed["constant"]["batch_loss"].equals(warm_all["constant"]["batch_loss"])


def test_a_warmup_from_a_start_factor_over_a_fraction_of_the_run(tmp_path, tiny_data):
    spec = make_spec({"budget": {"epochs": 5}, "schedule": {"warmup_fraction": 0.05, "warmup_start": 0.03125}},
                     run=RUN)  # 80 steps: 4 warm-up updates
    train_run(spec, tiny_data, tmp_path, device="cpu", progress=False)
    lr = pd.read_parquet(tmp_path / "metrics.parquet")["lr"].to_numpy()
    assert lr[1:6] == pytest.approx(0.05 * np.array([0.03125, 0.2734375, 0.515625, 0.7578125, 1.0]), rel=1e-12)
    assert (lr[6:] == 0.05).all()  # no decay
