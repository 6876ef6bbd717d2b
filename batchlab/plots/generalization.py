"""Masters & Luschi 2018's figures: final quality against batch size and base LR, each
batch size at its best base LR; and the training curves behind them.

Final quality is the task's own measure (`QUALITY`): test accuracy for classification, test
perplexity for a language model (lower is better, on a log axis) and test mean IoU for
segmentation; a runs table without a `task` column is classification.
"""

from __future__ import annotations

from typing import NamedTuple

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from batchlab.plots.common import (
    UNHEALTHY, batch_axis, batch_colors, batch_handles, dodge, figure_legend, is_empty, mark_unhealthy,
    no_data_figure, ordered_rules, panel_grid, panel_key, plain_log_axis, rule_handles, rule_marker, rule_palette,
    set_title, status_series, unhealthy_handles, wrapped_grid,
)
from batchlab.speedup import train_fractions

CELL = ["study", "model", "train_fraction", "lr_rule", "batch_size"]
UNHEALTHY_NOTES = {"stalled": "", "diverged": ",\nno accuracy: on the bottom edge"}
CLASSIFICATION = "classification"


class Quality(NamedTuple):
    """A task's measure of a trained model, in the runs table."""

    column: str
    name: str  # in titles and tables
    higher_is_better: bool
    log: bool  # drawn on a log axis


QUALITY = {
    CLASSIFICATION: Quality("final_test_acc", "test accuracy", True, False),
    "language_model": Quality("final_test_perplexity", "test perplexity", False, True),
    "segmentation": Quality("final_test_miou", "test mean IoU", True, False),
}


def run_tasks(runs: pd.DataFrame) -> pd.Series:
    """Each run's task, aligned with `runs`: classification where the table has none."""
    if "task" not in runs:
        return pd.Series(CLASSIFICATION, index=runs.index, name="task")
    return runs["task"].fillna(CLASSIFICATION).astype(str)


def task_quality(runs: pd.DataFrame) -> Quality:
    """The quality measure of a group of runs of one task (a study trains one data set)."""
    tasks = run_tasks(runs)
    return QUALITY.get(tasks.iloc[0] if len(tasks) else CLASSIFICATION, QUALITY[CLASSIFICATION])


def with_fraction(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with its training fraction in every row (1.0 for a table without the column)."""
    return runs.assign(train_fraction=train_fractions(runs))


def run_scores(runs: pd.DataFrame) -> pd.Series:
    """Final test accuracy, with 0 for a run that did not complete: a diverged or stalled run
    is no solution, so an LR that fails for most seeds must not win."""
    return runs["final_test_acc"].where(status_series(runs) == "completed", 0.0).fillna(0.0)


def quality_scores(runs: pd.DataFrame) -> pd.Series:
    """Each run's task quality as a score in [0, 1], higher better, with 0 for a run that did not complete
    (as `run_scores`): accuracy or mean IoU, and 1 / perplexity (the geometric-mean probability of a token)
    for a language model, so that a failing seed pulls a cell's median down the same way for every task."""
    completed = status_series(runs) == "completed"
    tasks = run_tasks(runs)
    scores = run_scores(runs)
    for task, quality in QUALITY.items():
        mine = (tasks == task).to_numpy()
        if task == CLASSIFICATION or not mine.any():
            continue
        value = runs.loc[mine, quality.column].astype(float)
        value = value if quality.higher_is_better else 1.0 / value
        scores.loc[mine] = value.where(completed[mine], 0.0).fillna(0.0)
    return scores


def best_base_lr_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs (every seed) at each cell's best base LR, judged by the median score over seeds
    (`quality_scores`: the task's quality; a diverged or stalled run scores 0). A cell is one
    (study, model, training fraction, LR rule, batch size); the result carries `train_fraction`."""
    runs = with_fraction(runs)
    scored = runs.assign(score=quality_scores(runs))
    medians = scored.groupby(CELL + ["base_lr"], as_index=False)["score"].median()
    best = medians.loc[medians.groupby(CELL)["score"].idxmax(), CELL + ["base_lr"]]
    return runs.merge(best, on=CELL + ["base_lr"])


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
    """A log y axis for perplexity (plain numbers over a short range); accuracy and IoU stay linear."""
    if quality.log:
        ax.set_yscale("log")
        plain_log_axis(ax)


# --- figures --------------------------------------------------------------------------------

def figure_training_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure:
    """Train loss against epochs, one line per batch size, per (study, model) row and LR rule
    column, each batch size at its best base LR; the band spans the healthy seeds, and each
    stalled or diverged run is a dashed line of its own."""
    if is_empty(runs) or is_empty(curves):
        return no_data_figure("no training runs to draw")
    chosen = best_base_lr_runs(runs)
    chosen = chosen.assign(panel=panel_key(chosen))
    evaluated = curves.dropna(subset=["train_loss"])
    data = evaluated.merge(chosen[["run_id", "panel", "lr_rule", "batch_size", "status"]], on="run_id")
    panels, rules = list(dict.fromkeys(chosen["panel"])), ordered_rules(chosen["lr_rule"])
    colors = batch_colors(chosen["batch_size"])
    fig, axes = panel_grid(len(panels), len(rules), panel=(3.4, 2.6))
    for r, panel in enumerate(panels):
        for c, rule in enumerate(rules):
            ax = axes[r, c]
            part = data[(data["panel"] == panel) & (data["lr_rule"] == rule)]
            healthy = part[status_series(part) == "completed"]
            if len(healthy):
                # averaging a diverged seed into the band would draw a curve no run followed
                sns.lineplot(data=healthy, x="epoch", y="train_loss", hue="batch_size", palette=colors,
                             errorbar=("pi", 100), legend=False, ax=ax)
            _draw_unhealthy_curves(ax, part, colors)
            if len(part):
                ax.set_yscale("log")
                plain_log_axis(ax)
            ax.set_title(f"{panel} · {rule} rule")
            ax.set_xlabel("epoch" if r == len(panels) - 1 else "")
            ax.set_ylabel("train loss (full set)" if c == 0 else "")
    unhealthy = chosen[status_series(chosen) != "completed"]
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


def qualities_title(qualities: list[Quality]) -> str:
    """"Test accuracy", or "Test perplexity / test mean IoU" for the tasks drawn."""
    names = list(dict.fromkeys(q.name for q in qualities))
    return " / ".join(names)[:1].upper() + " / ".join(names)[1:]


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


def figure_accuracy_vs_base_lr(runs: pd.DataFrame) -> plt.Figure:
    """Masters & Luschi: final test accuracy against the base LR eta_tilde = eta / m, one line
    per batch size, per (study, model) row and LR rule column (median over seeds; a stalled or
    diverged run counts as accuracy 0)."""
    if is_empty(runs):
        return no_data_figure("no training runs to draw")
    data = runs.assign(eta_tilde=runs["lr"] / runs["batch_size"], score=run_scores(runs))
    data = data.assign(panel=panel_key(data))
    panels, rules = list(dict.fromkeys(data["panel"])), ordered_rules(data["lr_rule"])
    colors = batch_colors(data["batch_size"])
    fig, axes = panel_grid(len(panels), len(rules), panel=(3.4, 2.6))
    for r, panel in enumerate(panels):
        for c, rule in enumerate(rules):
            ax = axes[r, c]
            part = data[(data["panel"] == panel) & (data["lr_rule"] == rule)]
            for b, color in colors.items():
                medians = part[part["batch_size"] == b].groupby("eta_tilde")["score"].median()
                ax.plot(medians.index, medians.to_numpy(), color=color, marker="o", ms=4, lw=1.5)
            unhealthy = part[status_series(part) != "completed"]
            mark_unhealthy(ax, unhealthy["eta_tilde"], unhealthy["score"], status_series(unhealthy))
            ax.set_xscale("log")
            plain_log_axis(ax, "x")
            ax.set(title=f"{panel} · {rule} rule", xlabel="base LR η̃ = η / m" if r == len(panels) - 1 else "",
                   ylabel="final test accuracy" if c == 0 else "")
    handles, labels = unhealthy_handles(status_series(data), {s: ", scored 0" for s in UNHEALTHY})
    figure_legend(fig, batch_handles(colors) + handles, [f"B = {b:g}" for b in colors] + labels)
    set_title(fig, "Test accuracy against base LR, one line per batch size (median over seeds; Masters & Luschi 2018)")
    return fig


def figure_generalization_gap(runs: pd.DataFrame) -> plt.Figure:
    """Test minus train loss, and test error, against batch size at each batch size's best base LR."""
    if is_empty(runs):
        return no_data_figure("no training runs to draw")
    chosen = best_base_lr_runs(runs)
    chosen = chosen.assign(panel=panel_key(chosen), gap=chosen["final_test_loss"] - chosen["final_train_loss"],
                           test_error=1 - chosen["final_test_acc"])
    panels, rules = list(dict.fromkeys(chosen["panel"])), ordered_rules(chosen["lr_rule"])
    palette = rule_palette(rules)
    fig, axes = panel_grid(len(panels), 2, panel=(3.8, 2.6))
    for r, panel in enumerate(panels):
        part = chosen[chosen["panel"] == panel]
        quality = task_quality(part)
        # the test error of a classifier; a language model's perplexity, a segmentation's mean IoU
        second = ("test_error", "test error") if quality == QUALITY[CLASSIFICATION] else (quality.column, quality.name)
        for c, (column, label) in enumerate((("gap", "test loss − train loss"), second)):
            ax = axes[r, c]
            draw_rule_medians(ax, part, column, rules, palette)
            mark_unhealthy_runs(ax, part, column, rules, worst_edge(quality) if c else 0.03)
            batch_axis(ax, part["batch_size"])
            if c:
                quality_axis(ax, quality)
            ax.set(title=f"{panel} · {label}", ylabel=label, xlabel="batch size" if r == len(panels) - 1 else "")
    handles, labels = unhealthy_handles(status_series(chosen), {"diverged": ",\nno value: on the bottom edge"})
    figure_legend(fig, rule_handles(rules, palette) + handles, rules + labels, title="LR rule")
    set_title(fig, "Generalization gap against batch size, at each batch size's best base LR "
                   "(median over seeds; bars: range over seeds)")
    return fig
