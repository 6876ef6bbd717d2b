"""Masters & Luschi 2018's figures: final quality against batch size and base LR, each
batch size at its best base LR; and the training curves behind them.

Final quality is the task's own measure (`QUALITY`): test accuracy for classification, test
perplexity for a language model (lower is better, on a log axis) and test mean IoU for
segmentation; a runs table without a `task` column is classification.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from batchlab.plots.common import (
    UNHEALTHY, batch_axis, batch_colors, batch_handles, dodge, figure_legend, is_empty, label_outer, mark_unhealthy,
    no_data_figure, ordered_rules, panel_key, plain_log_axis, present_cells, rule_handles, rule_marker, rule_palette,
    set_title, status_series, unhealthy_handles, wrapped_grid,
)
from batchlab.quality import CLASSIFICATION, QUALITY, Quality, best_base_lr_runs, failed_as_worst, task_quality

def seed_summary(data: pd.DataFrame, y: str) -> pd.DataFrame:
    """Per batch size: the median of `y` over the runs that have one, and its range."""
    valid = data.dropna(subset=[y])
    stats = valid.groupby("batch_size")[y].agg(["median", "min", "max"]).reset_index()
    return stats.sort_values("batch_size")


def draw_rule_medians(ax: plt.Axes, data: pd.DataFrame, y: str, rules: list[str], palette: dict,
                      bars: bool = True) -> None:
    """One line per LR rule through the per-batch medians over seeds, bars spanning the seeds."""
    for i, rule in enumerate(rules):
        stats = seed_summary(data[data["lr_rule"] == rule], y)
        if stats.empty:
            continue
        x = dodge(stats["batch_size"], i, len(rules))
        yerr = [stats["median"] - stats["min"], stats["max"] - stats["median"]] if bars else None
        drawn = ax.errorbar(x, stats["median"], yerr=yerr, color=palette[rule], marker=rule_marker(rule), ms=5,
                            capsize=2.5, lw=1.5, label=rule)
        drawn.lines[0].set_gid(f"median:{rule}")


def mark_unhealthy_runs(ax: plt.Axes, data: pd.DataFrame, y: str, rules: list[str], edge: float = 0.03) -> None:
    """x marks at the stalled and diverged runs among `data`, dodged like their rule's line
    (one without a value on the bottom edge, or at `edge`)."""
    for i, rule in enumerate(rules):
        part = data[(data["lr_rule"] == rule) & (status_series(data) != "completed")]
        if len(part):
            mark_unhealthy(ax, dodge(part["batch_size"], i, len(rules)), part[y], status_series(part), edge)


def worst_edge(quality: Quality) -> float:
    """Where a run without a value is marked: the bottom edge, or the top where higher is worse."""
    return 0.03 if quality.higher_is_better else 0.97


def missing_value_notes(qualities: list[Quality]) -> dict[str, str]:
    """The legend's note on where a diverged run (no value) is marked."""
    if all(q.higher_is_better for q in qualities):
        what = qualities[0].name.replace("test ", "") if len(set(qualities)) == 1 else "value"
        return {"stalled": "", "diverged": f",\nno {what}: on the bottom edge"}
    if len(set(qualities)) == 1:
        return {"stalled": "", "diverged": f",\nno {qualities[0].name.replace('test ', '')}: on the top edge"}
    return {"stalled": "", "diverged": ",\nno value: on the edge of the worse values"}


def quality_axis(ax: plt.Axes, quality: Quality) -> None:
    """A log y axis for perplexity (plain numbers over a short range); accuracy and IoU stay linear. A panel whose
    drawn values reach zero or below (every run stalled or diverged, marked at the worst edge) keeps a linear axis."""
    low = ax.dataLim.intervaly[0]
    if quality.log and np.isfinite(low) and low > 0:
        ax.set_yscale("log")
        plain_log_axis(ax)


# --- figures --------------------------------------------------------------------------------

def figure_training_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure:
    """Train loss against epochs, one line per batch size, a panel per (study, model) and LR rule
    that has curves, each batch size at its best base LR; the band spans the healthy seeds, and each
    stalled or diverged run is a dashed line of its own."""
    if is_empty(runs) or is_empty(curves):
        return no_data_figure("no training runs to draw")
    chosen = best_base_lr_runs(runs)
    chosen = chosen.assign(panel=panel_key(chosen))
    evaluated = curves.dropna(subset=["train_loss"])
    data = evaluated.merge(chosen[["run_id", "panel", "lr_rule", "batch_size", "status"]], on="run_id")
    rules = ordered_rules(chosen["lr_rule"])
    cells = present_cells(data, ("panel", "lr_rule"), dict.fromkeys(chosen["panel"]), rules)
    if not cells:
        return no_data_figure("no training curves were recorded for the runs")
    colors = batch_colors(data["batch_size"])
    fig, axes = wrapped_grid(len(cells), panel=(3.4, 2.6), group=len(rules))
    for ax, (panel, rule) in zip(axes, cells):
        part = data[(data["panel"] == panel) & (data["lr_rule"] == rule)]
        healthy = part[status_series(part) == "completed"]
        if len(healthy):
            # averaging a diverged seed into the band would draw a curve no run followed
            sns.lineplot(data=healthy, x="epoch", y="train_loss", hue="batch_size", palette=colors,
                         errorbar=("pi", 100), legend=False, ax=ax)
        _draw_unhealthy_curves(ax, part, colors)
        ax.set_yscale("log")
        plain_log_axis(ax)
        ax.set_title(f"{panel} · {rule} rule")
    label_outer(axes, "epoch", "train loss (full set)")
    drawn = chosen[chosen["run_id"].isin(data["run_id"])]
    unhealthy = drawn[status_series(drawn) != "completed"]
    handles, labels = unhealthy_handles(status_series(unhealthy), {s: ": dashed, × at its end" for s in UNHEALTHY})
    figure_legend(fig, batch_handles(colors) + handles, [f"B = {b:g}" for b in colors] + labels)
    set_title(fig, "Training curves, each batch size at its best base LR (mean over seeds; band: range over seeds)")
    return fig


def _draw_unhealthy_curves(ax: plt.Axes, part: pd.DataFrame, colors: dict) -> None:
    """Each stalled or diverged run as a dashed line of its own, with an x at its last evaluated point."""
    unhealthy = part[status_series(part) != "completed"].sort_values("epoch")
    for _, run in unhealthy.groupby("run_id"):
        ax.plot(run["epoch"], run["train_loss"], color=colors[run["batch_size"].iloc[0]], ls="--", lw=1)
    ends = unhealthy.groupby("run_id").tail(1)
    mark_unhealthy(ax, ends["epoch"], ends["train_loss"], status_series(ends))


def quality_names(qualities: list[Quality]) -> str:
    """"test accuracy", or "test perplexity / test mean IoU" for the tasks drawn."""
    return " / ".join(dict.fromkeys(q.name for q in qualities))


def qualities_title(qualities: list[Quality]) -> str:
    """`quality_names` at the start of a title: "Test accuracy"."""
    names = quality_names(qualities)
    return names[:1].upper() + names[1:]


def figure_accuracy_vs_batch(runs: pd.DataFrame) -> plt.Figure:
    """Final test accuracy (perplexity for a language model, mean IoU for segmentation) against batch size,
    one line per LR rule, each batch size at its best base LR."""
    if is_empty(runs):
        return no_data_figure("no training runs to draw")
    chosen = best_base_lr_runs(runs)
    chosen = chosen.assign(panel=panel_key(chosen))
    panels, rules = list(dict.fromkeys(chosen["panel"])), ordered_rules(chosen["lr_rule"])
    palette = rule_palette(rules)
    fig, axes = wrapped_grid(len(panels), panel=(3.8, 2.9))
    qualities = []
    for ax, panel in zip(axes, panels):
        part = chosen[chosen["panel"] == panel]
        quality = task_quality(part)
        qualities.append(quality)
        draw_rule_medians(ax, part, quality.column, rules, palette)
        mark_unhealthy_runs(ax, part, quality.column, rules, worst_edge(quality))
        batch_axis(ax, part["batch_size"])
        quality_axis(ax, quality)
        ax.set(title=panel, ylabel=f"final {quality.name}", xlabel="batch size")
    handles, labels = unhealthy_handles(status_series(chosen), missing_value_notes(qualities))
    figure_legend(fig, rule_handles(rules, palette) + handles, rules + labels, title="LR rule")
    set_title(fig, f"{qualities_title(qualities)} against batch size, each at its best base LR "
                   "(median over seeds; bars: range over seeds)")
    return fig


def failure_notes(qualities: list[Quality]) -> dict[str, str]:
    """The legend's note on where a stalled or diverged run is drawn, scored at its task's worst (`failed_as_worst`)."""
    if all(q.higher_is_better for q in qualities):
        note = ", scored 0"
    elif not any(q.higher_is_better for q in qualities):
        note = ",\nscored worst: on the top edge"
    else:
        note = ", scored 0\n(perplexity: on the top edge)"
    return {status: note for status in UNHEALTHY}


def figure_accuracy_vs_base_lr(runs: pd.DataFrame) -> plt.Figure:
    """Masters & Luschi: final test accuracy (perplexity, mean IoU: the task's quality) against the base LR
    eta_tilde = eta / m, one line per batch size, a panel per (study, model) and LR rule (median over seeds;
    a stalled or diverged run is scored at its task's worst, accuracy 0)."""
    if is_empty(runs):
        return no_data_figure("no training runs to draw")
    data = runs.assign(eta_tilde=runs["lr"] / runs["batch_size"])
    data = data.assign(panel=panel_key(data))
    rules = ordered_rules(data["lr_rule"])
    cells = present_cells(data, ("panel", "lr_rule"), dict.fromkeys(data["panel"]), rules)
    colors = batch_colors(data["batch_size"])
    fig, axes = wrapped_grid(len(cells), panel=(3.4, 2.6), group=len(rules))
    qualities = []
    for ax, (panel, rule) in zip(axes, cells):
        part = data[(data["panel"] == panel) & (data["lr_rule"] == rule)]
        quality = task_quality(part)
        qualities.append(quality)
        part = part.assign(score=failed_as_worst(part, quality).astype(float))
        for b, color in colors.items():
            medians = part[part["batch_size"] == b].groupby("eta_tilde")["score"].median().replace(np.inf, np.nan)
            ax.plot(medians.index, medians.to_numpy(), color=color, marker="o", ms=4, lw=1.5)
        unhealthy = part[status_series(part) != "completed"]
        mark_unhealthy(ax, unhealthy["eta_tilde"], unhealthy["score"], status_series(unhealthy), worst_edge(quality))
        ax.set_xscale("log")
        plain_log_axis(ax, "x")
        quality_axis(ax, quality)
        ax.set_title(f"{panel} · {rule} rule")
    label_outer(axes, "base LR η̃ = η / m", [f"final {q.name}" for q in qualities])
    handles, labels = unhealthy_handles(status_series(data), failure_notes(qualities))
    figure_legend(fig, batch_handles(colors) + handles, [f"B = {b:g}" for b in colors] + labels)
    set_title(fig, f"{qualities_title(qualities)} against base LR, one line per batch size (median over seeds; "
                   "Masters & Luschi 2018)")
    return fig


def figure_generalization_gap(runs: pd.DataFrame) -> plt.Figure:
    """Test minus train loss, and test error (perplexity, mean IoU: the task's quality), against batch size
    at each batch size's best base LR; a panel for each of the two that a (study, model) has values of."""
    if is_empty(runs):
        return no_data_figure("no training runs to draw")
    chosen = best_base_lr_runs(runs)
    chosen = chosen.assign(panel=panel_key(chosen), gap=chosen["final_test_loss"] - chosen["final_train_loss"],
                           test_error=1 - chosen["final_test_acc"])
    rules = ordered_rules(chosen["lr_rule"])
    palette = rule_palette(rules)
    cells = []  # (panel, its runs, its quality, column, label)
    for panel in dict.fromkeys(chosen["panel"]):
        part = chosen[chosen["panel"] == panel]
        quality = task_quality(part)
        # the test error of a classifier; a language model's perplexity, a segmentation's mean IoU
        second = ("test_error", "test error") if quality == QUALITY[CLASSIFICATION] else (quality.column, quality.name)
        cells += [(panel, part, quality, column, label) for column, label in (("gap", "test loss − train loss"), second)
                  if part[column].notna().any()]
    if not cells:
        return no_data_figure("no run has a final test and train loss")
    fig, axes = wrapped_grid(len(cells), panel=(3.8, 2.6), group=2)
    for ax, (panel, part, quality, column, label) in zip(axes, cells):
        draw_rule_medians(ax, part, column, rules, palette)
        mark_unhealthy_runs(ax, part, column, rules, 0.03 if column == "gap" else worst_edge(quality))
        batch_axis(ax, part["batch_size"])
        if column != "gap":
            quality_axis(ax, quality)
        ax.set_title(f"{panel} · {label}")
    label_outer(axes, "batch size", [cell[-1] for cell in cells])
    top = any(not quality.higher_is_better for _, _, quality, column, _ in cells if column != "gap")
    note = ",\nno value: on the bottom edge" + ("\n(perplexity: on the top)" if top else "")
    handles, labels = unhealthy_handles(status_series(chosen), {"diverged": note})
    figure_legend(fig, rule_handles(rules, palette) + handles, rules + labels, title="LR rule")
    set_title(fig, "Generalization gap against batch size, at each batch size's best base LR "
                   "(median over seeds; bars: range over seeds)")
    return fig
