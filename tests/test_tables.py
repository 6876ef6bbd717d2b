import pandas as pd
import pytest

from batchlab import io
from batchlab.tables import CURVE_COLUMNS, RUN_COLUMNS, curves_table, runs_table
from batchlab.train.loop import train_run
from tests.conftest import make_spec

CONTRACT_RUN_COLUMNS = [
    "run_id", "study", "dataset", "model", "batch_size", "bn_batch_size", "lr_rule", "base_lr", "lr", "optimizer", "momentum",
    "seed", "epochs", "steps", "status", "diverged_step", "final_train_loss", "final_train_acc", "final_test_loss",
    "final_test_acc", "wall_time_s", "device",
]
CONTRACT_CURVE_COLUMNS = [
    "run_id", "step", "epoch", "examples_seen", "lr", "batch_loss", "train_loss", "train_acc", "test_loss", "test_acc",
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_data_path):
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for run_id, lr in (("tiny/mlp/bs64/linear/lr0.05/seed0", 0.05), ("tiny/mlp/bs16/constant/lr50/seed0", 50.0)):
        spec = make_spec({"base_lrs": [lr]}, run=run_id)
        train_run(spec, tiny_data_path, root / run_id, device="cpu")
        dirs.append(root / run_id)
    return dirs


def test_runs_table_keeps_the_contract(two_runs):
    df = runs_table([d / "run.json" for d in two_runs])
    assert set(CONTRACT_RUN_COLUMNS) <= set(df.columns) and list(df.columns) == list(RUN_COLUMNS)
    assert len(df) == 2
    by_id = df.set_index("run_id")
    linear = by_id.loc["tiny/mlp/bs64/linear/lr0.05/seed0"]
    assert (linear["batch_size"], linear["lr_rule"], linear["lr"], linear["status"]) == (64, "linear", 0.05, "completed")
    assert pd.isna(linear["diverged_step"]) and pd.isna(linear["bn_batch_size"])
    assert (linear["task"], linear["train_fraction"]) == ("classification", 1.0)
    assert linear[["final_test_perplexity", "final_test_miou"]].isna().all()
    diverged = by_id.loc["tiny/mlp/bs16/constant/lr50/seed0"]
    assert diverged["status"] == "diverged" and diverged["diverged_step"] >= 1


def test_curves_table_stacks_every_step_of_every_run(two_runs):
    df = curves_table([d / "run.json" for d in two_runs], [d / "metrics.parquet" for d in two_runs])
    assert list(df.columns) == list(CURVE_COLUMNS) == CONTRACT_CURVE_COLUMNS + ["train_miou", "test_miou", "eval_set"]
    assert df[["train_miou", "test_miou"]].isna().all().all()  # classification runs have no mean IoU
    evaluated = df["test_loss"].notna()
    assert (df.loc[evaluated, "eval_set"] == "full").all() and df.loc[~evaluated, "eval_set"].isna().all()  # no subsets set
    for d in two_runs:
        m = pd.read_parquet(d / "metrics.parquet")
        part = df[df["run_id"] == str(d).split("runs0/")[-1]]
        assert len(part) == len(m) and part["step"].tolist() == list(range(len(m)))


def test_curves_table_refuses_mismatched_inputs(two_runs):
    with pytest.raises(ValueError, match="2 run summaries but 1 metrics files"):
        curves_table([d / "run.json" for d in two_runs], [two_runs[0] / "metrics.parquet"])


def test_concat_tables_stacks_parts_and_keeps_columns_when_empty(tmp_path):
    from batchlab.tables import INTERPOLATION_COLUMNS, concat_tables

    part = pd.DataFrame({c: [1.0, 2.0] for c in INTERPOLATION_COLUMNS}).assign(pair_id="p", split=["train", "test"])
    part = part[list(INTERPOLATION_COLUMNS)]
    io.write_parquet(part, tmp_path / "a.parquet")
    io.write_parquet(part, tmp_path / "b.parquet")
    stacked = concat_tables([tmp_path / "a.parquet", tmp_path / "b.parquet"], "interpolation")
    assert len(stacked) == 4 and list(stacked.columns) == list(INTERPOLATION_COLUMNS)
    empty = concat_tables([], "sharpness")
    assert empty.empty and "metric" in empty.columns
    io.write_parquet(part.drop(columns="bn_mode"), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet has columns"):
        concat_tables([tmp_path / "bad.parquet"], "interpolation")
    with pytest.raises(ValueError, match="unknown table 'speed'"):
        concat_tables([], "speed")


def test_runs_table_has_the_median_test_accuracy_over_the_last_epochs(tmp_path, tiny_data_path, two_runs):
    last_two = {"eval": {"regular_points": 5, "log_points": 3, "last_epochs": 2}}
    measured, diverged = "tiny/mlp/bs64/constant/lr0.05/seed0", "tiny/mlp/bs16/constant/lr50/seed0"
    for run_id, lr in ((measured, 0.05), (diverged, 50.0)):
        train_run(make_spec({**last_two, "base_lrs": [lr]}, run=run_id), tiny_data_path, tmp_path / run_id, device="cpu")
    summaries = [tmp_path / measured / "run.json", tmp_path / diverged / "run.json", two_runs[0] / "run.json"]
    io.write_parquet(runs_table(summaries), tmp_path / "runs.parquet")
    df = io.read_parquet(tmp_path / "runs.parquet").set_index("run_id")
    assert df["median_last_epochs_n"].dtype == "Int64" and df["median_last_epochs_test_acc"].dtype == float
    curve = pd.read_parquet(tmp_path / measured / "metrics.parquet").set_index("step")
    row = df.loc[measured]  # 4 steps an epoch, 2 epochs: the ends of both
    assert row["median_last_epochs_test_acc"] == pytest.approx(curve.loc[[4, 8], "test_acc"].mean(), rel=1e-12)
    assert row["median_last_epochs_n"] == 2 and pd.isna(row["median_last_epochs_reason"])
    row = df.loc[diverged]
    assert pd.isna(row["median_last_epochs_test_acc"]) and row["median_last_epochs_reason"] == "diverged"
    row = df.loc["tiny/mlp/bs64/linear/lr0.05/seed0"]  # trained without eval.last_epochs
    assert pd.isna(row["median_last_epochs_test_acc"]) and row["median_last_epochs_n"] == 0
    assert row["median_last_epochs_reason"].startswith("not asked")
