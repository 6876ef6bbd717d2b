"""Figures drawn from the tables (seaborn), each saved as PNG and PDF.

- `plot_training_curves`: train loss against epochs, one line per batch size, for each
  model and LR rule, at the base LR that gave that batch size its best median final test
  accuracy; the band spans the seeds.
- `plot_accuracy_vs_batch`: final test accuracy against batch size, one line per LR rule,
  at each batch size's best base LR (Masters & Luschi 2018, Fig. "best test accuracy
  against m"); error bars span the seeds.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from batchlab.io import atomic_path  # noqa: E402

CELL = ["study", "model", "lr_rule", "batch_size"]


def save_figure(fig: plt.Figure, png: str | os.PathLike, pdf: str | os.PathLike | None = None) -> None:
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        if path is not None:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    plt.close(fig)


def best_base_lr_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs at each cell's best base LR, judged by the median final test accuracy over seeds.

    A diverged run counts as accuracy 0, so an LR that diverges for most seeds loses.
    """
    acc = runs.assign(score=runs["final_test_acc"].where(runs["status"] == "completed", 0.0).fillna(0.0))
    medians = acc.groupby(CELL + ["base_lr"], as_index=False)["score"].median()
    best = medians.loc[medians.groupby(CELL)["score"].idxmax(), CELL + ["base_lr"]]
    return runs.merge(best, on=CELL + ["base_lr"])


def _panel_key(runs: pd.DataFrame) -> pd.Series:
    many_studies = runs["study"].nunique() > 1
    return runs["study"] + " / " + runs["model"] if many_studies else runs["model"]


def plot_training_curves(runs: pd.DataFrame, curves: pd.DataFrame, png, pdf=None) -> None:
    chosen = best_base_lr_runs(runs)
    chosen = chosen.assign(panel=_panel_key(chosen))
    evaluated = curves.dropna(subset=["train_loss"])
    data = evaluated.merge(chosen[["run_id", "panel", "lr_rule", "batch_size", "base_lr"]], on="run_id")
    grid = sns.relplot(
        data=data, x="epoch", y="train_loss", hue="batch_size", hue_norm=LogNorm(), palette="viridis",
        row="panel", col="lr_rule", kind="line", errorbar=("pi", 100), legend="full",
        height=2.8, aspect=1.3, facet_kws={"sharey": False},
    )
    grid.set(yscale="log")
    grid.set_titles("{row_name} · {col_name} rule")
    grid.set_axis_labels("epoch", "train loss (full set)")
    grid.figure.suptitle("Training curves, each batch size at its best base LR (band: range over seeds)", y=1.02)
    save_figure(grid.figure, png, pdf)


def plot_accuracy_vs_batch(runs: pd.DataFrame, png, pdf=None) -> None:
    chosen = best_base_lr_runs(runs)
    chosen = chosen.assign(panel=_panel_key(chosen))
    grid = sns.relplot(
        data=chosen, x="batch_size", y="final_test_acc", hue="lr_rule", style="lr_rule", col="panel",
        kind="line", markers=True, dashes=False, err_style="bars", errorbar=("pi", 100), height=3.2, aspect=1.2,
        facet_kws={"sharey": False},
    )
    grid.set(xscale="log")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xticks(sorted(chosen["batch_size"].unique()))
        ax.minorticks_off()
    grid.set_titles("{col_name}")
    grid.set_axis_labels("batch size", "final test accuracy")
    grid.figure.suptitle("Test accuracy against batch size, each at its best base LR (bars: range over seeds)", y=1.04)
    save_figure(grid.figure, png, pdf)
