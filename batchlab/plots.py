"""Figures drawn from the tables (seaborn), each saved as PNG and PDF.

- `plot_training_curves`: train loss against epochs, one line per batch size, for each
  model and LR rule, at the base LR that gave that batch size its best median final test
  accuracy; the band spans the seeds.
- `plot_accuracy_vs_batch`: final test accuracy against batch size, one line per LR rule,
  at each batch size's best base LR (Masters & Luschi 2018, Fig. "best test accuracy
  against m"); error bars span the seeds.
- `plot_sharpness_vs_batch`, `plot_sharpness_along_training`, `plot_interpolation`:
  Keskar et al. 2017's figures (sharpness and test accuracy against batch size, sharpness
  against train cross-entropy for SB and LB, and the 1-D parametric plot).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
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


# --- sharpness, along training and across batch sizes (Keskar et al. 2017) ----------------

def _no_data(message: str, png, pdf=None) -> None:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    save_figure(fig, png, pdf)


def headline_sharpness(sharpness: pd.DataFrame) -> pd.DataFrame:
    """Rows of the headline measure: full-space epsilon-sharpness at the largest epsilon
    (Keskar's 1e-3 by default), or the subspace measure where the full one was not run."""
    for metric in ("eps_sharpness_full", "eps_sharpness_subspace"):
        rows = sharpness[sharpness["metric"] == metric]
        if len(rows):
            return rows[rows["epsilon"] == rows["epsilon"].max()]
    return sharpness.iloc[0:0]


def final_sharpness(runs: pd.DataFrame, sharpness: pd.DataFrame) -> pd.DataFrame:
    """Headline sharpness and lambda_max at each run's final checkpoint, joined to its run row."""
    final = sharpness.merge(runs[["run_id", "steps"]], on="run_id")
    final = final[final["step"] == final["steps"]]
    eps = headline_sharpness(final)[["run_id", "value"]].rename(columns={"value": "eps_sharpness"})
    lam = final[final["metric"] == "hessian_lambda_max"][["run_id", "value"]].rename(columns={"value": "hessian_lambda_max"})
    return runs.merge(eps, on="run_id").merge(lam, on="run_id", how="left")


def plot_sharpness_vs_batch(runs: pd.DataFrame, sharpness: pd.DataFrame, png, pdf=None) -> None:
    """Keskar's figure: sharpness and test accuracy against batch size, at each batch size's best base LR."""
    joined = final_sharpness(runs, sharpness)
    if joined.empty:
        return _no_data("no final checkpoints were analysed", png, pdf)
    chosen = best_base_lr_runs(joined)
    chosen = chosen.assign(panel=_panel_key(chosen))
    eps = headline_sharpness(sharpness)["epsilon"].iloc[0]
    long = chosen.melt(
        id_vars=["panel", "batch_size", "lr_rule", "seed"], value_vars=["eps_sharpness", "hessian_lambda_max", "final_test_acc"],
        var_name="quantity", value_name="y",
    )
    labels = {"eps_sharpness": f"ε-sharpness (ε={eps:g}, %)", "hessian_lambda_max": "Hessian λ_max",
              "final_test_acc": "final test accuracy"}
    long["quantity"] = long["quantity"].map(labels)
    grid = sns.relplot(
        data=long, x="batch_size", y="y", hue="lr_rule", style="lr_rule", row="quantity", col="panel", kind="line",
        markers=True, dashes=False, estimator="median", err_style="bars", errorbar=("pi", 100), height=2.6, aspect=1.3,
        facet_kws={"sharey": False}, row_order=list(labels.values()),
    )
    grid.set(xscale="log")
    for (quantity, _), ax in grid.axes_dict.items():
        if quantity != labels["final_test_acc"]:
            ax.set_yscale("log")
        ax.set_xticks(sorted(chosen["batch_size"].unique()))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.minorticks_off()
    grid.set_titles("{col_name}")
    for (quantity, _), ax in grid.axes_dict.items():
        ax.set_ylabel(quantity)
    grid.set_xlabels("batch size")
    grid.figure.suptitle("Sharpness and test accuracy against batch size (median over seeds, bars: range)", y=1.02)
    save_figure(grid.figure, png, pdf)


def plot_sharpness_along_training(runs: pd.DataFrame, sharpness: pd.DataFrame, png, pdf=None) -> None:
    """Keskar's along-training figure: sharpness against train cross-entropy for the smallest (SB)
    and largest (LB) batch of each model and LR rule; training runs right to left."""
    rows = headline_sharpness(sharpness)
    along = rows.groupby("run_id")["step"].transform("nunique") > 1
    data = rows[along].merge(runs[["run_id", "study", "model", "lr_rule", "batch_size", "base_lr", "seed"]], on="run_id")
    if data.empty:
        return _no_data("no run was analysed along training", png, pdf)
    group = ["study", "model", "lr_rule"]
    sb = data.groupby(group)["batch_size"].transform("min")
    lb = data.groupby(group)["batch_size"].transform("max")
    data["regime"] = np.where(data["batch_size"] == sb, "SB", "LB")
    data = data[(data["batch_size"] == sb) | (data["batch_size"] == lb)].copy()
    data["regime"] = data["regime"] + " (B=" + data["batch_size"].astype(str) + ")"
    data["panel"] = _panel_key(data) + " · " + data["lr_rule"]
    data = data[data["value"] > 0].sort_values("step")
    grid = sns.relplot(
        data=data, x="train_loss", y="value", hue="regime", units="run_id", estimator=None, col="panel", col_wrap=3,
        kind="line", marker="o", height=2.8, aspect=1.2, facet_kws={"sharey": False, "sharex": False},
    )
    grid.set(xscale="log", yscale="log")
    for ax in grid.axes.flat:
        ax.invert_xaxis()
    grid.set_titles("{col_name}")
    eps = data["epsilon"].iloc[0]
    grid.set_axis_labels("train cross-entropy (training proceeds →)", f"ε-sharpness (ε={eps:g}, %)")
    grid.figure.suptitle("Sharpness along training: small batch (SB) against large batch (LB); one line per run", y=1.03)
    save_figure(grid.figure, png, pdf)


def plot_interpolation(interpolation: pd.DataFrame, png, pdf=None) -> None:
    """Keskar's parametric plot: loss (solid) and accuracy (dashed) along x(α) = α x_LB + (1-α) x_SB."""
    if interpolation.empty:
        return _no_data("no interpolation pairs", png, pdf)
    data = interpolation.assign(panel=interpolation["pair_id"].str.split("/", n=1).str[-1])
    grid = sns.FacetGrid(data, col="panel", col_wrap=4, height=2.6, aspect=1.25, sharey=False)

    def draw(data, **_):
        ax = plt.gca()
        acc_ax = ax.twinx()
        for split, color in (("train", "tab:blue"), ("test", "tab:red")):
            part = data[data["split"] == split].sort_values("alpha")
            ax.plot(part["alpha"], part["loss"], color=color, label=f"{split} loss")
            acc_ax.plot(part["alpha"], part["accuracy"], color=color, ls="--", label=f"{split} accuracy")
        ax.set_yscale("log")
        acc_ax.set_ylim(0, 1)
        for a in (0, 1):
            ax.axvline(a, color="0.7", lw=0.8)

    grid.map_dataframe(draw)
    grid.set_titles("{col_name}", size=8)
    grid.set_axis_labels("α (0: small batch, 1: large batch)", "cross-entropy (log)")
    handles = [matplotlib.lines.Line2D([], [], color=c, ls=ls) for c in ("tab:blue", "tab:red") for ls in ("-", "--")]
    grid.figure.legend(handles, ["train loss", "train accuracy", "test loss", "test accuracy"], loc="upper center",
                       ncol=4, bbox_to_anchor=(0.5, 1.0), frameon=False)
    bn = ", ".join(sorted(data["bn_mode"].unique()))
    grid.figure.suptitle(f"1-D interpolation between solutions (BN statistics: {bn}); accuracy dashed, right axis", y=1.04)
    save_figure(grid.figure, png, pdf)


FIGURES = {
    "training_curves": plot_training_curves,
    "accuracy_vs_batch": plot_accuracy_vs_batch,
    "sharpness_vs_batch": plot_sharpness_vs_batch,
    "sharpness_along_training": plot_sharpness_along_training,
    "interpolation": plot_interpolation,
}


def draw_figure(name: str, tables: dict[str, pd.DataFrame], png, pdf=None) -> None:
    """Draw figure `name` from the tables it needs, passed by table name (runs, curves, ...)."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}")
    FIGURES[name](**tables, png=png, pdf=pdf)
