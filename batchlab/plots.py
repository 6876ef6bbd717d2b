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
- `plot_steps_to_target`, `plot_speedup`, `plot_best_lr`: Golmant et al. 2018 and Shallue et
  al. 2018 (steps to target with perfect scaling and B_crit, speed-up, best LR per batch);
  `plot_accuracy_vs_base_lr`, `plot_generalization_gap`: Masters & Luschi 2018's stable-LR
  view and the generalization gap against batch size.
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


def _log_batch_axes(grid, batch_sizes) -> None:
    """Log-scaled batch-size axes labelled with the batch sizes themselves."""
    for ax in grid.axes.flat:
        ax.set_xscale("log")
        ax.set_xticks(sorted(batch_sizes))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.minorticks_off()


def _label_quantity_rows(grid, title: str) -> None:
    """Titles and y labels of a grid with one row per quantity and one column per panel."""
    grid.set_titles("{col_name}")
    for (quantity, _), ax in grid.axes_dict.items():
        ax.set_ylabel(quantity)
    grid.set_xlabels("batch size")
    grid.figure.suptitle(title, y=1.02)


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
    _log_batch_axes(grid, chosen["batch_size"].unique())
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
    _log_batch_axes(grid, chosen["batch_size"].unique())
    for (quantity, _), ax in grid.axes_dict.items():
        if quantity != labels["final_test_acc"]:
            ax.set_yscale("log")
    _label_quantity_rows(grid, "Sharpness and test accuracy against batch size (median over seeds, bars: range)")
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
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # narrow log ranges crowd the labels
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
    grid.figure.legend(handles, ["train loss", "train accuracy", "test loss", "test accuracy"], loc="lower center",
                       ncol=4, bbox_to_anchor=(0.5, 1.0), frameon=False)
    bn = ", ".join(sorted(data["bn_mode"].unique()))
    grid.figure.suptitle(f"1-D interpolation between solutions (BN statistics: {bn}); accuracy dashed, right axis", y=1.08)
    save_figure(grid.figure, png, pdf)


# --- speed-up and critical batch size (Golmant 2018, Shallue 2018) -----------------------

RULE_ORDER = ["constant", "linear", "sqrt", "best"]


def _target_label(df: pd.DataFrame) -> pd.Series:
    return df["target_metric"].str.replace("_", " ") + " ≤ " + df["target_value"].map("{:g}".format)


def _speedup_frame(speedup: pd.DataFrame) -> pd.DataFrame:
    data = speedup.assign(target=_target_label(speedup))
    data = data.assign(panel=_panel_key(data))
    return data[data["reached"]]


def plot_steps_to_target(speedup: pd.DataFrame, critical: pd.DataFrame, png, pdf=None) -> None:
    """Steps to target against batch size (log-log), one line per LR rule, the perfect-scaling
    line from the smallest batch of the tuned (`best`) curve, and its fitted B_crit."""
    data = _speedup_frame(speedup)
    if data.empty:
        return _no_data("no batch size reached any target", png, pdf)
    rules = [r for r in RULE_ORDER if r in set(data["lr_rule"])]
    grid = sns.relplot(data=data, x="batch_size", y="steps_to_target", hue="lr_rule", hue_order=rules, style="lr_rule",
                       row="target", col="panel", kind="line", markers=True, dashes=False, height=2.7, aspect=1.25,
                       facet_kws={"sharey": False, "margin_titles": True})
    grid.set(yscale="log")
    _log_batch_axes(grid, data["batch_size"].unique())
    crit = critical.assign(target=_target_label(critical))
    crit = crit.assign(panel=_panel_key(crit))
    for (target, panel), ax in grid.axes_dict.items():
        best = data[(data["target"] == target) & (data["panel"] == panel) & (data["lr_rule"] == "best")].sort_values("batch_size")
        if best.empty:
            continue
        b0, s0 = best["batch_size"].iloc[0], best["steps_to_target"].iloc[0]
        bs = np.array(sorted(data["batch_size"].unique()), dtype=float)
        ax.plot(bs, s0 * b0 / bs, color="0.6", ls=":", label="perfect scaling")
        fit = crit[(crit["target"] == target) & (crit["panel"] == panel) & (crit["lr_rule"] == "best")]
        if len(fit) and np.isfinite(fit["b_crit"].iloc[0]):
            row = fit.iloc[0]
            ax.axvline(row["b_crit"], color="k", lw=0.8)
            if np.isfinite(row["ci_low"]):
                ax.axvspan(row["ci_low"], row["ci_high"], color="k", alpha=0.08)
            right = row["b_crit"] > bs[-1] / 2  # near the right edge, label to the left of the line
            ax.text(row["b_crit"], ax.get_ylim()[1], f" B_crit≈{row['b_crit']:.0f} ", va="top", fontsize=7, clip_on=True,
                    ha="right" if right else "left")
        ax.set_xlim(bs[0] / 1.4, bs[-1] * 1.4)  # a wide interval must not squeeze the batch axis
    grid.set_axis_labels("batch size", "steps to target")
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.figure.suptitle("Steps to target (min over the LR grid); dotted: perfect scaling; line and band: fitted B_crit "
                         "of the tuned curve with its 95% interval", y=1.02)
    save_figure(grid.figure, png, pdf)


def plot_speedup(speedup: pd.DataFrame, png, pdf=None) -> None:
    """Speed-up over the smallest batch against batch size (log-log), with its bootstrap interval."""
    data = _speedup_frame(speedup).dropna(subset=["speedup"])
    if data.empty:
        return _no_data("no speed-up: the smallest batch never reached a target", png, pdf)
    rules = [r for r in RULE_ORDER if r in set(data["lr_rule"])]
    grid = sns.FacetGrid(data, row="target", col="panel", height=2.7, aspect=1.25, sharey=False, margin_titles=True)
    palette = dict(zip(rules, sns.color_palette(n_colors=len(rules))))

    def draw(data, **_):
        ax = plt.gca()
        for rule in rules:
            part = data[data["lr_rule"] == rule].sort_values("batch_size")
            ax.plot(part["batch_size"], part["speedup"], marker="o", color=palette[rule], label=rule)
            ax.fill_between(part["batch_size"], part["speedup_ci_low"], part["speedup_ci_high"], color=palette[rule], alpha=0.15)
        bs = np.array(sorted(data["batch_size"].unique()), dtype=float)
        ax.plot(bs, bs / bs[0], color="0.6", ls=":", label="perfect")
        ax.set_yscale("log")

    grid.map_dataframe(draw)
    _log_batch_axes(grid, data["batch_size"].unique())
    grid.add_legend()
    grid.set_axis_labels("batch size", "speed-up over the smallest batch")
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.figure.suptitle("Speed-up curves (bands: 95% bootstrap over seeds; dotted: perfect scaling)", y=1.02)
    save_figure(grid.figure, png, pdf)


def plot_best_lr(speedup: pd.DataFrame, png, pdf=None) -> None:
    """The LR that reached each target fastest, tuned over every rule and LR, against batch size,
    with linear and square-root scaling drawn through the smallest batch."""
    data = _speedup_frame(speedup)
    data = data[data["lr_rule"] == "best"]
    if data.empty:
        return _no_data("no batch size reached any target", png, pdf)
    grid = sns.relplot(data=data, x="batch_size", y="best_lr", hue="target", style="target", col="panel", kind="line",
                       markers=True, dashes=False, height=3.0, aspect=1.2)
    grid.set(yscale="log")
    _log_batch_axes(grid, data["batch_size"].unique())
    for panel, ax in grid.axes_dict.items():
        part = data[data["panel"] == panel].sort_values("batch_size")
        b0, lr0 = part["batch_size"].iloc[0], part["best_lr"].iloc[0]
        bs = np.array(sorted(data["batch_size"].unique()), dtype=float)
        ax.plot(bs, lr0 * bs / b0, color="0.5", ls="--", lw=0.8)
        ax.plot(bs, lr0 * np.sqrt(bs / b0), color="0.5", ls=":", lw=0.8)
    grid.set_axis_labels("batch size", "best learning rate")
    grid.set_titles("{col_name}")
    grid.figure.suptitle("Best LR per batch size (dashed: linear scaling, dotted: square-root scaling)", y=1.04)
    save_figure(grid.figure, png, pdf)


def plot_accuracy_vs_base_lr(runs: pd.DataFrame, png, pdf=None) -> None:
    """Masters & Luschi: final test accuracy against the base LR eta_tilde = eta / m, one line per
    batch size (median over seeds; diverged runs count as accuracy 0)."""
    data = runs.assign(eta_tilde=runs["lr"] / runs["batch_size"],
                       acc=runs["final_test_acc"].where(runs["status"] == "completed", 0.0).fillna(0.0))
    data = data.assign(panel=_panel_key(data))
    grid = sns.relplot(data=data, x="eta_tilde", y="acc", hue="batch_size", hue_norm=LogNorm(), palette="viridis",
                       col="panel", kind="line", marker="o", estimator="median", errorbar=None, legend="full",
                       height=3.0, aspect=1.25, facet_kws={"sharey": False})
    grid.set(xscale="log")
    grid.set_axis_labels("base learning rate η̃ = η / m", "final test accuracy")
    grid.set_titles("{col_name}")
    grid.figure.suptitle("Test accuracy against base LR, one line per batch size (Masters & Luschi 2018)", y=1.04)
    save_figure(grid.figure, png, pdf)


def plot_generalization_gap(runs: pd.DataFrame, png, pdf=None) -> None:
    """Test minus train loss, and test error, against batch size at each batch size's best base LR."""
    chosen = best_base_lr_runs(runs)
    chosen = chosen.assign(panel=_panel_key(chosen), gap=chosen["final_test_loss"] - chosen["final_train_loss"],
                           test_error=1 - chosen["final_test_acc"])
    long = chosen.melt(id_vars=["panel", "batch_size", "lr_rule", "seed"], value_vars=["gap", "test_error"],
                       var_name="quantity", value_name="y")
    labels = {"gap": "test loss − train loss", "test_error": "test error"}
    long["quantity"] = long["quantity"].map(labels)
    grid = sns.relplot(data=long, x="batch_size", y="y", hue="lr_rule", style="lr_rule", row="quantity", col="panel",
                       kind="line", markers=True, dashes=False, err_style="bars", errorbar=("pi", 100),
                       height=2.6, aspect=1.3, facet_kws={"sharey": False}, row_order=list(labels.values()))
    _log_batch_axes(grid, chosen["batch_size"].unique())
    _label_quantity_rows(grid, "Generalization gap against batch size, at each batch size's best base LR (bars: range over seeds)")
    save_figure(grid.figure, png, pdf)


FIGURES = {
    "training_curves": plot_training_curves,
    "accuracy_vs_batch": plot_accuracy_vs_batch,
    "sharpness_vs_batch": plot_sharpness_vs_batch,
    "sharpness_along_training": plot_sharpness_along_training,
    "interpolation": plot_interpolation,
    "steps_to_target": plot_steps_to_target,
    "speedup": plot_speedup,
    "best_lr": plot_best_lr,
    "accuracy_vs_base_lr": plot_accuracy_vs_base_lr,
    "generalization_gap": plot_generalization_gap,
}


def draw_figure(name: str, tables: dict[str, pd.DataFrame], png, pdf=None) -> None:
    """Draw figure `name` from the tables it needs, passed by table name (runs, curves, ...)."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}")
    FIGURES[name](**tables, png=png, pdf=pdf)
