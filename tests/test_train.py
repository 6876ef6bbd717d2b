import contextlib
import itertools
import signal
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from batchlab import io
from batchlab.data import TRAIN_SUBSET_SEED, Dataset
from batchlab.devices import resolve_device
from batchlab.health import prior_entropy
from batchlab.models import build_model
from batchlab.train import loop, resume
from batchlab.train.curve import first_bad_step
from batchlab.train.evaluation import eval_subset, evaluate
from batchlab.train.loop import train_run
from batchlab.train.plan import Plan, epoch_permutation, log_spaced_steps, make_plan
from batchlab.train.resume import RESUME_COST_FACTOR, RESUME_FLOOR_S, Interrupted
from batchlab.train.run_files import save_member_checkpoint
from batchlab.train.stack import Stack
from tests.conftest import make_spec


RUN = "tiny/mlp/bs16/constant/lr0.05/seed0"  # 16 steps an epoch on the tiny data


def load_weights(run_dir):
    return io.load_torch(run_dir / "final.pt")["model"]


def assert_same_results(a, b):
    """Bit for bit the same final weights and the same curve."""
    weights = load_weights(b)
    for k, v in load_weights(a).items():
        assert torch.equal(v, weights[k]), k
    pd.testing.assert_frame_equal(pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet"))


def evaluations(run_dir) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "metrics.parquet").dropna(subset=["train_loss"]).set_index("step")


def assert_finished_at(run_dir, summary, step, planned):
    """A run that ended at `step` of `planned`: every output is there and ends at that step."""
    info = io.read_json(run_dir / "run.json")
    assert info["steps"] == summary["steps"] == step and info["planned_steps"] == planned
    assert info["stop_reason"] == summary["stop_reason"] and info["status"] == summary["status"]
    assert pd.read_parquet(run_dir / "metrics.parquet")["step"].iloc[-1] == step
    final = io.load_torch(run_dir / "final.pt")
    assert final["step"] == step and final["status"] == summary["status"]
    assert (run_dir / "checkpoints/COMPLETE").exists() and not (run_dir / "checkpoints/resume.pt").exists()


def test_plan_counts_steps_from_epochs_or_steps():
    spec = make_spec(run="tiny/mlp/bs64/constant/lr0.05/seed0")
    plan = make_plan(spec, n_train=256)
    assert (plan.steps_per_epoch, plan.total_steps) == (4, 8)
    assert {0, 8} <= plan.eval_steps and plan.checkpoint_steps <= plan.eval_steps
    steps_spec = make_spec({"budget": {"steps": 37}})
    assert make_plan(steps_spec, n_train=256).total_steps == 37
    assert make_plan(make_spec(run="tiny/mlp/bs16/constant/lr0.05/seed0"), n_train=250).steps_per_epoch == 15  # last batch dropped


def test_eval_points_are_regular_plus_log_spaced():
    spec = make_spec({"budget": {"steps": 1000}, "eval": {"regular_points": 10, "log_points": 4}})
    plan = make_plan(spec, 256)
    assert set(range(0, 1001, 100)) <= plan.eval_steps
    assert {1, 10, 100} <= plan.eval_steps
    assert log_spaced_steps(1000, 4) == {1, 10, 100, 1000}
    assert log_spaced_steps(1000, 0) == set()


def test_a_convergence_budget_evaluates_at_every_epoch_end():
    sparse = {"budget": {"epochs": 20}, "eval": {"regular_points": 3, "log_points": 0}}
    epoch_ends = set(range(16, 321, 16))
    assert not epoch_ends <= make_plan(make_spec(sparse, run=RUN), 256).eval_steps
    stopping = make_spec({**sparse, "budget": {"epochs": 20, "stop": {"plateau_epochs": 2}}}, run=RUN)
    plan = make_plan(stopping, 256)
    assert epoch_ends | {0, 107, 213, 320} <= plan.eval_steps and plan.total_steps == 320
    # with a step budget that is no whole number of epochs, the cap is evaluated as well
    steps = make_plan(make_spec({"budget": {"steps": 40, "stop": {"train_loss": 1.0}}}, run=RUN), 256)
    assert {16, 32, 40} <= steps.eval_steps


def plan_before_regular_checkpoints(spec, n_train: int) -> Plan:
    """make_plan as it was before `checkpoints.regular_points`: log-spaced checkpoints only."""
    steps_per_epoch = n_train // spec.batch_size
    budget = spec.budget
    total = budget["epochs"] * steps_per_epoch if "epochs" in budget else budget["steps"]
    regular = {int(s) for s in np.round(np.linspace(0, total, spec.eval["regular_points"] + 1))}
    logs = log_spaced_steps(total, spec.eval["log_points"])
    epoch_ends = set(range(steps_per_epoch, total + 1, steps_per_epoch)) if budget.get("stop") else set()
    ckpts = {0} | (log_spaced_steps(total, spec.checkpoints["log_points"]) - {total})
    evals = regular | logs | epoch_ends | ckpts | {0, total}
    return Plan(steps_per_epoch, total, frozenset(evals), frozenset(ckpts))


@pytest.mark.parametrize("overrides", [
    {},
    {"budget": {"steps": 3750}, "eval": {"regular_points": 20, "log_points": 10}, "checkpoints": {"log_points": 8}},
    {"budget": {"epochs": 20, "stop": {"plateau_epochs": 2}}, "checkpoints": {"log_points": 0, "regular_points": 0}},
    {"budget": {"steps": 7}, "checkpoints": {"log_points": 30, "regular_points": 0}},
])
def test_no_regular_checkpoints_keeps_the_plan_exactly(overrides):
    spec = make_spec(overrides, run=RUN)
    assert spec.checkpoints["regular_points"] == 0  # the schema's default
    assert make_plan(spec, 256) == plan_before_regular_checkpoints(spec, 256)


def test_regular_checkpoints_are_evenly_spaced_evaluations_besides_the_log_spaced_ones():
    # the cosine run of the motivating example: 3750 steps, 8 log-spaced checkpoints
    base = {"budget": {"steps": 3750}, "eval": {"regular_points": 20, "log_points": 10}}
    old = make_plan(make_spec({**base, "checkpoints": {"log_points": 8}}, run=RUN), 256)
    plan = make_plan(make_spec({**base, "checkpoints": {"log_points": 8, "regular_points": 10}}, run=RUN), 256)
    evenly = set(range(0, 3750, 375))  # 0, 375, .., 3375: ten, the final step (final.pt) excluded
    assert plan.checkpoint_steps == old.checkpoint_steps | evenly
    assert old.checkpoint_steps & {3000, 3375} == set()  # what the log-spaced ones miss late in training
    assert plan.checkpoint_steps <= plan.eval_steps and plan.eval_steps == old.eval_steps | evenly
    assert 3750 not in plan.checkpoint_steps and plan.total_steps == 3750
    # alone, and where the run is no multiple of k: rounded, still none at the final step
    plan = make_plan(make_spec({"budget": {"steps": 1000}, "eval": {"regular_points": 1, "log_points": 0},
                                "checkpoints": {"log_points": 0, "regular_points": 3}}, run=RUN), 256)
    assert plan.checkpoint_steps == {0, 333, 667} and plan.eval_steps == {0, 333, 667, 1000}
    # more points than steps: every step but the last
    few_steps = {"budget": {"steps": 5}, "checkpoints": {"log_points": 0, "regular_points": 12}}
    plan = make_plan(make_spec(few_steps, run=RUN), 256)
    assert plan.checkpoint_steps == {0, 1, 2, 3, 4} and plan.checkpoint_steps <= plan.eval_steps


def test_regular_checkpoints_are_written(tmp_path, tiny_data):
    spec = make_spec({"checkpoints": {"log_points": 0, "regular_points": 4}}, run=RUN)  # 32 steps
    train_run(spec, tiny_data, tmp_path, device="cpu", progress=False)
    assert {p.name for p in (tmp_path / "checkpoints").glob("step_*.pt")} == {f"step_{k}.pt" for k in (0, 8, 16, 24)}
    assert set(evaluations(tmp_path).index) >= {0, 8, 16, 24, 32}


def test_epoch_permutation_is_a_seeded_permutation():
    p = epoch_permutation(50, seed=3, epoch=2)
    assert sorted(p.tolist()) == list(range(50))
    assert torch.equal(p, epoch_permutation(50, 3, 2))
    assert not torch.equal(p, epoch_permutation(50, 3, 1)) and not torch.equal(p, epoch_permutation(50, 4, 2))


def test_evaluate_matches_a_direct_computation(tiny_data):
    torch.manual_seed(0)
    model = build_model("mlp", (40,), 10)
    loss, acc = evaluate(model, tiny_data.x_test, tiny_data.y_test, batch_size=50)
    logits = model(tiny_data.x_test)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, tiny_data.y_test).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == tiny_data.y_test).float().mean().item())


def test_first_bad_step_finds_nan_and_bound():
    losses = np.array([np.nan, 2.0, 1.5, 300.0, np.nan])
    assert first_bad_step(losses, 1, 4, max_loss=100) == 3
    assert first_bad_step(losses, 1, 2, max_loss=100) is None
    assert first_bad_step(losses, 1, 2, max_loss=1.8) == 1


def test_loss_decreases_and_every_step_has_a_batch_loss(tmp_path, tiny_data):
    spec = make_spec({"budget": {"epochs": 5}}, run="tiny/mlp/bs16/constant/lr0.05/seed0")
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    m = pd.read_parquet(tmp_path / "metrics.parquet")
    assert summary["status"] == "completed" and summary["steps"] == 80
    assert summary["stop_reason"] == "budget"  # no `budget.stop`: it ran to its cap
    assert list(m["step"]) == list(range(81))
    assert m["batch_loss"].iloc[1:].notna().all() and np.isnan(m["batch_loss"].iloc[0])
    assert np.allclose(m["lr"].iloc[1:], 0.05)
    assert m["examples_seen"].iloc[-1] == 80 * 16 and m["epoch"].iloc[-1] == 5
    evaluated = m.dropna(subset=["train_loss"])
    assert evaluated["train_loss"].iloc[-1] < 0.7 * evaluated["train_loss"].iloc[0]
    assert summary["final_train_loss"] == evaluated["train_loss"].iloc[-1]
    assert summary["final_test_acc"] > 0.2  # chance is 0.1
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} >= {"step_0.pt", "step_1.pt"}
    assert not (tmp_path / "checkpoints" / "resume.pt").exists()


def test_run_json_records_config_seed_versions_device_and_commit(tmp_path, tiny_data):
    spec = make_spec(run="tiny/mlp/bs64/linear/lr0.05/seed0")
    train_run(spec, tiny_data, tmp_path, device="cpu")
    info = io.read_json(tmp_path / "run.json")
    assert info["spec"] == spec.to_dict() and info["seed"] == 0 and info["run_id"] == spec.run_id
    assert info["versions"]["torch"] == torch.__version__.split("+")[0] or info["versions"]["torch"].startswith(torch.__version__[:4])
    assert info["device"].startswith("cpu") and "commit" in info["git"]
    assert info["wall_time_s"] > 0 and 0 < info["cpu_time_s"] < 4 * info["wall_time_s"]  # one torch thread, and tqdm's


def test_same_seed_same_result_on_cpu(tmp_path, tiny_data):
    spec = make_spec(run="tiny/mlp/bs16/constant/lr0.05/seed0")
    train_run(spec, tiny_data, tmp_path / "a", device="cpu")
    train_run(spec, tiny_data, tmp_path / "b", device="cpu")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a/metrics.parquet"), pd.read_parquet(tmp_path / "b/metrics.parquet"))
    for k, v in load_weights(tmp_path / "a").items():
        assert torch.equal(v, load_weights(tmp_path / "b")[k])
    other = make_spec({"seeds": [1]}, run="tiny/mlp/bs16/constant/lr0.05/seed1")
    train_run(other, tiny_data, tmp_path / "c", device="cpu")
    assert not torch.equal(load_weights(tmp_path / "a")["net.0.weight"], load_weights(tmp_path / "c")["net.0.weight"])


def test_divergence_ends_the_run_cleanly_with_its_step(tmp_path, tiny_data):
    spec = make_spec({"base_lrs": [50.0], "budget": {"epochs": 5}, "eval": {"regular_points": 80, "log_points": 0}},
                     run="tiny/mlp/bs16/constant/lr50/seed0")
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    m = pd.read_parquet(tmp_path / "metrics.parquet")
    assert summary["status"] == "diverged" and summary["stop_reason"] == "diverged"
    bad = summary["diverged_step"]
    losses = m["batch_loss"].to_numpy()
    assert not np.isfinite(losses[bad]) or losses[bad] > 100
    assert np.all(np.isfinite(losses[1:bad]) & (losses[1:bad] <= 100))
    assert summary["steps"] < 80 and len(m) == summary["steps"] + 1  # stopped at the next evaluation point
    assert (tmp_path / "final.pt").exists() and io.read_json(tmp_path / "run.json")["status"] == "diverged"


def test_loss_bound_counts_as_divergence(tmp_path, tiny_data):
    spec = make_spec({"divergence": {"max_loss": 0.5}}, run="tiny/mlp/bs16/constant/lr0.05/seed0")
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    assert summary["status"] == "diverged" and summary["diverged_step"] == 1  # initial loss ~2.3 > 0.5


def test_a_train_loss_target_ends_the_run_at_the_first_evaluation_that_reaches_it(tmp_path, tiny_data):
    spec = make_spec({"budget": {"epochs": 20, "stop": {"train_loss": 1.5}}}, run=RUN)
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    losses = evaluations(tmp_path)["train_loss"]
    assert summary["stop_reason"] == "train_loss" and summary["status"] == "completed"
    stop = summary["steps"]
    assert losses.index[-1] == stop and losses.iloc[-1] <= 1.5 and summary["final_train_loss"] == losses.iloc[-1]
    assert (losses.iloc[:-1] > 1.5).all()  # not before: no earlier evaluation reached it
    assert set(range(16, stop + 1, 16)) <= set(losses.index)  # checked at every epoch end on the way
    assert 0 < stop < 320
    assert_finished_at(tmp_path, summary, stop, planned=320)


def test_a_train_acc_target_ends_the_run(tmp_path, tiny_data):
    spec = make_spec({"budget": {"epochs": 20, "stop": {"train_acc": 0.5}}}, run=RUN)
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    accs = evaluations(tmp_path)["train_acc"]
    assert summary["stop_reason"] == "train_acc" and summary["steps"] < 320
    assert accs.iloc[-1] >= 0.5 and (accs.iloc[1:-1] < 0.5).all()


def test_a_run_at_zero_lr_plateaus_after_plateau_epochs_and_is_stalled(tmp_path, tiny_data):
    spec = make_spec({"base_lrs": [1e-9], "budget": {"epochs": 20, "stop": {"plateau_epochs": 3}}},
                     run="tiny/mlp/bs16/constant/lr1e-09/seed0")
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    assert summary["stop_reason"] == "plateau" and summary["status"] == "stalled"
    assert_finished_at(tmp_path, summary, 3 * 16, planned=320)


def test_a_chance_level_run_is_stalled_but_writes_its_outputs(tmp_path, tiny_data, caplog):
    spec = make_spec({"base_lrs": [1e-9]}, run="tiny/mlp/bs16/constant/lr1e-09/seed0")
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    assert summary["status"] == "stalled" and summary["stop_reason"] == "budget"
    assert summary["final_train_loss"] >= 0.99 * np.log(10)
    assert_finished_at(tmp_path, summary, 32, planned=32)
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} >= {"step_0.pt", "step_1.pt"}
    assert any("stalled" in r.getMessage() and "chance" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def imbalanced_labels(n: int, rng: np.random.Generator) -> torch.Tensor:
    """90% class 0, the rest spread over classes 1..9: a prior entropy near 0.7, far below ln 10."""
    return torch.from_numpy(np.where(rng.random(n) < 0.9, 0, rng.integers(1, 10, n)))


def test_a_run_that_learns_only_the_label_prior_is_stalled_far_below_ln_c(tmp_path, caplog):
    # inputs that say nothing (all zero): the best the model can do is to predict the labels' prior
    rng = np.random.default_rng(0)
    data = Dataset("prior_only", torch.zeros(256, 40), imbalanced_labels(256, rng), torch.zeros(128, 40),
                   imbalanced_labels(128, rng), num_classes=10)
    h = prior_entropy(data.y_train, 10)
    summary = train_run(make_spec(run=RUN), data, tmp_path, device="cpu", progress=False)
    initial = evaluations(tmp_path)["train_loss"].iloc[0]
    # it improved a lot on its initial loss and ends far below ln 10 (so ln C would call it healthy),
    # but no lower than the prior's entropy
    assert summary["final_train_loss"] < min(0.5 * np.log(10), 0.5 * initial)
    assert summary["final_train_loss"] >= 0.99 * h
    assert summary["status"] == "stalled" and summary["stop_reason"] == "budget"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "stalled" in r.getMessage()]
    assert len(warnings) == 1 and f"{h:.4g}" in warnings[0] and "prior" in warnings[0]


def test_the_chance_level_is_the_prior_of_the_training_fraction(tmp_path):
    # the half a run at train_fraction 0.5 keeps has an imbalanced prior, the other half is uniform:
    # judged against the whole set's prior (entropy about 1.7) the run would look healthy
    rng = np.random.default_rng(0)
    kept = torch.randperm(256, generator=torch.Generator().manual_seed(TRAIN_SUBSET_SEED))[:128]
    y = torch.from_numpy(rng.integers(0, 10, 256))
    y[kept] = imbalanced_labels(128, rng)
    data = Dataset("prior_only", torch.zeros(256, 40), y, torch.zeros(128, 40), imbalanced_labels(128, rng), 10)
    half = data.train_fraction(0.5)
    assert torch.equal(half.y_train, y[kept])
    h_half, h_all = prior_entropy(half.y_train, 10), prior_entropy(y, 10)
    assert h_half < 0.5 * h_all
    spec = make_spec({"train_fractions": [0.5], "batch_sizes": [16], "lr_rules": ["constant"]})
    summary = train_run(spec, data, tmp_path, device="cpu", progress=False)
    assert 0.99 * h_half <= summary["final_train_loss"] < 0.99 * h_all
    assert summary["status"] == "stalled"


def test_a_diverging_run_with_a_convergence_budget_stays_diverged(tmp_path, tiny_data):
    spec = make_spec({"base_lrs": [1e4], "budget": {"epochs": 20, "stop": {"train_loss": 1.5, "plateau_epochs": 1}}},
                     run="tiny/mlp/bs16/constant/lr10000/seed0")
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    assert summary["status"] == "diverged" and summary["stop_reason"] == "diverged"
    assert summary["diverged_step"] is not None and summary["steps"] < 320


def test_a_resumed_run_stops_at_the_same_step_as_an_uninterrupted_one(tmp_path, tiny_data):
    spec = make_spec({"budget": {"epochs": 20, "stop": {"train_loss": 1.5}}}, run=RUN)
    whole = train_run(spec, tiny_data, tmp_path / "whole", device="cpu")
    assert 40 < whole["steps"] < 320  # so the interruption below comes before the stop
    partial = train_run(spec, tiny_data, tmp_path / "split", device="cpu", max_steps=40)  # mid-epoch, between evals
    assert partial["status"] == "interrupted" and partial["step"] == 40
    resumed = train_run(spec, tiny_data, tmp_path / "split", device="cpu")
    assert resumed["resumed_from_step"] == 40
    assert (resumed["steps"], resumed["stop_reason"], resumed["status"]) == (whole["steps"], "train_loss", "completed")
    assert_same_results(tmp_path / "whole", tmp_path / "split")


def test_resume_gives_the_same_final_weights_as_an_uninterrupted_run(tmp_path, tiny_data):
    spec = make_spec({"budget": {"epochs": 3}, "schedule": {"decay": "cosine", "warmup_steps": 5}},
                     run="tiny/mlp/bs16/constant/lr0.05/seed0")
    whole = train_run(spec, tiny_data, tmp_path / "whole", device="cpu")
    partial = train_run(spec, tiny_data, tmp_path / "split", device="cpu", max_steps=21)  # mid-epoch, between evals
    assert partial == {"run_id": spec.run_id, "status": "interrupted", "step": 21}
    assert (tmp_path / "split/checkpoints/resume.pt").exists() and not (tmp_path / "split/run.json").exists()
    resumed = train_run(spec, tiny_data, tmp_path / "split", device="cpu")
    assert resumed["resumed_from_step"] == 21 and resumed["steps"] == whole["steps"] == 48
    assert_same_results(tmp_path / "whole", tmp_path / "split")
    assert not (tmp_path / "split/checkpoints/resume.pt").exists()



def test_a_job_killed_as_its_run_finishes_leaves_it_finished(tmp_path, tiny_data, monkeypatch):
    """The kill comes as the resume checkpoint is removed, after run.json: the rerun keeps the run."""
    spec = make_spec({"budget": {"epochs": 3}}, run="tiny/mlp/bs16/constant/lr0.05/seed0")
    train_run(spec, tiny_data, tmp_path, device="cpu", max_steps=21)
    unlink = type(tmp_path).unlink

    def killed_at_resume_pt(path, *args, **kwargs):
        if path.name == "resume.pt":
            raise KeyboardInterrupt("killed")
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "unlink", killed_at_resume_pt)
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, tiny_data, tmp_path, device="cpu")
    monkeypatch.undo()
    first = io.read_json(tmp_path / "run.json")
    again = train_run(spec, tiny_data, tmp_path, device="cpu")
    assert again == first and again["resumed_from_step"] == 21  # kept as it finished, not trained again

SUBSETS = {"regular_points": 5, "log_points": 3, "train_subset": 100, "test_subset": 40}


def test_eval_subsets_measure_the_points_between_the_full_evaluations(tmp_path, tiny_data):
    spec = make_spec({"eval": SUBSETS, "budget": {"epochs": 3}}, run=RUN)
    plan = make_plan(spec, tiny_data.n_train)
    train_run(spec, tiny_data, tmp_path / "subsets", device="cpu")
    train_run(make_spec({"budget": {"epochs": 3}}, run=RUN), tiny_data, tmp_path / "full", device="cpu")
    sub, full = evaluations(tmp_path / "subsets"), evaluations(tmp_path / "full")
    assert set(sub.index) == set(full.index) == plan.eval_steps
    assert set(sub.index[sub["eval_set"] == "full"]) == plan.full_eval_steps == plan.checkpoint_steps | {0, 48}
    assert len(plan.eval_steps - plan.full_eval_steps) >= 3 and (full["eval_set"] == "full").all()
    pd.testing.assert_series_equal(sub["batch_loss"], full["batch_loss"])  # training is the same
    at_full = sorted(plan.full_eval_steps)
    pd.testing.assert_frame_equal(sub.loc[at_full].drop(columns="eval_set"), full.loc[at_full].drop(columns="eval_set"))
    between = sorted(plan.eval_steps - plan.full_eval_steps)
    assert (sub.loc[between, "train_loss"] != full.loc[between, "train_loss"]).all()

    # a point between: the model of that step, evaluated on the fixed subsets
    step = between[1]
    train_run(spec, tiny_data, tmp_path / "cut", device="cpu", max_steps=step)
    model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes)
    model.load_state_dict(io.load_torch(tmp_path / "cut/checkpoints/resume.pt")["model"])
    train_index, test_index = eval_subset(256, 100, "train"), eval_subset(128, 40, "test")
    assert len(train_index) == 100 and len(set(train_index.tolist())) == 100
    assert torch.equal(train_index, eval_subset(256, 100, "train"))  # the same subset for every run
    expected = (*evaluate(model, tiny_data.x_train[train_index], tiny_data.y_train[train_index]),
                *evaluate(model, tiny_data.x_test[test_index], tiny_data.y_test[test_index]))
    assert tuple(sub.loc[step, ["train_loss", "train_acc", "test_loss", "test_acc"]]) == pytest.approx(expected, rel=1e-6)
    assert eval_subset(256, 256, "train") is None and eval_subset(256, None, "train") is None
    train_run(spec, tiny_data, tmp_path / "cut", device="cpu")  # resumed, it keeps which rows were subsets
    assert_same_results(tmp_path / "subsets", tmp_path / "cut")


def test_a_run_that_stops_on_a_subset_evaluation_ends_on_the_whole_sets(tmp_path, tiny_data):
    spec = make_spec({"eval": SUBSETS, "budget": {"epochs": 20, "stop": {"train_loss": 1.5}},
                      "checkpoints": {"log_points": 0}}, run=RUN)
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    curve = evaluations(tmp_path)
    stop = summary["steps"]
    assert summary["stop_reason"] == "train_loss" and 0 < stop < 320
    assert curve["eval_set"].iloc[-1] == "full" and (curve["eval_set"].iloc[1:-1] == "subset").all()
    model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes)
    model.load_state_dict(load_weights(tmp_path))
    loss, _ = evaluate(model, tiny_data.x_train, tiny_data.y_train)
    assert summary["final_train_loss"] == pytest.approx(loss, rel=1e-6) == curve.loc[stop, "train_loss"]


def test_checkpoints_of_another_config_are_not_resumed(tmp_path, tiny_data):
    spec = make_spec(run="tiny/mlp/bs16/constant/lr0.05/seed0")
    train_run(spec, tiny_data, tmp_path, device="cpu", max_steps=10)
    changed = make_spec({"optimizer": {"name": "sgd", "momentum": 0.5}}, run="tiny/mlp/bs16/constant/lr0.05/seed0")
    summary = train_run(changed, tiny_data, tmp_path, device="cpu")
    assert summary["resumed_from_step"] is None and summary["status"] == "completed"


def test_a_damaged_checkpoint_is_skipped(tmp_path, tiny_data):
    spec = make_spec(run="tiny/mlp/bs16/constant/lr0.05/seed0")
    train_run(spec, tiny_data, tmp_path, device="cpu", max_steps=10)
    (tmp_path / "checkpoints" / "resume.pt").write_bytes(b"not a checkpoint")
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    newest_readable = max(s for s in make_plan(spec, tiny_data.n_train).checkpoint_steps if s <= 10)
    assert newest_readable > 0 and (tmp_path / "checkpoints" / f"step_{newest_readable}.pt").exists()
    assert summary["status"] == "completed" and summary["resumed_from_step"] == newest_readable


def test_adam_and_step_budget_run(tmp_path, tiny_data):
    spec = make_spec({"optimizer": {"name": "adam"}, "base_lrs": [0.01], "budget": {"steps": 30}},
                     run="tiny/mlp/bs16/constant/lr0.01/seed0")
    summary = train_run(spec, tiny_data, tmp_path, device="cpu")
    assert summary["steps"] == 30 and summary["status"] == "completed"
    assert summary["final_train_loss"] < 2.0


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_a_finished_run_is_kept_unless_its_code_or_config_changed(tmp_path, tiny_data):
    spec = make_spec(run="tiny/mlp/bs16/constant/lr0.05/seed0")
    first = train_run(spec, tiny_data, tmp_path, device="cpu")
    stamp = (tmp_path / "final.pt").stat().st_mtime_ns
    again = train_run(spec, tiny_data, tmp_path, device="cpu")
    assert again == first and (tmp_path / "final.pt").stat().st_mtime_ns == stamp  # kept, not retrained
    # trained by other library code: retrained from scratch
    summary = io.read_json(tmp_path / "run.json")
    io.write_json({**summary, "code_hash": "another"}, tmp_path / "run.json")
    retrained = train_run(spec, tiny_data, tmp_path, device="cpu")
    assert retrained["resumed_from_step"] is None and retrained["steps"] == first["steps"]
    assert retrained["code_hash"] == first["code_hash"] and (tmp_path / "final.pt").stat().st_mtime_ns != stamp
    assert (tmp_path / "checkpoints" / "COMPLETE").exists() and (tmp_path / "checkpoints" / "step_0.pt").exists()


def test_a_run_resumed_between_evaluations_finds_a_divergence_before_its_resume_point(tmp_path, tiny_data):
    spec = make_spec({"divergence": {"max_loss": 0.5}, "eval": {"regular_points": 3, "log_points": 0},
                      "checkpoints": {"log_points": 0}}, run=RUN)  # evaluations at steps 0, 11, 21 and 32
    whole = train_run(spec, tiny_data, tmp_path / "whole", device="cpu")
    assert (whole["status"], whole["diverged_step"], whole["steps"]) == ("diverged", 1, 11)
    train_run(spec, tiny_data, tmp_path / "split", device="cpu", max_steps=5)  # after the bad step, before it is judged
    resumed = train_run(spec, tiny_data, tmp_path / "split", device="cpu")
    assert resumed["resumed_from_step"] == 5
    assert (resumed["status"], resumed["diverged_step"], resumed["steps"]) == ("diverged", 1, 11)
    assert_same_results(tmp_path / "whole", tmp_path / "split")


# --- resume checkpoints: how often, and on SIGTERM ------------------------------------------------

class FakeClock:
    """Seconds that pass only when a test says so: a step takes `step_s`, a checkpoint write `save_s`."""

    def __init__(self, step_s: float, save_s: float):
        self.now, self.step_s, self.save_s = 1000.0, step_s, save_s
        self.saves: list[tuple[str, int, float]] = []  # (file name, step, when it started)

    def __call__(self) -> float:
        return self.now

    def install(self, monkeypatch):
        step, save = Stack.step, save_member_checkpoint

        def timed_step(*args):
            self.now += self.step_s
            return step(*args)

        def timed_save(path, *args):
            self.saves.append((path.name, args[4], self.now))
            self.now += self.save_s
            save(path, *args)

        monkeypatch.setattr(resume, "clock", self)  # the resume interval
        monkeypatch.setattr(loop, "clock", self)  # the wall times
        monkeypatch.setattr(Stack, "step", timed_step)
        monkeypatch.setattr(loop, "save_member_checkpoint", timed_save)


@pytest.mark.parametrize("save_s, most_s, interval_s", [
    (0.0, 120.0, RESUME_FLOOR_S),  # a cheap save: every RESUME_FLOOR_S
    (0.4, 120.0, 0.4 * RESUME_COST_FACTOR),  # a dear one: 20 times its cost apart
    (0.4, 5.0, 5.0),  # but never further apart than resume_every_s
])
def test_resume_checkpoints_come_as_often_as_their_cost_allows(tmp_path, tiny_data, monkeypatch, save_s, most_s,
                                                              interval_s):
    clock = FakeClock(step_s=0.25, save_s=save_s)  # 80 steps: a run of 20 s, no longer than a resume interval
    clock.install(monkeypatch)
    spec = make_spec({"budget": {"epochs": 5}, "checkpoints": {"log_points": 3, "resume_every_s": most_s}}, run=RUN)
    train_run(spec, tiny_data, tmp_path, device="cpu")
    names = [name for name, _, _ in clock.saves]
    starts = np.array([when for _, _, when in clock.saves])
    gaps = np.append(starts[1:], clock.now) - (starts + save_s)  # from the end of each save to the next, or to the end
    assert names.count("resume.pt") >= 2  # with a fixed interval of resume_every_s, none at all
    assert gaps.max() <= interval_s + clock.step_s + 1e-9  # due at the first step boundary past the interval
    assert all(gap > interval_s - 1e-9 for name, gap in zip(names[1:], gaps[:-1]) if name == "resume.pt")


@contextlib.contextmanager
def sigterm_during_update(monkeypatch, update: int):
    """SIGTERM arrives during update `update`, as a cluster's would. Training must stop with Interrupted
    and put back the handler it found, which itself never sees the signal."""
    calls, step = itertools.count(1), Stack.step

    def step_then_sigterm(*args):
        if next(calls) == update:
            signal.raise_signal(signal.SIGTERM)
        return step(*args)

    outside = []

    def handler(signum, frame):
        outside.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    monkeypatch.setattr(Stack, "step", step_then_sigterm)
    try:
        with pytest.raises(Interrupted, match=f"SIGTERM at step {update} "):
            yield
        assert signal.getsignal(signal.SIGTERM) is handler and not outside
    finally:
        signal.signal(signal.SIGTERM, previous)
        monkeypatch.setattr(Stack, "step", step)


def test_sigterm_saves_a_resume_checkpoint_and_stops_and_the_rerun_is_bit_identical(tmp_path, tiny_data, monkeypatch):
    spec = make_spec({"budget": {"epochs": 3}, "schedule": {"decay": "cosine", "warmup_steps": 5}}, run=RUN)
    train_run(spec, tiny_data, tmp_path / "whole", device="cpu")
    with sigterm_during_update(monkeypatch, 21):  # mid-epoch, between evaluations
        train_run(spec, tiny_data, tmp_path / "split", device="cpu")
    assert io.load_torch(tmp_path / "split/checkpoints/resume.pt")["step"] == 21
    assert not (tmp_path / "split/run.json").exists() and not (tmp_path / "split/final.pt").exists()
    resumed = train_run(spec, tiny_data, tmp_path / "split", device="cpu")
    assert resumed["resumed_from_step"] == 21 and resumed["status"] == "completed"
    assert_same_results(tmp_path / "whole", tmp_path / "split")


def test_training_off_the_main_thread_sets_no_signal_handler(tmp_path, tiny_data):
    before = signal.getsignal(signal.SIGTERM)
    results = []
    worker = threading.Thread(target=lambda: results.append(train_run(make_spec(run=RUN), tiny_data, tmp_path,
                                                                      device="cpu", progress=False)))
    worker.start()
    worker.join()
    assert results[0]["status"] == "completed" and signal.getsignal(signal.SIGTERM) is before
