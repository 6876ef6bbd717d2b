"""Keskar et al. 2017's figures: sharpness and test accuracy against batch size, sharpness
along training for the small (SB) and large (LB) batch, and the 1-D interpolation."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from batchlab.plots.common import (
    batch_axis, dodge, figure_legend, is_empty, label_outer, log_scale_if_positive, no_data_figure, ordered_rules,
    panel_key, panel_note, plain_log_axis, rule_handles, rule_marker, rule_palette, set_title, status_series,
    unhealthy_handles, wrapped_grid,
)
from batchlab.plots.generalization import (
    draw_rule_medians, mark_unhealthy_runs, missing_value_notes, quality_axis, quality_names, worst_edge,
)
from batchlab.quality import best_base_lr_runs, task_quality
from batchlab.speedup import train_fractions
from batchlab.tables import CONVERGED_SEARCH, KESKAR_SEARCH

SB_LB_COLORS = {"SB": "tab:blue", "LB": "tab:red"}


def headline_sharpness(sharpness: pd.DataFrame, search: str | None = None) -> pd.DataFrame:
    """Rows of the headline measure: full-space epsilon-sharpness at the largest epsilon
    (Keskar's 1e-3 by default), or the subspace measure where the full one was not run; by the
    search `search`, or by default the converged one where it was run (the final checkpoints),
    else Keskar's."""
    if is_empty(sharpness):
        return sharpness.iloc[0:0]
    if "method" in sharpness:
        eps = sharpness["metric"].str.startswith("eps_")
        if search is not None:
            sharpness = sharpness[~eps | (sharpness["method"] == search)]
        else:  # per measurement, the converged search where it ran
            converged = (sharpness["method"] == CONVERGED_SEARCH).groupby(
                [sharpness["run_id"], sharpness["step"], sharpness["metric"], sharpness["epsilon"].fillna(0)]).transform("any")
            sharpness = sharpness[~eps | (sharpness["method"] == np.where(converged, CONVERGED_SEARCH, KESKAR_SEARCH))]
    for metric in ("eps_sharpness_full", "eps_sharpness_subspace"):
        rows = sharpness[sharpness["metric"] == metric]
        if len(rows):
            return rows[rows["epsilon"] == rows["epsilon"].max()]
    return sharpness.iloc[0:0]


def final_measures(runs: pd.DataFrame, sharpness: pd.DataFrame) -> pd.DataFrame:
    """One row per run measured at its final checkpoint: the headline epsilon-sharpness, the
    Hessian's lambda_max, and its Hutchinson trace with the trace's 95% interval."""
    columns = ["run_id", "eps_sharpness", "hessian_lambda_max", "hessian_trace", "hessian_trace_ci_low",
               "hessian_trace_ci_high"]
    if is_empty(sharpness) or is_empty(runs):
        return pd.DataFrame(columns=columns)
    final = sharpness.merge(runs[["run_id", "steps"]], on="run_id")
    final = final[final["step"] == final["steps"]]
    measured = pd.DataFrame({"run_id": final["run_id"].unique()})
    eps = headline_sharpness(final)[["run_id", "value"]].rename(columns={"value": "eps_sharpness"})
    lam = final[final["metric"] == "hessian_lambda_max"][["run_id", "value"]].rename(columns={"value": "hessian_lambda_max"})
    trace = final[final["metric"] == "hessian_trace"][["run_id", "value", "ci_low", "ci_high"]].rename(
        columns={"value": "hessian_trace", "ci_low": "hessian_trace_ci_low", "ci_high": "hessian_trace_ci_high"})
    for part in (eps, lam, trace):
        measured = measured.merge(part.drop_duplicates("run_id"), on="run_id", how="left")
    return measured[columns]


def final_sharpness(runs: pd.DataFrame, sharpness: pd.DataFrame) -> pd.DataFrame:
    """The runs whose final checkpoint has the headline sharpness, joined to their final measures."""
    return runs.merge(final_measures(runs, sharpness).dropna(subset=["eps_sharpness"]), on="run_id")


def sharpness_at_best_lr(runs: pd.DataFrame, sharpness: pd.DataFrame) -> pd.DataFrame:
    """Every run at its cell's best base LR, chosen among ALL runs (as for the accuracy figure),
    with its final measures where that run was analysed and NaN where it was not."""
    chosen = best_base_lr_runs(runs)
    chosen = chosen.merge(final_measures(runs, sharpness), on="run_id", how="left")
    return chosen.assign(panel=panel_key(chosen))


# --- sharpness against batch size -------------------------------------------------------------

def _quantities(chosen: pd.DataFrame, sharpness: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """The sharpness columns to draw, those measured at all, with their panel title and axis label."""
    eps_rows = headline_sharpness(sharpness)
    labels = {}
    if chosen["eps_sharpness"].notna().any():
        where = "full space" if eps_rows["metric"].iloc[0] == "eps_sharpness_full" else "random subspace"
        labels["eps_sharpness"] = (f"ε-sharpness, {where}", f"ε-sharpness, ε={eps_rows['epsilon'].iloc[0]:g} (%)")
    if chosen["hessian_lambda_max"].notna().any():
        labels["hessian_lambda_max"] = ("Hessian λ_max", "Hessian λ_max")
    if chosen["hessian_trace"].notna().any():
        labels["hessian_trace"] = ("Hessian trace", "Hessian trace (Hutchinson)")
    return labels


def draw_runs_with_interval(ax: plt.Axes, data: pd.DataFrame, y: str, rules: list[str], palette: dict) -> None:
    """Each run a point with its own 95% interval (columns `{y}_ci_low`, `{y}_ci_high`), and a
    line through the per-batch medians."""
    draw_rule_medians(ax, data, y, rules, palette, bars=False)
    for i, rule in enumerate(rules):
        part = data[(data["lr_rule"] == rule)].dropna(subset=[y])
        if part.empty:
            continue
        seeds = sorted(part["seed"].unique())
        for j, seed in enumerate(seeds):
            runs = part[part["seed"] == seed]
            x = dodge(runs["batch_size"], i * len(seeds) + j, len(rules) * len(seeds), width=0.08)
            lo = (runs[y] - runs[f"{y}_ci_low"]).clip(lower=0).to_numpy()
            hi = (runs[f"{y}_ci_high"] - runs[y]).clip(lower=0).to_numpy()
            drawn = ax.errorbar(x, runs[y], yerr=[np.nan_to_num(lo), np.nan_to_num(hi)], ls="none",
                                marker=rule_marker(rule), ms=4, mfc="white", color=palette[rule], capsize=2, lw=1)
            drawn.lines[0].set_gid(f"interval:{rule}")


def figure_sharpness_vs_batch(runs: pd.DataFrame, sharpness: pd.DataFrame) -> plt.Figure:
    """Keskar's figure: sharpness, the Hessian's lambda_max and trace, and test accuracy (the task's quality)
    against batch size, at each batch size's best base LR (chosen among all runs); a panel for each measure
    a (study, model) has, none for a model never analysed."""
    if is_empty(runs):
        return no_data_figure("no training runs to draw")
    chosen = sharpness_at_best_lr(runs, sharpness)
    if chosen["eps_sharpness"].isna().all():
        return no_data_figure("none of the runs at each batch size's best base LR had its final checkpoint analysed")
    quantities = _quantities(chosen, sharpness)
    rules = ordered_rules(chosen["lr_rule"])
    palette = rule_palette(rules)
    cells, qualities = [], []  # cells: (panel's runs, column, title, label)
    for panel in dict.fromkeys(chosen["panel"]):
        part = chosen[chosen["panel"] == panel]
        measured = [(part, column, *quantities[column]) for column in quantities if part[column].notna().any()]
        if measured:
            quality = task_quality(part)
            qualities.append(quality)
            cells += measured + [(part, quality.column, quality.name, f"final {quality.name}")]
    fig, axes = wrapped_grid(len(cells), panel=(3.2, 2.6), legend="bottom", group=len(quantities) + 1)
    for ax, (part, column, title, label) in zip(axes, cells):
        if column == "hessian_trace":
            draw_runs_with_interval(ax, part, column, rules, palette)
        else:
            draw_rule_medians(ax, part, column, rules, palette)
        if column not in quantities:  # the task's quality, as in accuracy_vs_batch
            quality = task_quality(part)
            mark_unhealthy_runs(ax, part, column, rules, worst_edge(quality))
            quality_axis(ax, quality)
        else:
            log_scale_if_positive(ax, part[column])
            plain_log_axis(ax)
            measured = part[column].notna().sum()
            if measured < len(part):
                panel_note(ax, f"analysed: {measured} of {len(part)} runs", corner="upper left")
        batch_axis(ax, part["batch_size"])
        ax.set_title(f"{part['panel'].iloc[0]} · {title}")
    label_outer(axes, "batch size", [cell[-1] for cell in cells])
    handles, labels = unhealthy_handles(status_series(chosen), missing_value_notes(qualities))
    handles, labels = rule_handles(rules, palette) + handles, list(rules) + labels
    if "hessian_trace" in quantities:
        handles.append(Line2D([], [], color="0.3", marker="o", mfc="white", ls="none"))
        labels.append("trace: a run, with its\n95% Hutchinson interval")
    figure_legend(fig, handles, labels, where="bottom")
    set_title(fig, f"Sharpness and {quality_names(qualities)} against batch size at the final checkpoint, each batch "
                   "size at its best base LR chosen among all runs (median over seeds; bars: range). Sharpness only "
                   "where the chosen run was analysed; the others were not.")
    return fig


# --- sharpness along training -----------------------------------------------------------------

def sb_lb_runs(runs: pd.DataFrame, sharpness: pd.DataFrame) -> pd.DataFrame:
    """Headline-sharpness rows of the runs measured along training (more than one checkpoint)
    whose batch is the smallest (SB) or largest (LB) among the HEALTHY ones of their study,
    model, training fraction and LR rule: a stalled or diverged run is no solution, so never an end.
    Keskar's search, the one measured at every checkpoint."""
    rows = headline_sharpness(sharpness, KESKAR_SEARCH)
    if rows.empty or is_empty(runs):
        return rows.assign(regime=pd.Series(dtype=str))
    along = rows.groupby("run_id")["step"].transform("nunique") > 1
    runs = runs.assign(train_fraction=train_fractions(runs))
    data = rows[along].merge(runs[["run_id", "study", "model", "train_fraction", "lr_rule", "batch_size", "base_lr",
                                   "seed", "status"]], on="run_id")
    data = data[status_series(data) == "completed"]
    group = ["study", "model", "train_fraction", "lr_rule"]
    sb = data.groupby(group)["batch_size"].transform("min")
    lb = data.groupby(group)["batch_size"].transform("max")
    data = data.assign(regime=np.where(data["batch_size"] == sb, "SB", "LB"), sb_batch=sb, lb_batch=lb)
    return data[(data["batch_size"] == sb) | (data["batch_size"] == lb)]


def along_training_loss(data: pd.DataFrame) -> tuple[str, str]:
    """The loss column to plot sharpness against, and its axis label: the loss on the analysis
    subset that epsilon-sharpness is computed on, or the full train loss in tables without it."""
    if "subset_loss" in data and data["subset_loss"].notna().any():
        n = data["n_examples"].dropna() if "n_examples" in data else pd.Series(dtype=float)
        size = f" (n={int(n.iloc[0])})" if len(n) else ""
        return "subset_loss", f"loss on the analysis subset{size}"
    return "train_loss", "train loss (full training set)"


def figure_sharpness_along_training(runs: pd.DataFrame, sharpness: pd.DataFrame) -> plt.Figure:
    """Keskar's along-training figure: sharpness against the train loss for SB and LB of each
    model and LR rule; the loss axis is reversed so that training runs left to right."""
    data = sb_lb_runs(runs, sharpness)
    data = data[data["value"] > 0] if len(data) else data
    if data.empty:
        return no_data_figure("no healthy run was analysed along training")
    loss, loss_label = along_training_loss(data)
    data = data.assign(panel=panel_key(data) + " · " + data["lr_rule"]).sort_values("step")
    order = panel_key(runs) + " · " + runs["lr_rule"]  # the panels in the runs table's order
    panels = [p for p in dict.fromkeys(order) if p in set(data["panel"])]
    fig, axes = wrapped_grid(len(panels), panel=(3.5, 2.7))
    for ax, panel in zip(axes, panels):
        part = data[data["panel"] == panel]
        for run_id, run in part.groupby("run_id", sort=False):
            ax.plot(run[loss], run["value"], marker="o", ms=3.5, lw=1.3, color=SB_LB_COLORS[run["regime"].iloc[0]],
                    gid=f"{run['regime'].iloc[0]}:{run_id}")
        ax.set(xscale="log", yscale="log")
        ax.invert_xaxis()
        plain_log_axis(ax, "x")
        plain_log_axis(ax, "y")
        sb, lb = part["sb_batch"].iloc[0], part["lb_batch"].iloc[0]
        title = f"{panel} rule"
        ax.set_title(f"{title}\nSB: B={sb:g}, LB: B={lb:g}" if sb != lb else f"{title}\nonly B={sb:g} is healthy")
    label_outer(axes, loss_label, "ε-sharpness (%)")
    eps = data["epsilon"].iloc[0]
    figure_legend(fig, [Line2D([], [], color=c, marker="o") for c in SB_LB_COLORS.values()],
                  ["small batch (SB)", "large batch (LB)"])
    set_title(fig, f"Sharpness along training (ε={eps:g}) against the loss on the subset it is measured on, smallest "
                   "(SB) against largest (LB) healthy batch; one line per run, training proceeds to the right")
    return fig


# --- 1-D interpolation --------------------------------------------------------------------------

def _run_id_parts(run_id: str) -> tuple[str, list[str]]:
    """(batch size, the other parts without the study) of `study/model/bs<B>[/bn<m>]/rule/lr<x>/seed<s>`."""
    parts = run_id.split("/")[1:]
    batch = next((p[2:] for p in parts if re.fullmatch(r"bs\d+", p)), "?")
    return batch, [p for p in parts if not re.fullmatch(r"bs\d+", p)]


def pair_title(run_id_small: str, run_id_large: str) -> str:
    """A panel title from the two ends' run ids: what they share, then 'B=16 vs B=512'
    (with whatever else differs between them beside each batch size)."""
    b_small, small = _run_id_parts(run_id_small)
    b_large, large = _run_id_parts(run_id_large)
    shared = [p for p in small if p in large]
    own_small = " ".join(p for p in small if p not in large)
    own_large = " ".join(p for p in large if p not in small)
    left = f"B={b_small}" + (f" {own_small}" if own_small else "")
    right = f"B={b_large}" + (f" {own_large}" if own_large else "")
    return " · ".join(shared) + f"\n{left} vs {right}"


def figure_interpolation(interpolation: pd.DataFrame) -> plt.Figure:
    """Keskar's parametric plot: loss (solid) and accuracy (dashed) along x(α) = α x_LB + (1-α) x_SB."""
    if is_empty(interpolation):
        return no_data_figure("no interpolation pairs: no two healthy runs to interpolate between")
    pairs = interpolation.drop_duplicates("pair_id")
    titles = dict(zip(pairs["pair_id"], (pair_title(s, l) for s, l in zip(pairs["run_id_small"], pairs["run_id_large"]))))
    if pairs["run_id_small"].str.split("/").str[0].nunique() > 1:
        titles = {pid: f"{pid.split('/')[0]} · {t}" for pid, t in titles.items()}
    fig, axes = wrapped_grid(len(titles), max_cols=4, panel=(3.1, 2.5), legend="bottom")
    for ax, (pair_id, title) in zip(axes, titles.items()):
        _draw_interpolation(ax, interpolation[interpolation["pair_id"] == pair_id])
        ax.set_title(title)
    handles = [Line2D([], [], color=c, ls=ls) for c in ("tab:blue", "tab:red") for ls in ("-", "--")]
    figure_legend(fig, handles, ["train loss", "train accuracy", "test loss", "test accuracy"], where="bottom")
    bn = ", ".join(sorted(interpolation["bn_mode"].astype(str).unique()))
    set_title(fig, f"1-D interpolation between the small-batch (α=0) and large-batch (α=1) solutions; loss solid "
                   f"(left axis, log), accuracy dashed (right axis); BN statistics: {bn}")
    return fig


def _draw_interpolation(ax: plt.Axes, data: pd.DataFrame) -> None:
    acc_ax = ax.twinx()
    for split, color in (("train", "tab:blue"), ("test", "tab:red")):
        part = data[data["split"] == split].sort_values("alpha")
        ax.plot(part["alpha"], part["loss"], color=color)
        acc_ax.plot(part["alpha"], part["accuracy"], color=color, ls="--")
    log_scale_if_positive(ax, data["loss"])
    plain_log_axis(ax)
    acc_ax.set_ylim(0, 1)
    acc_ax.set_ylabel("accuracy")
    for a in (0, 1):
        ax.axvline(a, color="0.7", lw=0.8)
    ax.set(xlabel="α", ylabel="cross-entropy")
