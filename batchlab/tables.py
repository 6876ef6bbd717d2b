"""Tidy tables gathered from run directories (contracts in DESIGN.md).

- runs.parquet: one row per run, with its grid coordinates, status and final metrics, and Masters &
  Luschi's median test accuracy over the last epochs (null, with the reason, where a run has none);
- curves.parquet: one row per (run, step), the dense batch-loss curve with the train/test
  evaluations where they were made, and on which sets (eval_set: "full" or "subset");
- sharpness.parquet: one row per (run, checkpoint, metric, epsilon);
- interpolation.parquet: one row per (pair, alpha, split).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from batchlab.io import read_json, read_parquet

# Losses and accuracies are per target: per example, per token (language models) or per labelled
# pixel (segmentation). Perplexity is filled for language models and mean IoU for segmentation
# only; elsewhere they are NaN.
RUN_COLUMNS = (
    "run_id", "study", "dataset", "task", "train_fraction", "model", "batch_size", "bn_batch_size", "lr_rule", "base_lr",
    "ref_batch_size", "lr", "optimizer", "momentum", "nesterov", "weight_decay", "seed", "epochs", "steps", "planned_steps",
    "status", "diverged_step", "stop_reason", "final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc",
    "best_test_acc", "median_last_epochs_test_acc", "median_last_epochs_n", "median_last_epochs_reason",
    "final_train_perplexity", "final_test_perplexity", "final_train_miou", "final_test_miou", "wall_time_s", "device",
)
SHARPNESS_COLUMNS = (
    "run_id", "step", "train_loss", "metric", "epsilon", "value", "stderr", "subset_loss", "n_evals", "bn_mode", "n_examples",
    "ci_low", "ci_high", "method", "error_target_met",
)
# sharpness.parquet's `method` of the two epsilon-sharpness searches: Keskar's own (about 10 L-BFGS-B iterations,
# a lower bound that falls further short at the sharper end) and the multi-start search run to convergence
KESKAR_SEARCH = "lbfgsb"
CONVERGED_SEARCH = "lbfgsb_multistart"
MEDIAN_LAST_EPOCHS = "median_last_epochs_test_acc"  # Masters & Luschi's measure of a run (eval.last_epochs)
INTERPOLATION_COLUMNS = ("pair_id", "run_id_small", "run_id_large", "alpha", "split", "loss", "accuracy", "bn_mode")
TABLE_COLUMNS = {"sharpness": SHARPNESS_COLUMNS, "interpolation": INTERPOLATION_COLUMNS}
CURVE_COLUMNS = (
    "run_id", "step", "epoch", "examples_seen", "lr", "batch_loss", "train_loss", "train_acc", "test_loss", "test_acc",
    "train_miou", "test_miou", "eval_set",
)


def run_row(summary: dict) -> dict:
    spec = summary["spec"]
    opt = spec["optimizer"]
    return {
        "run_id": summary["run_id"],
        **{k: spec[k] for k in ("study", "dataset", "model", "batch_size", "bn_batch_size", "lr_rule", "base_lr", "ref_batch_size", "seed")},
        "task": summary.get("task", "classification"),
        "train_fraction": spec.get("train_fraction", 1.0),
        "lr": summary["lr"],
        "optimizer": opt["name"],
        "momentum": opt["momentum"],
        "nesterov": opt["nesterov"],
        "weight_decay": opt["weight_decay"],
        **{k: summary[k] for k in RUN_COLUMNS if k in summary and k != "run_id"},
    }


def runs_table(summary_paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per run, from each run's run.json."""
    rows = [run_row(read_json(p)) for p in summary_paths]
    df = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    df["bn_batch_size"] = df["bn_batch_size"].astype("Int64")
    df["diverged_step"] = df["diverged_step"].astype("Int64")
    df["median_last_epochs_n"] = df["median_last_epochs_n"].astype("Int64")  # absent from a run.json written before it
    df["median_last_epochs_test_acc"] = df["median_last_epochs_test_acc"].astype(float)
    return df.sort_values(["study", "model", "lr_rule", "base_lr", "batch_size", "seed"], ignore_index=True)


def curves_table(summary_paths: Sequence[str | os.PathLike], metrics_paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per (run, step): each run's metrics.parquet, tagged with its run_id."""
    if len(summary_paths) != len(metrics_paths):
        raise ValueError(f"{len(summary_paths)} run summaries but {len(metrics_paths)} metrics files")
    parts = []
    for summary_path, metrics_path in zip(summary_paths, metrics_paths):
        df = read_parquet(metrics_path)
        df.insert(0, "run_id", read_json(summary_path)["run_id"])
        parts.append(df)
    # a segmentation run adds mean IoU columns; every other run gets them as NaN
    return pd.concat(parts, ignore_index=True).reindex(columns=list(CURVE_COLUMNS))


def concat_tables(paths: Sequence[str | os.PathLike], table: str) -> pd.DataFrame:
    """Stack per-job Parquet parts of `table` ("sharpness" or "interpolation"); empty when there are none."""
    if table not in TABLE_COLUMNS:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(TABLE_COLUMNS)}")
    columns = list(TABLE_COLUMNS[table])
    parts = [read_parquet(p) for p in paths]
    for path, part in zip(paths, parts):
        if list(part.columns) != columns:
            raise ValueError(f"{path} has columns {list(part.columns)}, expected {columns}")
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)
