"""Golmant et al. 2018 / Shallue et al. 2018 / McCandlish et al. 2018's figures: steps to
target, speed-up and best LR against batch size; the gradient noise scales B_simple and B_noise
along training, against the train loss, beside the measured critical batch size and the train
loss at which the noise scales predict it; and the measured critical batch size beside those
predictions (batchlab.noise_prediction), one row per model."""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from batchlab.noise_prediction import MEASURES
from batchlab.plots.common import (
    LEGEND_HEIGHT, NOTE_SIZE, batch_axis, batch_colors, drawn_gids, figure_legend, fraction_label, is_empty,
    label_outer, no_data_figure, note_under_title, ordered_rules, panel_key, panel_note, plain_log_axis,
    present_cells, rule_handles, rule_marker, rule_palette, set_title, status_series, wrapped_grid,
)
from batchlab.speedup import (
    FIT_STATUS_TEXT, TARGET_ABOVE_INITIAL, TARGET_FIXED, TARGET_METRICS, target_text, train_fractions,
)

BEST_RULE = "best"
NO_TARGETS = "no speed-up targets configured for this study"
PREDICTION_COLOR = "tab:purple"  # B_simple's prediction of B_crit
B_NOISE_COLOR = "#c51b7d"  # B_noise's: a magenta, apart from the purple and from the batch sizes' turbo colours
# rule 1's `not_reached_reason` of batchlab.speedup (the refusal aside), as a reader's phrase
NOT_REACHED_TEXT = {"budget": "the runs used up their step budget", "diverged": "the runs diverged",
                    "stalled": "the runs stalled", "mixed": "the runs stopped for mixed reasons"}


# A target is (metric, rule, value): the configured value for a fixed target, None for a rule (rule 7 of
# batchlab.speedup), whose value each model resolves for itself.
Target = tuple[str, str, "float | None"]


def target_keys(table: pd.DataFrame) -> list[Target]:
    """The target of each row of a speed-up or critical-batch table."""
    return [(m, r, float(v) if r == TARGET_FIXED else None)
            for m, r, v in zip(table["target_metric"], table["target_rule"], table["target_value"])]


def target_label(metric: str, rule: str, value: float | None) -> str:
    """A target's name, the same for every model: "train loss ≤ 0.5",
    "train loss ≤ lower quartile of the largest batch"."""
    return target_text(metric, rule, value)


def resolved_label(row: pd.Series) -> str:
    """A row's target with the value its model resolved: "train loss ≤ 0.123 (lower quartile of ..., per model)"."""
    return target_text(row["target_metric"], row["target_rule"], float(row["target_value"]),
                       row.get("target_batch_size"), bool(row.get("target_fallback", False)))


def panel_target_title(label: str) -> str:
    """A resolved target in a panel's title: the rule's explanation on lines of its own, without "per model"
    (a panel is one model), so that it fits the panel's width."""
    head, sep, rule = label.partition(" (")
    return head + "\n" + textwrap.fill("(" + rule.replace(", per model)", ")"), 40) if sep else label


MAX_TITLE_LINE = 36  # characters of a title line that fit a target panel's width


def panel_title(panel: str, target: str) -> str:
    """"cnn · train loss ≤ 0.5", or the panel and its target on lines of their own where one line would not fit."""
    joined = f"{panel} · {target}"
    return joined if len(joined.split("\n")[0]) <= MAX_TITLE_LINE else f"{panel}\n{target}"


def target_order(table: pd.DataFrame) -> list[Target]:
    """The targets of a table: metrics in TARGET_METRICS order, within one as configured."""
    targets = list(dict.fromkeys(target_keys(table)))
    rank = {m: i for i, m in enumerate(TARGET_METRICS)}
    return sorted(targets, key=lambda t: rank.get(t[0], len(rank)))  # stable: keeps the configured order


def first_target(critical: pd.DataFrame, study: str) -> Target | None:
    """The study's headline target: the first of TARGET_METRICS present, its first configured target."""
    if is_empty(critical):
        return None
    rows = critical[critical["study"] == study]
    targets = target_order(rows)
    return targets[0] if targets else None


def target_rows(table: pd.DataFrame, target: Target) -> pd.Series:
    """Which rows of a speed-up or critical-batch table belong to `target` (a boolean mask)."""
    metric, rule, value = target
    mask = (table["target_metric"] == metric) & (table["target_rule"] == rule)
    if rule == TARGET_FIXED:
        mask &= np.isclose(table["target_value"].astype(float), value)
    return mask


def speedup_frame(speedup: pd.DataFrame) -> pd.DataFrame:
    """The speed-up table with a `target` name (`target_label`), the `target_title` of its model (the resolved
    value), and a `panel` name per row (all rows, reached or not)."""
    data = speedup.assign(target=[target_label(*t) for t in target_keys(speedup)],
                          target_title=[resolved_label(row) for _, row in speedup.iterrows()])
    return data.assign(panel=panel_key(data))


def reached_rows(data: pd.DataFrame) -> pd.DataFrame:
    # `eq(True)`, not boolean indexing: an empty table read back from parquet has an object column,
    # and indexing a frame with an empty object Series selects columns instead of rows.
    return data.loc[data["reached"].eq(True).to_numpy()]


def number(row: pd.Series, key: str) -> float:
    """A float from a table row; NaN where the column is missing or holds None (object columns)."""
    value = row.get(key)
    return np.nan if value is None or pd.isna(value) else float(value)


def _fmt(b: float) -> str:
    return f"{b:.0f}" if b >= 10 else f"{b:.2g}"


def describe_b_crit(fit: pd.Series | None) -> dict | None:
    """What a critical-batch fit says, for drawing: kind 'ok' (value with interval lo..hi),
    'above' or 'below' (only a bound: B_crit > value or < value), or 'none' (no number; text says why)."""
    if fit is None:
        return None
    status = fit.get("fit_status")
    b_crit = number(fit, "b_crit")
    if status in ("ok", None) and np.isfinite(b_crit):
        lo, hi = number(fit, "ci_low"), number(fit, "ci_high")
        interval = f" [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else ""
        return dict(kind="ok", value=b_crit, lo=lo, hi=hi, text=f"B_crit ≈ {_fmt(b_crit)}{interval}")
    bound = fit.get("b_crit_bound")
    if isinstance(bound, str) and bound.strip()[:1] in ("<", ">"):
        op, value = bound.strip()[0], float(bound.strip()[1:])
        return dict(kind="above" if op == ">" else "below", value=value, text=f"B_crit {op} {_fmt(value)}")
    return dict(kind="none", text=f"no B_crit: {fit_reason(fit)}")


def not_reached_text(row: pd.Series) -> str:
    """Why the runs of a speed-up or critical-batch row did not reach its target (`not_reached_reason`), in words;
    "" where none is given. A refused target says so, with its value against the initial one."""
    reason = row.get("not_reached_reason")
    if reason == TARGET_ABOVE_INITIAL:
        target, initial = number(row, "target_value"), number(row, "target_initial_value")
        values = f" (target {target:.3g} ≥ initial {initial:.3g})" if np.isfinite(initial) else ""
        return FIT_STATUS_TEXT[reason] + values
    return NOT_REACHED_TEXT.get(reason, reason) if isinstance(reason, str) and reason else ""


def fit_reason(fit: pd.Series) -> str:
    """Why a fit gives no number: its status (FIT_STATUS_TEXT) and why the runs did not reach the target."""
    status, why = fit.get("fit_status"), not_reached_text(fit)
    if status == TARGET_ABOVE_INITIAL and why:
        return why
    text = FIT_STATUS_TEXT.get(status, str(status).replace("_", " "))
    return f"{text} ({why})" if why else text


def fit_row(critical: pd.DataFrame, study: str, model: str, target: Target | None,
            train_fraction: float = 1.0) -> pd.Series | None:
    """The critical-batch fit of the tuned (`best`) curve for one study, model, training fraction and target."""
    if is_empty(critical) or target is None:
        return None
    rows = critical[(critical["study"] == study) & (critical["model"] == model) & (critical["lr_rule"] == BEST_RULE)
                    & np.isclose(train_fractions(critical), train_fraction) & target_rows(critical, target)]
    return rows.iloc[0] if len(rows) else None


def _axes_fraction(ax: plt.Axes, x: float) -> float:
    """Where data x falls across a log x axis, 0 (left) to 1 (right)."""
    lo, hi = ax.get_xlim()
    return (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))


def _bound_arrow(ax: plt.Axes, start: float, pointing: str, y: float) -> None:
    """An arrow from the bound to the edge of the grid: B_crit lies somewhere that way."""
    frac = min(max(_axes_fraction(ax, start), 0.0), 1.0)
    if pointing == "right":
        frac, end = min(frac, 0.8), 0.99
    else:
        frac, end = max(frac, 0.2), 0.01
    ax.annotate("", xy=(end, y), xycoords="axes fraction", xytext=(frac, y), textcoords="axes fraction",
                arrowprops=dict(arrowstyle="-|>", color="k", lw=1.4, shrinkA=0, shrinkB=0), gid="b_crit_bound")
    ax.plot([frac], [y], marker="|", ms=10, mew=1.6, color="k", transform=ax.transAxes, gid="b_crit_bound")


def annotate_b_crit_on_batch_axis(ax: plt.Axes, info: dict | None) -> None:
    """B_crit on a batch-size axis (xlim already set): the line and its interval band only for an
    accepted fit inside the grid; an arrow to the grid's edge for a bound; otherwise a note under the
    title, where it covers no data. Every other label sits in a corner of the axes, so none is clipped."""
    if info is None:
        return
    xmin, xmax = ax.get_xlim()
    kind, value = info["kind"], info.get("value", np.nan)
    # falling curves leave the upper right and lower left corners empty
    if kind == "ok" and xmin <= value <= xmax:
        ax.axvline(value, color="k", lw=1, gid="b_crit_line")
        if np.isfinite(info["lo"]) and np.isfinite(info["hi"]):
            ax.axvspan(max(info["lo"], xmin), min(info["hi"], xmax), color="k", alpha=0.08, gid="b_crit_band")
        panel_note(ax, info["text"], "upper right")
    elif kind == "above" or (kind == "ok" and value > xmax):
        _bound_arrow(ax, min(max(value, xmin), xmax), "right", 0.6)  # below a two-line note
        panel_note(ax, info["text"] + (" (beyond the grid)" if kind == "ok" else ""), "upper right")
    elif kind == "below" or kind == "ok":
        _bound_arrow(ax, min(max(value, xmin), xmax), "left", 0.26)
        panel_note(ax, info["text"] + (" (below the grid)" if kind == "ok" else ""), "lower left")
    else:
        note_under_title(ax, info["text"])


# --- steps to target and speed-up ----------------------------------------------------------------

MAX_TARGET_COLS = 5


def target_grid(data: pd.DataFrame) -> tuple[plt.Figure, list[tuple]]:
    """A figure with one panel per (study, model, fraction) and target it has rows for: the targets of a
    (study, model, fraction) side by side, up to MAX_TARGET_COLS in a row (wrapped), so that it grows wide
    rather than tall; and per panel (axes, panel, target name)."""
    targets = [target_label(*t) for t in target_order(data)]
    cells = present_cells(data, ("panel", "target"), dict.fromkeys(data["panel"]), targets)
    group = data.groupby("panel")["target"].nunique().max()
    fig, axes = wrapped_grid(len(cells), max_cols=MAX_TARGET_COLS, panel=(2.85, 2.3), legend="bottom", group=group)
    return fig, [(ax, panel, target) for ax, (panel, target) in zip(axes, cells)]


def _empty_panel(ax: plt.Axes, text: str, why: str = "") -> None:
    ax.set_yticks([])
    panel_note(ax, f"{text}\n{why}" if why else text, "upper left")


def _target_panels(data: pd.DataFrame, reached: pd.DataFrame, ylabel: str) -> tuple[plt.Figure, list]:
    """The (model, target) grid with titles and batch axes set: the figure and, per panel,
    (axes, its rows, its reached rows, its study's batch sizes)."""
    fig, cells = target_grid(data)
    panels = []
    for ax, panel, target in cells:
        rows = data[(data["panel"] == panel) & (data["target"] == target)]
        part = reached[(reached["panel"] == panel) & (reached["target"] == target)]
        batch_sizes = np.array(sorted(data.loc[data["panel"] == panel, "batch_size"].astype(float).unique()))
        batch_axis(ax, batch_sizes)  # each study its own grid
        ax.set_title(panel_title(panel, panel_target_title(rows["target_title"].iloc[0])))
        panels.append((ax, rows, part, batch_sizes))
    label_outer([ax for ax, *_ in cells], "batch size", ylabel)
    return fig, panels


def _b_crit_legend(drawn: set[str]) -> tuple[list, list[str]]:
    """Legend entries for what `annotate_b_crit_on_batch_axis` drew, by gid."""
    entries = [("b_crit_line", Line2D([], [], color="k", lw=1), "fitted B_crit (tuned curve)"),
               ("b_crit_band", Patch(color="k", alpha=0.08), "its 95% interval"),
               ("b_crit_bound", Line2D([], [], color="k", marker="$→$", ms=12, ls="none"),
                "B_crit lies that way (a bound)")]
    chosen = [(handle, label) for gid, handle, label in entries if gid in drawn]
    return [h for h, _ in chosen], [label for _, label in chosen]


def figure_steps_to_target(speedup: pd.DataFrame, critical: pd.DataFrame) -> plt.Figure:
    """Steps to target against batch size (log-log), one line per LR rule, the perfect-scaling
    line from the smallest batch of the tuned (`best`) curve, and what the fit says of B_crit."""
    if is_empty(speedup):
        return no_data_figure(NO_TARGETS)
    data = speedup_frame(speedup)
    reached = reached_rows(data)
    if reached.empty:
        return no_data_figure("no batch size reached any target")
    rules = ordered_rules(reached["lr_rule"])
    palette = rule_palette(rules)
    fig, panels = _target_panels(data, reached, "steps to target")
    for ax, rows, part, batch_sizes in panels:
        first = rows.iloc[0]
        fit = fit_row(critical, first["study"], first["model"], target_keys(rows.iloc[:1])[0],
                      float(first["train_fraction"]))
        best = part[part["lr_rule"] == BEST_RULE].sort_values("batch_size")
        if best.empty:  # why, but not the fit's "fewer than 3 reached": that goes without saying
            _empty_panel(ax, "no batch size reached this target", not_reached_text(fit) if fit is not None else "")
            continue
        for rule in rules:
            line = part[part["lr_rule"] == rule].sort_values("batch_size")
            ax.plot(line["batch_size"], line["steps_to_target"], color=palette[rule], marker=rule_marker(rule), ms=4)
        b0, s0 = best["batch_size"].iloc[0], best["steps_to_target"].iloc[0]
        ax.plot(batch_sizes, s0 * b0 / batch_sizes, color="0.55", ls=":", lw=1.2)
        ax.set_yscale("log")
        plain_log_axis(ax)
        annotate_b_crit_on_batch_axis(ax, describe_b_crit(fit))
    b_crit_handles, b_crit_labels = _b_crit_legend(drawn_gids(fig))
    figure_legend(fig, rule_handles(rules, palette) + [Line2D([], [], color="0.55", ls=":")] + b_crit_handles,
                  rules + ["perfect scaling"] + b_crit_labels, where="bottom")
    set_title(fig, "Steps to target (minimum over the LR grid) against batch size; dotted: perfect scaling. "
                   "B_crit of the tuned curve: a line where the fit gives a number, an arrow where it gives only a bound")
    return fig


def figure_speedup(speedup: pd.DataFrame) -> plt.Figure:
    """Speed-up over the smallest batch against batch size (log-log), with its bootstrap interval."""
    if is_empty(speedup):
        return no_data_figure(NO_TARGETS)
    data = speedup_frame(speedup)
    reached = reached_rows(data).dropna(subset=["speedup"])
    if reached.empty:
        return no_data_figure("no speed-up: the smallest batch never reached a target")
    rules = ordered_rules(reached["lr_rule"])
    palette = rule_palette(rules)
    fig, panels = _target_panels(data, reached, "speed-up over\nthe smallest batch")
    for ax, rows, part, batch_sizes in panels:
        if part.empty:
            smallest = rows[rows["lr_rule"] == BEST_RULE].sort_values("batch_size")
            why = not_reached_text(smallest.iloc[0]) if len(smallest) else ""
            _empty_panel(ax, "no speed-up for this target: the smallest batch did not reach it", why)
            continue
        for rule in rules:
            line = part[part["lr_rule"] == rule].sort_values("batch_size")
            ax.plot(line["batch_size"], line["speedup"], marker=rule_marker(rule), ms=4, color=palette[rule])
            ax.fill_between(line["batch_size"], line["speedup_ci_low"], line["speedup_ci_high"], color=palette[rule],
                            alpha=0.15, lw=0)
        b0 = part["batch_size"].min()
        ax.plot(batch_sizes, batch_sizes / b0, color="0.55", ls=":", lw=1.2)
        ax.set_yscale("log")
        plain_log_axis(ax)
    handles = rule_handles(rules, palette) + [Line2D([], [], color="0.55", ls=":")]
    figure_legend(fig, handles, rules + ["perfect scaling"], where="bottom")
    set_title(fig, "Speed-up over the smallest batch against batch size (bands: 95% bootstrap over seeds; "
                   "dotted: perfect scaling)")
    return fig


# --- best LR --------------------------------------------------------------------------------------

GRID_KEYS = ["study", "model", "train_fraction", "batch_size"]


def lrs_tried(runs: pd.DataFrame) -> pd.DataFrame:
    """The smallest and largest LR tried (lr_min, lr_max) at each (study, model, training fraction, batch size),
    over every rule and base LR."""
    return runs.assign(train_fraction=train_fractions(runs)).groupby(GRID_KEYS)["lr"].agg(lr_min="min", lr_max="max")


def lr_grid_edges(best: pd.DataFrame, runs: pd.DataFrame) -> pd.Series:
    """For each best-LR row: "largest" or "smallest" when its LR is at that end of the LRs tried
    at its (study, model, training fraction, batch size) over every rule and base LR, else "":
    there the true optimum may lie beyond the grid."""
    ends = best.assign(train_fraction=train_fractions(best))[[*GRID_KEYS, "best_lr"]].join(lrs_tried(runs), on=GRID_KEYS)
    lr = ends["best_lr"].astype(float)
    largest = np.isclose(lr, ends["lr_max"], rtol=1e-6) | (lr > ends["lr_max"])
    smallest = np.isclose(lr, ends["lr_min"], rtol=1e-6) | (lr < ends["lr_min"])
    return pd.Series(np.where(largest, "largest", np.where(smallest, "smallest", "")), index=best.index)


def best_lr_edges(best: pd.DataFrame, runs: pd.DataFrame) -> pd.Series:
    """Where each best LR sits on its grid, "" inside it: the speed-up table's `best_lr_edge` ("low", "high",
    or "only" where one LR was tried) where it has the column, else `lr_grid_edges` from the runs."""
    if "best_lr_edge" in best:
        return best["best_lr_edge"].astype(object).where(best["best_lr_edge"].notna(), "").astype(str)
    return lr_grid_edges(best, runs)


def figure_best_lr(speedup: pd.DataFrame, runs: pd.DataFrame) -> plt.Figure:
    """The LR that reached each target fastest, tuned over every rule and LR, against batch size,
    the range of LRs tried, and linear and square-root scaling drawn through the smallest batch;
    an open marker where the best LR is at an edge of its LR grid (`best_lr_edges`)."""
    if is_empty(speedup):
        return no_data_figure(NO_TARGETS)
    data = speedup_frame(speedup)
    best = reached_rows(data)
    best = best[best["lr_rule"] == BEST_RULE]
    if best.empty:
        return no_data_figure("no batch size reached any target")
    best = best.assign(edge=best_lr_edges(best, runs), train_fraction=train_fractions(best))
    targets = [target_label(*t) for t in target_order(best)]
    colors = dict(zip(targets, plt.get_cmap("tab10").colors))
    # the LRs tried, named by the speed-up table's panels (a runs table may hold more studies, and so other names)
    tried = lrs_tried(runs).reset_index().merge(best[[*GRID_KEYS[:-1], "panel"]].drop_duplicates(), on=GRID_KEYS[:-1])
    panels = list(dict.fromkeys(best["panel"]))
    fig, axes = wrapped_grid(len(panels), panel=(3.8, 2.9))
    for ax, panel in zip(axes, panels):
        grid = tried[tried["panel"] == panel].sort_values("batch_size")
        ax.fill_between(grid["batch_size"], grid["lr_min"], grid["lr_max"], color="0.85", lw=0, zorder=0,
                        gid="lrs_tried")
        part = best[best["panel"] == panel].sort_values("batch_size")
        for target in targets:
            _draw_best_lr_line(ax, part[part["target"] == target], colors[target])
        first = part[part["target"] == targets[0]] if (part["target"] == targets[0]).any() else part
        b0, lr0 = first["batch_size"].iloc[0], first["best_lr"].iloc[0]
        bs = np.array(sorted(part["batch_size"].astype(float).unique()))
        ax.plot(bs, lr0 * bs / b0, color="0.4", ls="--", lw=0.9)
        ax.plot(bs, lr0 * np.sqrt(bs / b0), color="0.4", ls=":", lw=0.9)
        ax.set_yscale("log")
        plain_log_axis(ax)
        batch_axis(ax, part["batch_size"])
        ax.set(title=panel, xlabel="batch size", ylabel="best learning rate")
    handles = [Line2D([], [], color=c, marker="o") for c in colors.values()]
    labels = list(targets)
    if (best["edge"] != "").any():
        handles.append(Line2D([], [], color="0.3", marker="o", mfc="white", ls="none"))
        edge = "an edge of its rule's base LRs" if "best_lr_edge" in best else "the edge of the LR grid"
        only = "\n(or the only one tried)" if (best["edge"] == "only").any() else ""
        labels.append(f"at {edge}{only}:\nthe optimum may lie beyond")
    handles += [Patch(color="0.85"), Line2D([], [], color="0.4", ls="--"), Line2D([], [], color="0.4", ls=":")]
    labels += ["range of LRs tried", "linear scaling", "square-root scaling"]
    figure_legend(fig, handles, labels, title="target")
    set_title(fig, "Best LR per batch size, tuned over every rule and base LR (open: at an edge of the LR grid)")
    return fig


def _draw_best_lr_line(ax: plt.Axes, line: pd.DataFrame, color) -> None:
    if line.empty:
        return
    ax.plot(line["batch_size"], line["best_lr"], color=color, lw=1.5)
    inner, edge = line[line["edge"] == ""], line[line["edge"] != ""]
    ax.plot(inner["batch_size"], inner["best_lr"], ls="none", marker="o", ms=5.5, color=color)
    ax.plot(edge["batch_size"], edge["best_lr"], ls="none", marker="o", ms=7, mfc="white", mec=color, mew=1.6,
            gid="lr_grid_edge")


# --- gradient noise scale ----------------------------------------------------------------------------

# batchlab.noise_prediction's two measures, by column prefix: how a reader reads them, and how they are drawn
# (a run's line along training; the prediction read at the target, at a panel's right edge or in noise_vs_bcrit)
MEASURE_NAMES = {"b_simple": "B_simple", "b_noise": "B_noise"}
MEASURE_FORMULAS = {"b_simple": "B_simple = tr(Σ) / |G|²", "b_noise": "B_noise = tr(HΣ) / GᵀHG"}
MEASURE_STYLES = {"b_simple": "-", "b_noise": "--"}
PREDICTION_COLORS = {"b_simple": PREDICTION_COLOR, "b_noise": B_NOISE_COLOR}
PREDICTION_MARKERS = {"b_simple": "D", "b_noise": "s"}
PREDICTION_X = {"b_simple": 0.9, "b_noise": 0.96}  # axes fraction: side by side at a panel's right edge
BOUND_X = 0.82  # axes fraction of a bound on B_crit, beside the predictions, clear of the note in the upper left
TARGET_LINE = dict(color="0.35", ls=":", lw=1.5)


def noise_scale_runs(runs: pd.DataFrame, sharpness: pd.DataFrame) -> pd.DataFrame:
    """McCandlish's noise scales of each healthy run measured along training (more than one checkpoint):
    B_simple (sharpness.parquet's `noise_scale` rows) and, where measured, B_noise (its `b_noise` rows), as
    `measure` (batchlab.noise_prediction's column prefix), at steps > 0 where the value came out finite and
    positive and the checkpoint's train loss is known (both drawn on log axes)."""
    columns = ["run_id", "step", "train_loss", "value", "ci_low", "ci_high", "measure", "study", "model",
               "train_fraction", "lr_rule", "batch_size", "panel"]
    if is_empty(runs) or is_empty(sharpness):
        return pd.DataFrame(columns=columns)
    measure_of = {metric: prefix for prefix, metric in MEASURES.items()}
    rows = sharpness[sharpness["metric"].isin(measure_of)]
    rows = rows.assign(measure=rows["metric"].map(measure_of), ci_low=rows.get("ci_low", np.nan),
                       ci_high=rows.get("ci_high", np.nan))
    rows = rows[rows.groupby(["run_id", "measure"])["step"].transform("nunique") > 1]
    runs = runs.assign(train_fraction=train_fractions(runs))
    data = rows.merge(runs[["run_id", "study", "model", "train_fraction", "lr_rule", "base_lr", "batch_size", "seed",
                            "status"]], on="run_id")
    value, loss = data["value"].astype(float), data["train_loss"].astype(float)
    data = data[(status_series(data) == "completed") & (data["step"] > 0) & np.isfinite(value) & (value > 0)
                & np.isfinite(loss) & (loss > 0)]
    return data.assign(panel=panel_key(data)).sort_values(["run_id", "measure", "step"])


def _draw_noise_run(ax: plt.Axes, run: pd.DataFrame, color, marker: str, floor: float) -> None:
    """One run's measure against its train loss, in training order, with its interval as a band."""
    measure = run["measure"].iloc[0]
    loss = run["train_loss"].astype(float).to_numpy()
    ax.plot(loss, run["value"].astype(float), color=color, ls=MEASURE_STYLES[measure], marker=marker, ms=3, lw=1.3,
            gid=f"{measure}:{run['run_id'].iloc[0]}")
    lo, hi = run["ci_low"].astype(float).to_numpy(), run["ci_high"].astype(float).to_numpy()
    has = np.isfinite(lo) & np.isfinite(hi)
    if has.any():
        # an unbiased estimate's lower end can be <= 0: on a log axis it runs to the floor
        ax.fill_between(loss[has], np.maximum(lo[has], floor), hi[has], color=color,
                        alpha=0.15 if measure == "b_simple" else 0.08, lw=0)


def annotate_b_crit_on_noise_axis(ax: plt.Axes, info: dict | None, target: str) -> None:
    """The measured B_crit as a horizontal line and band (accepted fit), a bound marker, or a note."""
    if info is None:
        panel_note(ax, f"no B_crit fitted for {target}", "upper left", width=36)
        return
    if info["kind"] == "ok":
        ax.axhline(info["value"], color="k", ls="--", lw=1.2, gid="b_crit_line")
        if np.isfinite(info["lo"]) and np.isfinite(info["hi"]):
            ax.axhspan(info["lo"], info["hi"], color="k", alpha=0.08, gid="b_crit_band")
    elif info["kind"] in ("above", "below"):
        ax.plot([BOUND_X], [info["value"]], marker="^" if info["kind"] == "above" else "v", ms=9, color="k",
                transform=ax.get_yaxis_transform(), ls="none", gid="b_crit_bound")
    panel_note(ax, f"{info['text']}\n(tuned curve, {target})", "upper left", width=36)


def _annotation_values(info: dict | None, prediction: pd.Series | None) -> list[float]:
    """The values that a panel's annotations draw: B_crit (its interval, or its bound) and both predictions with
    their intervals (an infinite end is left to `_y_range`, which keeps finite values only)."""
    values = []
    if info is not None and info["kind"] != "none":
        values += [info["value"]] + ([info["lo"], info["hi"]] if info["kind"] == "ok" else [])
    if prediction is not None:
        values += [number(prediction, prefix + end) for prefix in MEASURES for end in ("", "_ci_low", "_ci_high")]
    return values


def _prediction_interval(lo: float, hi: float) -> bool:
    """Whether a prediction has an interval to draw: NaN ends mean none (batchlab.noise_prediction's rule 4);
    the upper end may be infinite."""
    return np.isfinite(lo) and not np.isnan(hi) and hi > lo


def _draw_prediction(ax: plt.Axes, fit: pd.Series | None) -> set[str]:
    """The noise scale's predictions of B_crit read where the runs reached the target (batchlab.noise_prediction):
    B_simple and B_noise side by side at the right edge of the panel (ylim already set), each with its 95% interval
    where it has one; an infinite upper end runs to the top of the axes, a lower end below the axes from its
    bottom. The measures drawn (MEASURES' prefixes)."""
    drawn = set()
    if fit is None:
        return drawn
    trans, (bottom, top) = ax.get_yaxis_transform(), ax.get_ylim()
    for prefix in MEASURES:
        value = number(fit, prefix)
        if not (np.isfinite(value) and value > 0):
            continue
        x, color = PREDICTION_X[prefix], PREDICTION_COLORS[prefix]
        lo, hi = number(fit, f"{prefix}_ci_low"), number(fit, f"{prefix}_ci_high")
        if _prediction_interval(lo, hi):
            ax.plot([x, x], [max(lo, bottom), min(hi, top)], color=color, lw=2, transform=trans,
                    solid_capstyle="butt", gid=f"predicted_interval:{prefix}")
        ax.plot([x], [value], marker=PREDICTION_MARKERS[prefix], ms=7, mec="white", mew=0.6, color=color,
                transform=trans, ls="none", zorder=5, gid=f"predicted:{prefix}")
        drawn.add(prefix)
    return drawn


def read_level(fit: pd.Series | None) -> tuple[float, str] | None:
    """The train loss at which the predictions were read, and what it is: the target itself for a train-loss
    target ("target_train_loss"), else the median train loss of the states read ("read_train_loss",
    `b_noise_train_loss`); None where there is none."""
    if fit is None:
        return None
    if fit.get("target_metric") == "train_loss":
        level, kind = number(fit, "target_value"), "target_train_loss"
    else:
        level, kind = number(fit, "b_noise_train_loss"), "read_train_loss"
    return (level, kind) if np.isfinite(level) and level > 0 else None


def _loss_range(part: pd.DataFrame, level: tuple[float, str] | None) -> tuple[float, float]:
    """Log x limits, largest train loss first (training runs left to right), that hold the runs and the level read."""
    losses = part["train_loss"].astype(float).to_numpy()
    if level is not None:
        losses = np.append(losses, level[0])
    return losses.max() * 1.15, losses.min() / 1.15


def figure_noise_scale(runs: pd.DataFrame, sharpness: pd.DataFrame, critical: pd.DataFrame) -> plt.Figure:
    """McCandlish's noise scales along training against the train loss (log-log, the loss axis inverted so that
    training runs left to right): B_simple (solid) and, where measured, B_noise (dashed), one line each per healthy
    run measured along training; beside them the measured B_crit of the tuned curve for the first target, the
    train loss at which its predictions were read (dotted), and the predictions themselves at the right edge."""
    data = noise_scale_runs(runs, sharpness)
    if data.empty:
        return no_data_figure("no noise scale was measured along training on a healthy run")
    colors = batch_colors(data["batch_size"])
    rules = ordered_rules(data["lr_rule"])
    markers = {rule: rule_marker(rule) if len(rules) > 1 else "o" for rule in rules}
    panels = [p for p in dict.fromkeys(panel_key(runs)) if p in set(data["panel"])]  # the runs table's order
    fig, axes = wrapped_grid(len(panels), panel=(3.8, 2.9))
    drawn = set()
    for ax, panel in zip(axes, panels):
        part = data[data["panel"] == panel]
        study, model, fraction = part["study"].iloc[0], part["model"].iloc[0], float(part["train_fraction"].iloc[0])
        target = first_target(critical, study)
        fit = fit_row(critical, study, model, target, fraction)
        info, level = describe_b_crit(fit), read_level(fit)
        lo, hi = _y_range(part, _annotation_values(info, fit))
        for _, run in part.groupby(["run_id", "measure"], sort=False):
            _draw_noise_run(ax, run, colors[run["batch_size"].iloc[0]], markers[run["lr_rule"].iloc[0]], lo)
        measured = [m for m in MEASURES if (part["measure"] == m).any()]
        drawn |= {f"measure:{m}" for m in measured}
        ax.set(xscale="log", yscale="log", xlim=_loss_range(part, level), ylim=(lo, hi), title=panel,
               xlabel="train loss", ylabel=", ".join(MEASURE_NAMES[m] for m in measured))
        plain_log_axis(ax)
        plain_log_axis(ax, "x")
        if level is not None:
            ax.axvline(level[0], **TARGET_LINE, zorder=1, gid=level[1])
            drawn.add(level[1])
        if target is None:
            panel_note(ax, NO_TARGETS, "upper left")
        else:
            annotate_b_crit_on_noise_axis(ax, info, resolved_label(fit) if fit is not None else target_label(*target))
            drawn |= {info["kind"] if info else "none"} | {f"predicted:{m}" for m in _draw_prediction(ax, fit)}
    figure_legend(fig, *_noise_legend(colors, rules if len(rules) > 1 else [], markers, drawn))
    set_title(fig, "Gradient noise scales along training against the train loss: B_simple (solid) and B_noise "
                   "(dashed; bands: 95% intervals), beside the critical batch size measured for the first target, "
                   "the train loss where the noise scales predict it (dotted) and their predictions read there")
    _fit_legend(fig)
    return fig


def _fit_legend(fig: plt.Figure) -> None:
    """Make the figure tall enough for its legend on the right: a row of panels is shorter than a long legend,
    which would otherwise run into the figure's title."""
    if not fig.legends:
        return
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    legend, title = (a.get_window_extent(renderer).height / fig.dpi for a in (fig.legends[0], fig._suptitle))
    fig.set_figheight(max(fig.get_figheight(), legend + 2 * title + 0.3))


def _noise_legend(colors: dict, rules: list[str], markers: dict, drawn: set[str]) -> tuple[list, list[str]]:
    """Legend entries for the batch sizes, the measures drawn along training, the rules (when several) and the
    annotations drawn."""
    handles = [Line2D([], [], color=c, lw=2) for c in colors.values()]
    labels = [f"B = {b:g}" for b in colors]
    for prefix in MEASURES:
        if f"measure:{prefix}" in drawn:
            handles.append(Line2D([], [], color="0.3", ls=MEASURE_STYLES[prefix]))
            labels.append(MEASURE_FORMULAS[prefix])
    handles += [Line2D([], [], color="0.3", marker=markers[r], ls="none") for r in rules]
    labels += [f"{r} rule" for r in rules]
    if "ok" in drawn:
        handles += [Line2D([], [], color="k", ls="--"), Patch(color="k", alpha=0.08)]
        labels += ["measured B_crit\n(tuned curve)", "its 95% interval"]
    if drawn & {"above", "below"}:
        handles.append(Line2D([], [], color="k", marker="^", ls="none"))
        labels.append("a bound on B_crit\n(▲: above, ▼: below)")
    if "target_train_loss" in drawn:
        handles.append(Line2D([], [], **TARGET_LINE))
        labels.append("the target's train loss\n(where B_crit is predicted)")
    if "read_train_loss" in drawn:
        handles.append(Line2D([], [], **TARGET_LINE))
        labels.append("train loss where the runs\nreached the target (median)")
    for prefix in MEASURES:
        if f"predicted:{prefix}" in drawn:
            handles.append(Line2D([], [], color=PREDICTION_COLORS[prefix], marker=PREDICTION_MARKERS[prefix],
                                  ls="none"))
            labels.append(f"{MEASURE_NAMES[prefix]} at the target\n(predicted B_crit, 95%)")
    return handles, labels


def _y_range(part: pd.DataFrame, extra: list[float]) -> tuple[float, float]:
    """Log y limits that hold the runs' values and intervals and every annotation."""
    values = np.concatenate([part["value"].astype(float).to_numpy(), part["ci_low"].astype(float).to_numpy(),
                             part["ci_high"].astype(float).to_numpy(), np.asarray(extra, dtype=float)])
    values = values[np.isfinite(values) & (values > 0)]
    return values.min() / 1.6, values.max() * 1.6


# --- measured B_crit beside the noise scale's predictions ----------------------------------------------

BOUND_ARROW = 2.5  # how far (a factor in batch size) a bound's arrow points the way B_crit lies
ROW_OFFSETS = {"b_crit": -0.25, "b_simple": 0.0, "b_noise": 0.25}  # within a row, top to bottom
B_CRIT_MARKER = dict(marker="o", ms=7, color="k")
NOTE_WIDTH = 44  # characters of a note beside a row
ROW_LABEL_WIDTH = 36  # characters of a row's label on one line


def row_label_lines(label: str) -> str:
    """A row's label on as many lines as it needs: its target on a line of its own where one line would not do."""
    if len(label) <= ROW_LABEL_WIDTH:
        return label
    head, _, target = label.rpartition(" (")
    return textwrap.fill(head, ROW_LABEL_WIDTH) + "\n(" + target


def noise_vs_bcrit_rows(critical: pd.DataFrame) -> list[dict]:
    """One row per (study, model, training fraction) of the critical-batch table, in its order: its `label`
    ("study · model (target)", the fraction named where its study has several), and the `fit` of its tuned curve
    for its study's first target (`first_target`, `fit_row`; None where there is none)."""
    if is_empty(critical):
        return []
    table = critical.assign(train_fraction=train_fractions(critical))
    several = table.groupby("study")["train_fraction"].nunique()
    rows = []
    for (study, model, fraction), _ in table.groupby(["study", "model", "train_fraction"], sort=False):
        target = first_target(critical, study)
        fit = fit_row(critical, study, model, target, float(fraction))
        name = f"{model}, {fraction_label(float(fraction))}" if several[study] > 1 else str(model)
        # the value resolved for the model, without a rule's explanation: that is the caption's
        target_name = (resolved_label(fit) if fit is not None else target_label(*target)).partition(" (")[0]
        rows.append(dict(label=f"{study} · {name} ({target_name})", fit=fit))
    return rows


def _measure_marks(fit: pd.Series | None) -> tuple[dict, list[str]]:
    """What a row draws, measure -> (kind, value, lo, hi) with kind 'ok' (a value), 'above' or 'below' (B_crit's
    bound); and what it lacks, in words."""
    if fit is None:
        return {}, ["no fit of the tuned curve for this target"]
    marks, missing = {}, []
    info = describe_b_crit(fit)
    if info["kind"] == "none":
        missing.append(info["text"])
    else:
        marks["b_crit"] = (info["kind"], info["value"], info.get("lo", np.nan), info.get("hi", np.nan))
    for prefix in MEASURES:
        value = number(fit, prefix)
        if np.isfinite(value) and value > 0:
            marks[prefix] = ("ok", value, number(fit, f"{prefix}_ci_low"), number(fit, f"{prefix}_ci_high"))
        else:
            missing.append(f"no {MEASURE_NAMES[prefix]}: not read at the target")
    return marks, missing


def _batch_range(marks: list[dict]) -> tuple[float, float]:
    """Log x limits that hold every value, finite interval end and bound's arrow."""
    values = []
    for row in marks:
        for kind, value, lo, hi in row.values():
            values += [value, value * BOUND_ARROW if kind == "above" else value / BOUND_ARROW if kind == "below"
                       else value, lo, hi]
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    return (values.min() / 1.6, values.max() * 1.6) if len(values) else (1.0, 1000.0)


def _draw_mark(ax: plt.Axes, measure: str, y: float, mark: tuple) -> None:
    """One measure of one row: its marker and 95% interval bar (an infinite end runs to the edge of the axes),
    or for a bound on B_crit an arrow from the bound the way B_crit lies."""
    kind, value, lo, hi = mark
    if kind in ("above", "below"):
        end = value * BOUND_ARROW if kind == "above" else value / BOUND_ARROW
        ax.annotate("", xy=(end, y), xytext=(value, y),
                    arrowprops=dict(arrowstyle="-|>", color="k", lw=1.4, shrinkA=0, shrinkB=0), gid="b_crit_bound")
        ax.plot([value], [y], marker="|", ms=10, mew=1.6, color="k", ls="none", gid="b_crit_bound")
        return
    color = "k" if measure == "b_crit" else PREDICTION_COLORS[measure]
    left, right = ax.get_xlim()
    if (np.isfinite(lo) or lo == -np.inf) and not np.isnan(hi) and hi > lo:
        ax.plot([lo if lo > left else left, min(hi, right)], [y, y], color=color, lw=1.8, solid_capstyle="butt",
                gid=f"{measure}_interval")
    style = B_CRIT_MARKER if measure == "b_crit" else dict(marker=PREDICTION_MARKERS[measure], ms=7, color=color)
    ax.plot([value], [y], ls="none", zorder=5, gid=f"{measure}_value", **style)


def figure_noise_vs_bcrit(critical: pd.DataFrame) -> plt.Figure:
    """The measured critical batch size of the tuned curve beside the noise scale's two predictions of it, one row
    per (study, model, training fraction) for its first target: B_crit (black; an arrow from its bound where the
    fit gives only a bound), B_simple and B_noise read where the runs reached the target, each with its 95%
    interval, on a log batch-size axis; a note beside a row says what it lacks."""
    rows = noise_vs_bcrit_rows(critical)
    if not rows:
        return no_data_figure(NO_TARGETS)
    marks, missing = zip(*(_measure_marks(row["fit"]) for row in rows))
    fig, ax = plt.subplots(figsize=(11.0, 1.4 + 0.62 * len(rows) + LEGEND_HEIGHT), layout="constrained")
    ax.set_xscale("log")
    ax.set_xlim(*_batch_range(marks))
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    for y, (row_marks, row_missing) in enumerate(zip(marks, missing)):
        for measure, mark in row_marks.items():
            _draw_mark(ax, measure, y + ROW_OFFSETS[measure], mark)
        if row_missing:
            note = ax.text(1.02, y, "\n".join(textwrap.fill(m, NOTE_WIDTH) for m in row_missing), fontsize=NOTE_SIZE,
                           transform=ax.get_yaxis_transform(), ha="left", va="center", gid="missing_note")
            note.set_in_layout(True)
    for y in range(len(rows) - 1):
        ax.axhline(y + 0.5, color="0.85", lw=0.8)
    ax.set_yticks(range(len(rows)), [row_label_lines(row["label"]) for row in rows])
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="0.92", lw=0.8)
    ax.set_xlabel("batch size")
    plain_log_axis(ax, "x")
    figure_legend(fig, *_noise_vs_bcrit_legend(drawn_gids(fig)), where="bottom")
    set_title(fig, "Critical batch size measured from steps to target (tuned curve, first target) beside the noise "
                   "scale's predictions of it, B_simple and B_noise read where the runs reached that target "
                   "(bars: 95% intervals)")
    return fig


def _noise_vs_bcrit_legend(drawn: set[str]) -> tuple[list, list[str]]:
    """Legend entries for what `figure_noise_vs_bcrit` drew, by gid."""
    entries = [("b_crit_value", Line2D([], [], ls="none", **B_CRIT_MARKER), "measured B_crit (tuned curve)"),
               ("b_crit_bound", Line2D([], [], color="k", marker="$→$", ms=12, ls="none"),
                "a bound on B_crit: it lies that way")]
    entries += [(f"{prefix}_value", Line2D([], [], color=PREDICTION_COLORS[prefix], marker=PREDICTION_MARKERS[prefix],
                                           ls="none"), f"{MEASURE_FORMULAS[prefix]} at the target")
                for prefix in MEASURES]
    chosen = [(handle, label) for gid, handle, label in entries if gid in drawn]
    return [h for h, _ in chosen], [label for _, label in chosen]
