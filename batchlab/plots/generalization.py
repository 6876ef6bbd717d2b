"""Masters & Luschi 2018's figures: final quality against batch size and base LR, each
batch size at its best base LR; and the training curves behind them."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from batchlab.plots.common import (
    UNHEALTHY, batch_axis, batch_colors, batch_handles, dodge, figure_legend, is_empty, mark_unhealthy,
    no_data_figure, ordered_rules, panel_grid, panel_key, plain_log_axis, rule_handles, rule_marker, rule_palette,
    set_title, status_series, unhealthy_handles, wrapped_grid,
)

CELL = ["study", "model", "lr_rule", "batch_size"]
UNHEALTHY_NOTES = {"stalled": "", "diverged": ",\nno accuracy: on the bottom edge"}


def run_scores(runs: pd.DataFrame) -> pd.Series:
    """Final test accuracy, with 0 for a run that did not complete: a diverged or stalled run
    is no solution, so an LR that fails for most seeds must not win."""
    return runs["final_test_acc"].where(status_series(runs) == "completed", 0.0).fillna(0.0)


def best_base_lr_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs (every seed) at each cell's best base LR, judged by the median score over seeds
    (`run_scores`: a diverged or stalled run scores 0)."""
    scored = runs.assign(score=run_scores(runs))
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


def mark_unhealthy_runs(ax: plt.Axes, data: pd.DataFrame, y: str, rules: list[str]) -> None:
    """x marks at the stalled and diverged runs among `data`, dodged like their rule's line."""
    for i, rule in enumerate(rules):
        part = data[(data["lr_rule"] == rule) & (status_series(data) != "completed")]
        if len(part):
            mark_unhealthy(ax, dodge(part["batch_size"], i, len(rules)), part[y], status_series(part))


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


def figure_accuracy_vs_batch(runs: pd.DataFrame) -> plt.Figure:
    """Final test accuracy against batch size, one line per LR rule, each batch size at its best base LR."""
    if is_empty(runs):
        return no_data_figure("no training runs to draw")
    chosen = best_base_lr_runs(runs)
    chosen = chosen.assign(panel=panel_key(chosen))
    panels, rules = list(dict.fromkeys(chosen["panel"])), ordered_rules(chosen["lr_rule"])
    palette = rule_palette(rules)
    fig, axes = wrapped_grid(len(panels), panel=(3.8, 2.9))
    for ax, panel in zip(axes, panels):
        part = chosen[chosen["panel"] == panel]
        draw_rule_medians(ax, part, "final_test_acc", rules, palette)
        mark_unhealthy_runs(ax, part, "final_test_acc", rules)
        batch_axis(ax, part["batch_size"])
        ax.set(title=panel, ylabel="final test accuracy", xlabel="batch size")
    handles, labels = unhealthy_handles(status_series(chosen), UNHEALTHY_NOTES)
    figure_legend(fig, rule_handles(rules, palette) + handles, rules + labels, title="LR rule")
    set_title(fig, "Test accuracy against batch size, each at its best base LR "
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
    quantities = {"gap": "test loss − train loss", "test_error": "test error"}
    panels, rules = list(dict.fromkeys(chosen["panel"])), ordered_rules(chosen["lr_rule"])
    palette = rule_palette(rules)
    fig, axes = panel_grid(len(panels), len(quantities), panel=(3.8, 2.6))
    for r, panel in enumerate(panels):
        part = chosen[chosen["panel"] == panel]
        for c, (column, label) in enumerate(quantities.items()):
            ax = axes[r, c]
            draw_rule_medians(ax, part, column, rules, palette)
            mark_unhealthy_runs(ax, part, column, rules)
            batch_axis(ax, part["batch_size"])
            ax.set(title=f"{panel} · {label}", ylabel=label, xlabel="batch size" if r == len(panels) - 1 else "")
    handles, labels = unhealthy_handles(status_series(chosen), {"diverged": ",\nno value: on the bottom edge"})
    figure_legend(fig, rule_handles(rules, palette) + handles, rules + labels, title="LR rule")
    set_title(fig, "Generalization gap against batch size, at each batch size's best base LR "
                   "(median over seeds; bars: range over seeds)")
    return fig
