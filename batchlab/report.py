"""The summary that opens the HTML report: per study and model, the best batch size, the
critical batch size with its interval beside the noise-scale prediction, and how much
sharper the largest batch's solution is than the smallest's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batchlab.plots import best_base_lr_runs, final_sharpness
from batchlab.speedup import BEST_RULE, TARGET_METRICS

SUMMARY_COLUMNS = (
    "study", "model", "best_batch_size", "best_lr_rule", "best_test_acc", "target", "b_crit", "b_crit_ci_low",
    "b_crit_ci_high", "b_noise_predicted", "sharpness_ratio", "sharpness_small", "sharpness_large",
)


def headline_target(targets: dict) -> tuple[str, float] | None:
    """The first configured target, in the order train_loss, test_loss, test_error."""
    for metric in TARGET_METRICS:
        if targets.get(metric):
            return metric, float(targets[metric][0])
    return None


def summary_table(runs: pd.DataFrame, sharpness: pd.DataFrame, critical: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """One row per (study, model); `settings` maps study -> its `speedup` config."""
    chosen = best_base_lr_runs(runs)
    cells = chosen.groupby(["study", "model", "lr_rule", "batch_size"], as_index=False)["final_test_acc"].median()
    sharp = final_sharpness(runs, sharpness) if len(sharpness) else pd.DataFrame()
    rows = []
    for (study, model), group in cells.groupby(["study", "model"]):
        best = group.loc[group["final_test_acc"].idxmax()]
        row = dict(study=study, model=model, best_batch_size=int(best["batch_size"]), best_lr_rule=best["lr_rule"],
                   best_test_acc=float(best["final_test_acc"]))
        target = headline_target(settings.get(study, {}).get("targets", {}))
        if target is not None:
            fit = critical[(critical["study"] == study) & (critical["model"] == model) & (critical["lr_rule"] == BEST_RULE)
                           & (critical["target_metric"] == target[0]) & (critical["target_value"] == target[1])]
            row["target"] = f"{target[0].replace('_', ' ')} ≤ {target[1]:g}"
            if len(fit):
                f = fit.iloc[0]
                row.update(b_crit=f["b_crit"], b_crit_ci_low=f["ci_low"], b_crit_ci_high=f["ci_high"],
                           b_noise_predicted=f["b_noise_predicted"])
        if len(sharp):
            mine = sharp[(sharp["study"] == study) & (sharp["model"] == model)]
            if mine["batch_size"].nunique() > 1:
                small = mine[mine["batch_size"] == mine["batch_size"].min()]["eps_sharpness"].median()
                large = mine[mine["batch_size"] == mine["batch_size"].max()]["eps_sharpness"].median()
                row.update(sharpness_small=small, sharpness_large=large, sharpness_ratio=large / small if small > 0 else np.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _fmt(x, spec: str = "{:.3g}") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else spec.format(x)


def summary_rst(table: pd.DataFrame) -> str:
    """The summary as reStructuredText list-tables, one per study, for the report's front page."""
    out = []
    for study, group in table.groupby("study"):
        out += [f"**Study {study}**", "", ".. list-table::", "   :header-rows: 1", ""]
        header = ["model", "best batch size (rule, test accuracy)", "target", "B_crit [95% interval]",
                  "noise-scale prediction", "sharpness LB / SB (final ε-sharpness)"]
        out += ["   * - " + header[0]] + [f"     - {h}" for h in header[1:]]
        for r in group.itertuples():
            cells = [
                r.model,
                f"{r.best_batch_size} ({r.best_lr_rule}, {r.best_test_acc:.3f})",
                r.target if isinstance(r.target, str) else "none configured",
                f"{_fmt(r.b_crit, '{:.0f}')} [{_fmt(r.b_crit_ci_low, '{:.0f}')}, {_fmt(r.b_crit_ci_high, '{:.0f}')}]",
                _fmt(r.b_noise_predicted, "{:.0f}"),
                f"{_fmt(r.sharpness_ratio, '{:.1f}')}× ({_fmt(r.sharpness_large)} / {_fmt(r.sharpness_small)})",
            ]
            out += ["   * - " + cells[0]] + [f"     - {c}" for c in cells[1:]]
        out.append("")
    return "\n".join(out) + "\n"
