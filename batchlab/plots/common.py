"""Drawing helpers shared by every figure: style, saving, panel layout, colours, batch-size
axes, and the marks for runs that did not train (stalled or diverged)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from batchlab.io import atomic_path  # noqa: E402
from batchlab.speedup import train_fractions  # noqa: E402

DPI = 150
# The report shows a figure at most 1400 px wide: at 150 dpi a 15-inch figure is shrunk
# to about 60%, so nothing smaller than 9 pt may carry information.
STYLE = {
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "legend.title_fontsize": 9.5, "figure.titlesize": 11.5,
}
NOTE_SIZE = 9
PANEL = (3.3, 2.5)  # inches per panel: width, height
MAX_COLS = 4  # many panels wrap into rows of up to four, so that a figure keeps to a window's shape
MAX_WIDTH = 15.0  # inches, legend included: more columns narrow the panels rather than widen the figure

RULE_ORDER = ["constant", "linear", "sqrt", "best"]
RULE_MARKERS = {"constant": "o", "linear": "s", "sqrt": "^", "best": "D"}

# A run that finished without training (stalled) or blew up (diverged) stays in the figures,
# marked so that a reader does not take it for a result.
UNHEALTHY = {"stalled": dict(marker="x", color="0.1"), "diverged": dict(marker="x", color="#c0392b")}
NOTE_BOX = dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="0.75", alpha=0.9)


@contextlib.contextmanager
def figure_style():
    with sns.axes_style("ticks"), plt.rc_context(STYLE):
        yield


def save_figure(fig: plt.Figure, png: str | os.PathLike, pdf: str | os.PathLike | None = None) -> None:
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        if path is not None:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def no_data_figure(message: str) -> plt.Figure:
    """A figure that says why there is nothing to draw: an empty table must still give the report a figure."""
    fig, ax = plt.subplots(figsize=(7, 2.2))
    ax.text(0.5, 0.5, textwrap.fill(message, 60), ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def is_empty(table: pd.DataFrame | None) -> bool:
    return table is None or len(table) == 0


LEGEND_WIDTH = 2.3  # inches kept beside the panels for a legend on the right
LEGEND_HEIGHT = 0.7  # inches kept below the panels for a legend at the bottom


def grid_columns(n_panels: int, group: int = 1, max_cols: int = MAX_COLS) -> int:
    """Columns for n wrapped panels: a whole number of groups of `group` panels (the LR rules of one model, say)
    per row where a group fits in `max_cols`, so that the same rule keeps its column; at most `max_cols`."""
    per_row = group * (max_cols // group) if 0 < group <= max_cols else max_cols
    return max(1, min(n_panels, per_row))


def wrapped_grid(n_panels: int, max_cols: int = MAX_COLS, panel=PANEL, legend: str = "right",
                 group: int = 1) -> tuple[plt.Figure, list[plt.Axes]]:
    """Panels of the given size filled row by row, `grid_columns` wide, so that many panels wrap into a figure
    of a window's shape rather than a tall strip; the panels narrow to keep the figure within MAX_WIDTH, and
    room is kept for the figure's legend on the right or at the bottom (constrained layout takes it from the
    panels otherwise). The slots left over in the last row are not drawn."""
    n_cols = grid_columns(n_panels, group, max_cols)
    n_rows = max(1, -(-n_panels // n_cols))
    legend_width = LEGEND_WIDTH if legend == "right" else 0
    width = n_cols * min(panel[0], (MAX_WIDTH - legend_width) / n_cols) + legend_width
    height = n_rows * panel[1] + (LEGEND_HEIGHT if legend == "bottom" else 0)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_axis_off()
    return fig, flat[:n_panels]


def present_cells(data: pd.DataFrame, columns: tuple[str, str], rows, cols) -> list[tuple]:
    """The (row, column) cells of a panel grid, rows then columns in the order given, that have rows in `data`:
    a model without some LR rule or target gets no panel for it."""
    present = set(zip(data[columns[0]], data[columns[1]]))
    return [(r, c) for r in rows for c in cols if (r, c) in present]


def label_outer(axes: list[plt.Axes], xlabel: str, ylabels) -> None:
    """Axis labels of wrapped panels (`wrapped_grid`): x below each panel with no panel beneath it, y at the left
    of each row and wherever it differs from the panel on the left (`ylabels`: one for all, or one per panel)."""
    ylabels = [ylabels] * len(axes) if isinstance(ylabels, str) else list(ylabels)
    for i, ax in enumerate(axes):
        n_cols = ax.get_gridspec().ncols
        left = i % n_cols == 0 or ylabels[i] != ylabels[i - 1]
        ax.set(xlabel=xlabel if i + n_cols >= len(axes) else "", ylabel=ylabels[i] if left else "")


def set_title(fig: plt.Figure, text: str) -> None:
    """Suptitle wrapped to the figure's width, so a narrow figure does not grow sideways for its title."""
    width_chars = max(50, int(fig.get_figwidth() * 12))
    fig.suptitle(textwrap.fill(text, width_chars))


def drawn_gids(fig: plt.Figure) -> set[str]:
    """The gids of the artists drawn in the figure's axes: what its legend may list."""
    return {a.get_gid() for ax in fig.axes for a in ax.get_children() if a.get_gid()}


def _wrap_line(line: str, fits) -> list[str]:
    """One title line in as few lines as `fits`: broken first between its phrases (before " / ", " · ", " ("),
    then, for a phrase too long on its own, between words."""
    out: list[str] = []
    for phrase in re.split(r" (?=[/·(])", line):
        for piece in [phrase] if fits(phrase) else phrase.split(" "):
            if out and fits(f"{out[-1]} {piece}"):
                out[-1] += f" {piece}"
            else:
                out.append(piece)
    return out


TITLE_LINES = 2  # title lines that a panel's height (PANEL, `wrapped_grid`) holds


def fit_titles(fig: plt.Figure) -> None:
    """Wrap every panel title to its panel's width as laid out: at most the axes' width and most of the gap to
    its neighbour, so that no title runs into the next one; the figure grows by each row's title lines beyond
    TITLE_LINES, so that the panels keep their height. Call it last: it lays the figure out once."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.axison]
    gaps = [b.x0 - a.x1 for a in boxes for b in boxes if b.x0 >= a.x1 and a.y0 < b.y1 and b.y0 < a.y1]
    gap = 0.8 * min(gaps) if gaps else math.inf
    lines = {}  # title lines of the tallest title in each row of panels
    for ax in fig.axes:
        title, room = ax.title, ax.get_window_extent(renderer).width + gap
        font = title.get_fontproperties()

        def fits(text: str) -> bool:
            return renderer.get_text_width_height_descent(text, font, ismath=False)[0] <= room

        title.set_text("\n".join(part for line in title.get_text().split("\n") for part in _wrap_line(line, fits)))
        row = ax.get_subplotspec().rowspan.start if ax.get_subplotspec() else id(ax)
        lines[row] = max(lines.get(row, 0), title.get_text().count("\n") + 1)
    added = sum(max(0, n - TITLE_LINES) for n in lines.values())
    if added:
        fig.set_figheight(fig.get_figheight() + added * 1.2 * fig.axes[0].title.get_fontsize() / 72)


def figure_legend(fig: plt.Figure, handles: list, labels: list[str], title: str | None = None,
                  where: str = "right") -> None:
    """The figure's one legend, outside the panels (room for it was kept by `wrapped_grid`)."""
    if not handles:
        return
    if where == "bottom":
        fig.legend(handles, labels, title=title, loc="outside lower center", ncol=min(len(handles), 5), frameon=False)
    else:
        fig.legend(handles, labels, title=title, loc="outside right center", frameon=False)


def plain_log_axis(ax: plt.Axes, axis: str = "y") -> None:
    """Over at most two decades, log ticks at 1-2-5 steps written as plain numbers (200, 500,
    1000): matplotlib labels only the decades, often just one there. Wider ranges keep its decades."""
    scale = ax.get_yscale() if axis == "y" else ax.get_xscale()
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    if scale != "log" or lo <= 0 or math.log10(hi / lo) > 2.0:
        return
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
    target.set_minor_formatter(NullFormatter())


def fraction_label(fraction: float) -> str:
    return f"{100 * fraction:g}% of the data"


def model_label(table: pd.DataFrame) -> pd.Series:
    """The model of each row, with its training fraction ("resnet20 (50% of the data)") where its study
    trained on several fractions of the training set (Golmant et al. 2018)."""
    fractions = train_fractions(table)
    several = fractions.groupby(table["study"]).transform("nunique") > 1
    named = table["model"].astype(str) + " (" + fractions.map(fraction_label).astype(str) + ")"  # str even when empty
    return named.where(several, table["model"].astype(str))


def panel_key(table: pd.DataFrame) -> pd.Series:
    """The name of a (study, model, training fraction) panel; the study is named only when there are several,
    the fraction only when its study has several."""
    many_studies = table["study"].nunique() > 1
    return table["study"].astype(str) + " / " + model_label(table) if many_studies else model_label(table)


def ordered_rules(rules) -> list[str]:
    present = list(dict.fromkeys(rules))
    return [r for r in RULE_ORDER if r in present] + sorted(r for r in present if r not in RULE_ORDER)


def rule_palette(rules: list[str]) -> dict:
    """Fixed colours for the known rules, so a rule keeps its colour from figure to figure."""
    colours = sns.color_palette("deep", 10)
    fixed = {rule: colours[i] for i, rule in enumerate(RULE_ORDER)}
    extra = iter(colours[len(RULE_ORDER):])
    return {rule: fixed[rule] if rule in fixed else next(extra) for rule in rules}


def rule_marker(rule: str) -> str:
    return RULE_MARKERS.get(rule, "o")


def rule_handles(rules: list[str], palette: dict) -> list[Line2D]:
    return [Line2D([], [], color=palette[r], marker=rule_marker(r), label=r) for r in rules]


def batch_colors(batch_sizes) -> dict:
    """Batch size -> colour on turbo (blue for the smallest to red for the largest), evenly spaced by rank:
    spaced by log batch size, two close sizes (400 and 512) would get nearly the same colour."""
    sizes = sorted(set(batch_sizes))
    positions = np.linspace(0.05, 0.95, len(sizes)) if len(sizes) > 1 else [0.05]
    cmap = matplotlib.colormaps["turbo"]
    return {b: cmap(p) for b, p in zip(sizes, positions)}


def batch_handles(colors: dict) -> list[Line2D]:
    return [Line2D([], [], color=c, lw=2, label=f"{b:g}") for b, c in colors.items()]


def dodge(batch_sizes, index: int, n: int, width: float = 0.12):
    """Shift points of the index-th of n series sideways (in log2 batch size) so error bars do not hide each other."""
    return np.asarray(batch_sizes, dtype=float) * 2.0 ** ((index - (n - 1) / 2) * width)


def batch_axis(ax: plt.Axes, batch_sizes) -> None:
    """Log-scaled batch axis labelled with the batch sizes themselves (every other one when they crowd)."""
    sizes = sorted(set(float(b) for b in batch_sizes))
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    step = 2 if len(sizes) > 7 else 1
    ax.set_xticklabels([f"{b:g}" if i % step == 0 else "" for i, b in enumerate(sizes)])
    ax.minorticks_off()
    ax.set_xlim(sizes[0] / 1.4, sizes[-1] * 1.4)


def log_scale_if_positive(ax: plt.Axes, values, axis: str = "y") -> None:
    """Log scale when every finite value is positive; a Hutchinson trace can come out negative."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) and (values > 0).all():
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def panel_note(ax: plt.Axes, text: str, corner: str = "upper right", width: int = 28) -> plt.Text:
    """A short note inside the axes at one of its corners, wrapped to the panel's width."""
    x = 0.97 if "right" in corner else 0.03
    y = 0.96 if "upper" in corner else 0.04
    lines = "\n".join(textwrap.fill(line, width) for line in text.split("\n"))
    note = ax.text(x, y, lines, transform=ax.transAxes, ha="right" if "right" in corner else "left",
                   va="top" if "upper" in corner else "bottom", fontsize=NOTE_SIZE, bbox=NOTE_BOX, zorder=6)
    note.set_in_layout(False)  # it lies inside the axes: the layout must not shrink the axes around it
    return note


def note_under_title(ax: plt.Axes, text: str) -> plt.Text:
    """A note that must cover no data, however long: the last lines of the panel's title, outside the axes
    (`fit_titles` wraps it to the panel's width and grows the figure for it)."""
    ax.set_title(f"{ax.get_title()}\n{text}" if ax.get_title() else text)
    return ax.title


def status_series(table: pd.DataFrame) -> pd.Series:
    return table["status"].astype(str)


def mark_unhealthy(ax: plt.Axes, x, y, statuses, edge: float = 0.03) -> None:
    """An x for each stalled or diverged run; one without a finite y (a diverged run has no
    accuracy) sits on the bottom edge of the axes (`edge` 0.97: the top edge, where higher is worse)."""
    x, y, statuses = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(statuses, dtype=str)
    for status, style in UNHEALTHY.items():
        chosen = statuses == status
        finite = chosen & np.isfinite(y)
        if finite.any():
            ax.plot(x[finite], y[finite], ls="none", ms=8, mew=1.8, zorder=5, gid=f"unhealthy:{status}", **style)
        floor = chosen & ~np.isfinite(y)
        if floor.any():
            ax.plot(x[floor], np.full(floor.sum(), edge), ls="none", ms=8, mew=1.8, zorder=5, clip_on=False,
                    transform=ax.get_xaxis_transform(), gid=f"unhealthy:{status}", **style)


def unhealthy_handles(statuses: pd.Series, notes: dict[str, str] | None = None) -> tuple[list[Line2D], list[str]]:
    """Legend entries for the unhealthy runs drawn, with their counts and a note per status
    (where its mark sits); none when every run is healthy."""
    handles, labels = [], []
    counts = statuses.value_counts()
    for status, style in UNHEALTHY.items():
        if counts.get(status, 0):
            handles.append(Line2D([], [], ls="none", ms=8, mew=1.8, **style))
            labels.append(f"{status} run ({counts[status]}){(notes or {}).get(status, '')}")
    return handles, labels
