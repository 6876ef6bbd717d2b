"""The HTML report: one self-contained page that opens with what a researcher would quote.

Top to bottom:
- the findings: for each paper's claim (batchlab.findings), per study and model, the paper's
  value beside ours with its interval, and the verdict (reproduced, not reproduced,
  inconclusive) with its reason and caveats;
- the summary, one row per (study, model, training fraction): run health, the best batch
  size by the task's own quality (test accuracy; test perplexity for a language model, test
  mean IoU for segmentation), flagged when it is an edge of the batch grid, B_crit (or the
  bound the data allow, or why there is none) beside the noise-scale predictions B_simple and
  B_noise read at the target (flagged when one and B_crit disagree by more than 10×), and the large- over small-batch sharpness ratio with its
  interval, in the headline only where Keskar's protocol is met (both ends converged, or at a
  matched train loss), otherwise marked as context;
- one section per paper, each opening with its table and then its figures with captions.
  The sharpness section opens with Keskar's LB / SB ratios at every epsilon and for the
  Hessian, with their intervals over seeds and the train loss both ends reached;
- provenance: the git commit, package versions, the devices the runs trained on, and the
  full resolved config.

Headline numbers use healthy runs only: a diverged or stalled run is counted in the health
columns and nowhere else. Figures are embedded as PNG data, as wide as the page; a click shows
one at its full size.
"""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from batchlab.findings import (
    INCONCLUSIVE, NOT_REPRODUCED, ORDER_OF_MAGNITUDE, REPRODUCED, VERDICTS, batch_count_text, interval_text, keskar_protocol,
    known,
)
from batchlab.plots.common import model_label
from batchlab.plots.critical import Target, fit_row, resolved_label, target_label
from batchlab.quality import (
    CLASSIFICATION, QUALITY, best_base_lr_runs, quality_scores, run_scores, run_tasks, with_fraction,
)
from batchlab.noise_prediction import NOISE_COLUMNS
from batchlab.sharpness_ratio import headline_ratio
from batchlab.speedup import FIT_STATUS_TEXT, TARGET_FIXED, TARGET_METRICS, train_fractions

SUMMARY_COLUMNS = (
    "study", "model", "train_fraction", "task", "n_runs", "n_completed", "n_diverged", "n_stalled", "best_batch_size",
    "best_batch_edge", "best_lr_rule", "best_test_acc", "best_test_perplexity", "best_test_miou", "target", "b_crit", "b_crit_ci_low",
    "b_crit_ci_high", "fit_status", "b_crit_bound", "b_crit_not_reached",
    "b_simple", "b_simple_ci_low", "b_simple_ci_high", "b_noise", "b_noise_ci_low", "b_noise_ci_high",
    "b_noise_train_loss", "sharpness_epsilon", "sharpness_sb_batch_size",
    "sharpness_lb_batch_size", "sharpness_ratio", "sharpness_ratio_ci_low", "sharpness_ratio_ci_high", "sharpness_n_pairs",
    "sharpness_protocol",
)
SECTIONS = {
    "1": "Generalization (Masters & Luschi 2018)",
    "2": "Sharpness (Keskar et al. 2017)",
    "3": "Critical batch size (Golmant et al. 2018, Shallue et al. 2018, McCandlish et al. 2018)",
}
MEASURE_LABELS = {
    "eps_sharpness_full": "ε-sharpness, full space (%)", "eps_sharpness_subspace": "ε-sharpness, random subspace (%)",
    "hessian_lambda_max": "Hessian λ_max", "hessian_trace": "Hessian trace (Hutchinson)",
}


# --- the summary table ---------------------------------------------------------------------

def headline_target(targets: dict) -> Target | None:
    """The first configured target, in the order train_loss, test_loss, test_error: (metric, rule, value),
    the value None for a rule (`largest_batch_q25`), which each model resolves for itself."""
    for metric in TARGET_METRICS:
        if targets.get(metric):
            target = targets[metric][0]
            return (metric, target, None) if isinstance(target, str) else (metric, TARGET_FIXED, float(target))
    return None


def _best_cell(runs: pd.DataFrame) -> dict:
    """The (batch size, rule) whose best base LR gives the best median final test quality (`quality_scores`:
    accuracy, 1 / perplexity or mean IoU); a diverged or stalled seed scores 0, so an LR that fails does not win.
    Beside the median test accuracy, the task's own measure at that median: for a language model the
    perplexity of the median score (infinite when most seeds failed), for segmentation the mean IoU."""
    chosen = best_base_lr_runs(runs)
    scored = chosen.assign(score=quality_scores(chosen), acc=run_scores(chosen))
    cells = scored.groupby(["lr_rule", "batch_size"], as_index=False)[["score", "acc"]].median()
    best = cells.loc[cells["score"].idxmax()]
    score, task = float(best["score"]), run_tasks(runs).iloc[0]
    grid = sorted(runs["batch_size"].unique())
    edge = "smallest" if best["batch_size"] == grid[0] else "largest" if best["batch_size"] == grid[-1] else None
    return dict(best_batch_size=int(best["batch_size"]), best_batch_edge=edge if len(grid) > 1 else None,
                best_lr_rule=best["lr_rule"], best_test_acc=float(best["acc"]),
                best_test_perplexity=(1.0 / score if score > 0 else np.inf) if task == "language_model" else np.nan,
                best_test_miou=score if task == "segmentation" else np.nan)


def _critical_row(f: pd.Series | None) -> dict:
    """The summary's columns from the tuned curve's fit (`plots.critical.fit_row`) for the headline target."""
    if f is None:
        return {}
    return dict(b_crit=f["b_crit"], b_crit_ci_low=f["ci_low"], b_crit_ci_high=f["ci_high"], fit_status=f["fit_status"],
                b_crit_bound=f["b_crit_bound"], b_crit_not_reached=f.get("not_reached_reason"),
                **{c: f.get(c, np.nan) for c in NOISE_COLUMNS if not c.endswith("_n_runs")})


def _sharpness_row(headline: pd.DataFrame, study: str, model: str, fraction: float, study_cfg: dict) -> dict:
    """The headline LB / SB ratio, with `sharpness_protocol` empty where Keskar's protocol is met and saying why
    not otherwise (the ratio is then context, not a finding)."""
    mine = headline[(headline["study"] == study) & (headline["model"] == model)]
    if "train_fraction" in mine:  # a ratios table that keeps the training fractions apart
        mine = mine[np.isclose(train_fractions(mine), fraction)]
    if mine.empty:
        return {}
    r = mine.iloc[0]
    met, why = keskar_protocol(study_cfg, r["sb_train_loss"], r["lb_train_loss"])
    return dict(sharpness_protocol="" if met else why,sharpness_epsilon=r["epsilon"], sharpness_sb_batch_size=r["sb_batch_size"],
                sharpness_lb_batch_size=r["lb_batch_size"], sharpness_ratio=r["ratio"],
                sharpness_ratio_ci_low=r["ratio_ci_low"], sharpness_ratio_ci_high=r["ratio_ci_high"],
                sharpness_n_pairs=r["n_pairs"])


def summary_table(runs: pd.DataFrame, critical: pd.DataFrame, ratios: pd.DataFrame, studies: dict) -> pd.DataFrame:
    """One row per (study, model, training fraction); `studies` maps study -> its config (`speedup`, `budget`)."""
    headline = headline_ratio(ratios)
    rows = []
    runs = with_fraction(runs)
    for (study, model, fraction), group in runs.groupby(["study", "model", "train_fraction"]):
        counts = group["status"].value_counts()
        row = dict(study=study, model=model, train_fraction=fraction, task=run_tasks(group).iloc[0], n_runs=len(group),
                   n_completed=int(counts.get("completed", 0)), n_diverged=int(counts.get("diverged", 0)),
                   n_stalled=int(counts.get("stalled", 0)))
        row.update(_best_cell(group))
        target = headline_target(studies.get(study, {}).get("speedup", {}).get("targets", {}))
        if target is not None:
            fit = fit_row(critical, study, model, target, fraction)
            row["target"] = resolved_label(fit) if fit is not None else target_label(*target)
            row.update(_critical_row(fit))
        row.update(_sharpness_row(headline, study, model, fraction, studies.get(study, {})))
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    # the whole training set first, as in the critical-batch table
    return table.sort_values(["study", "model", "train_fraction"], ascending=[True, True, False], ignore_index=True)


# --- formatting ----------------------------------------------------------------------------

def fmt(x, spec: str = "{:.3g}") -> str:
    return spec.format(x) if known(x) else "–"


def b_crit_text(b_crit, low, high, status, bound, not_reached=None) -> str:
    """B_crit with its interval; else the bound the data allow, or why there is no number (for larger batches
    that did not reach the target, why they did not: "budget", "diverged", "stalled")."""
    if known(b_crit):
        return interval_text(b_crit, low, high, "{:.0f}")
    why = FIT_STATUS_TEXT.get(status, status)
    if status == "not_reached" and isinstance(not_reached, str) and not_reached:
        why += f": {not_reached}"
    if isinstance(bound, str) and bound:
        return f"{bound} ({why})"
    if isinstance(status, str):
        return f"– ({why})"
    return "–"


def best_quality_text(row) -> str:
    """The best cell's median test quality: the accuracy, or the task's own measure named."""
    if row.task == "language_model":
        return f"test perplexity {fmt(row.best_test_perplexity, '{:.4g}')}"
    if row.task == "segmentation":
        return f"test mean IoU {fmt(row.best_test_miou, '{:.3f}')}"
    return f"{row.best_test_acc:.3f}"


def summary_display(table: pd.DataFrame) -> pd.DataFrame:
    """The summary as the strings the report shows; a study with several training fractions names each
    row's ("resnet20 (50% of the data)")."""
    best = "median test acc." if set(table["task"]) <= {CLASSIFICATION} else "median test accuracy, perplexity or mean IoU"
    out = pd.DataFrame({
        "study": table["study"],
        "model": model_label(table),
        "runs (completed / diverged / stalled)": [f"{r.n_runs} ({r.n_completed} / {r.n_diverged} / {r.n_stalled})"
                                                  for r in table.itertuples()],
        f"best batch size (rule, {best})": [
            f"{r.best_batch_size} ({r.best_lr_rule}, {best_quality_text(r)})"
            + (f"; the {r.best_batch_edge} batch of the grid" if isinstance(r.best_batch_edge, str) else "")
            for r in table.itertuples()],
        "target": table["target"].astype(object).fillna("none configured"),
        "B_crit [95% interval]": [b_crit_text(r.b_crit, r.b_crit_ci_low, r.b_crit_ci_high, r.fit_status, r.b_crit_bound,
                                              r.b_crit_not_reached) for r in table.itertuples()],
        "B_simple at the target [95%]": [
            prediction_text(r.b_simple, r.b_simple_ci_low, r.b_simple_ci_high) + disagreement(r.b_simple, r.b_crit)
            for r in table.itertuples()],
        "B_noise at the target [95%]": [
            prediction_text(r.b_noise, r.b_noise_ci_low, r.b_noise_ci_high) + disagreement(r.b_noise, r.b_crit)
            for r in table.itertuples()],
        "sharpness LB / SB [95%]": [sharpness_text(r) for r in table.itertuples()],
    })
    return out


def prediction_text(value: float, low: float, high: float) -> str:
    """A noise-scale prediction with its interval; an open upper end as ∞, and "no interval" where it has none."""
    if known(value) and known(low) and high == np.inf:
        return f"{batch_count_text(value)} [{batch_count_text(low)}, ∞)"
    text = interval_text(value, low, high, batch_count_text)
    return text + " (no interval)" if known(value) and not (known(low) and known(high)) else text


def disagreement(predicted: float, b_crit: float) -> str:
    """A note beside a noise-scale prediction when it and B_crit differ by more than McCandlish's order of
    magnitude."""
    if not (known(predicted) and known(b_crit)):
        return ""
    ratio = predicted / b_crit
    if 1 / ORDER_OF_MAGNITUDE <= ratio <= ORDER_OF_MAGNITUDE:
        return ""
    return f" — {ratio:.3g}× B_crit, beyond the 10× the paper reports"


def sharpness_text(r) -> str:
    """The LB / SB ratio; where Keskar's protocol is not met, marked as context with the reason."""
    if not known(r.sharpness_ratio):
        return "–"
    text = (f"{interval_text(r.sharpness_ratio, r.sharpness_ratio_ci_low, r.sharpness_ratio_ci_high, '{:.2f}')}× "
            f"(B={r.sharpness_lb_batch_size:.0f} / {r.sharpness_sb_batch_size:.0f}, ε={r.sharpness_epsilon:g}, "
            f"{r.sharpness_n_pairs:.0f} pairs)")
    if isinstance(r.sharpness_protocol, str) and r.sharpness_protocol:
        return f"context only, not a finding: {text}; {r.sharpness_protocol}"
    return text


# --- the findings ----------------------------------------------------------------------------

VERDICT_STYLE = {REPRODUCED: "reproduced", NOT_REPRODUCED: "not-reproduced", INCONCLUSIVE: "inconclusive"}


def findings_html(findings: pd.DataFrame) -> str:
    """The findings section: a count of verdicts, then one table row per finding, its verdict cell coloured."""
    counts = findings["verdict"].value_counts()
    tally = ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
    head = ("<section id='findings'><h2>Findings: did the papers' claims reproduce?</h2>"
            f"<p>{len(findings)} findings: {tally}. Each row asks one paper's claim of one study and model: the "
            "paper's value stands beside ours with its 95% interval. A claim counts as reproduced only where the "
            "protocol it needs is met and the interval lies on the claim's side; otherwise the verdict is "
            "inconclusive and says why (the number is then context, not a finding). Caveats say what differs "
            "from the paper: data set, model, budget, seeds. The table is "
            "<code>results/tables/findings.parquet</code>.</p>")
    columns = ("paper", "claim", "study / model", "paper's value", "ours [95%]", "verdict", "why", "caveats")
    rows = []
    span = findings.groupby("claim_id", sort=False)["claim_id"].transform("size")
    first = ~findings["claim_id"].duplicated()
    for r, rowspan, opens in zip(findings.itertuples(), span, first):
        where = r.study if r.model == r.study else f"{r.study} / {r.model}"
        if r.train_fraction != 1.0:
            where += f" ({r.train_fraction:.0%} of the data)"
        if r.condition:
            where += f", {r.condition}"
        # a claim's paper and text once, over all its rows
        claim = (f"<td rowspan='{rowspan}'>{html.escape(r.paper)}</td><td rowspan='{rowspan}'>{html.escape(r.claim)}</td>"
                 if opens else "")
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in (where, r.paper_value, r.value_text))
        verdict = f'<td class="verdict {VERDICT_STYLE[r.verdict]}">{html.escape(r.verdict)}</td>'
        rest = "".join(f"<td>{html.escape(str(c))}</td>" for c in (r.reason or "", r.caveats))
        rows.append(f"<tr data-claim='{html.escape(r.claim_id)}'>{claim}{cells}{verdict}{rest}</tr>")
    header = "".join(f"<th>{c}</th>" for c in columns)
    return f"{head}<table class='findings'><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"


def ratios_display(ratios: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(MEASURE_LABELS)}
    ratios = ratios.assign(order=ratios["metric"].map(order)).sort_values(["study", "model", "order", "epsilon"],
                                                                         ascending=[True, True, True, False])
    return pd.DataFrame({
        "study": ratios["study"], "model": ratios["model"],
        "measure": ratios["metric"].map(MEASURE_LABELS),
        "ε": ratios["epsilon"].map(lambda e: fmt(e, "{:g}")),
        "SB / LB batch": [f"{r.sb_batch_size} / {r.lb_batch_size}" for r in ratios.itertuples()],
        "SB value": ratios["sb_value"].map(fmt), "LB value": ratios["lb_value"].map(fmt),
        "LB / SB [95% over seeds]": [interval_text(r.ratio, r.ratio_ci_low, r.ratio_ci_high, "{:.2f}")
                                     for r in ratios.itertuples()],
        "pairs": ratios["n_pairs"],
        "final train loss SB / LB": [f"{fmt(r.sb_train_loss)} / {fmt(r.lb_train_loss)}" for r in ratios.itertuples()],
        "test acc. SB / LB": [f"{fmt(r.sb_test_acc)} / {fmt(r.lb_test_acc)}" for r in ratios.itertuples()],
    })


CURVE_KEY = ["study", "model", "train_fraction", "lr_rule", "target_metric", "target_rule", "target_value"]


def lr_edge_counts(critical: pd.DataFrame, speedup: pd.DataFrame | None) -> list[str]:
    """Per fit: at how many of its reached batch sizes the tuned LR sits at an edge of its grid ("k of n"), where
    the grid may not bracket the optimum."""
    if speedup is None or "best_lr_edge" not in speedup:
        return ["–"] * len(critical)
    reached = speedup[speedup["reached"].eq(True)].assign(train_fraction=lambda t: train_fractions(t))
    counts = reached.groupby(CURVE_KEY)["best_lr_edge"].agg(edge=lambda e: int(e.notna().sum()), n="size")
    keys = critical.assign(train_fraction=train_fractions(critical))[CURVE_KEY].itertuples(index=False, name=None)
    return [f"{counts.loc[k, 'edge']} of {counts.loc[k, 'n']}" if k in counts.index else "–" for k in keys]


def critical_display(critical: pd.DataFrame, speedup: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per critical-batch fit; a target set by a rule shows each model's own resolved value; with the
    speed-up table, how many of its tuned LRs sit at an edge of the LR grid."""
    critical = critical.assign(train_fraction=train_fractions(critical)).sort_values(
        ["study", "model", "train_fraction", "target_metric", "target_rule", "target_value", "lr_rule"],
        ascending=[True, True, False, True, True, True, True])
    return pd.DataFrame({
        "study": critical["study"], "model": model_label(critical), "LR rule": critical["lr_rule"],
        "target": [resolved_label(row) for _, row in critical.iterrows()],
        "points": critical["n_points"],
        "B_crit [95% interval]": [b_crit_text(r.b_crit, r.ci_low, r.ci_high, r.fit_status, r.b_crit_bound,
                                              getattr(r, "not_reached_reason", None)) for r in critical.itertuples()],
        "S_min": critical["s_min"].map(lambda s: fmt(s, "{:.0f}")),
        "B_simple at the target [95%] (runs)": [
            f"{prediction_text(r.b_simple, r.b_simple_ci_low, r.b_simple_ci_high)} ({r.b_simple_n_runs})"
            for r in critical.itertuples()],
        "B_noise at the target [95%] (runs)": [
            f"{prediction_text(r.b_noise, r.b_noise_ci_low, r.b_noise_ci_high)} ({r.b_noise_n_runs})"
            for r in critical.itertuples()],
        "read at train loss": critical["b_noise_train_loss"].map(lambda v: fmt(v, "{:.3g}")),
        "tuned LR at a grid edge (batch sizes)": lr_edge_counts(critical, speedup),
    })


def unhealthy_display(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not complete; beside the accuracy, the perplexity or mean IoU where a study has that task."""
    bad = runs[runs["status"] != "completed"]
    out = pd.DataFrame({
        "run": bad["run_id"], "status": bad["status"], "stop reason": bad.get("stop_reason", pd.Series(index=bad.index)),
        "steps": bad["steps"], "final train loss": bad["final_train_loss"].map(fmt),
        "final test acc.": bad["final_test_acc"].map(fmt),
    })
    tasks = set(run_tasks(runs))
    for task in ("language_model", "segmentation"):
        if task in tasks:
            out[f"final {QUALITY[task].name}"] = bad[QUALITY[task].column].map(fmt)
    return out


def converged_studies(config: dict) -> set[str]:
    """Studies trained under a convergence budget (`budget.stop`): Keskar's protocol."""
    return {name for name, study in config.get("studies", {}).items() if study.get("budget", {}).get("stop")}


def sharpness_section_tables(ratios: pd.DataFrame, config: dict) -> str:
    """Keskar's LB / SB ratios, the studies trained to convergence (his protocol) first: at equal
    epochs a large batch stops far from any minimum, and its ratio means something else."""
    converged = ratios["study"].isin(converged_studies(config))
    parts = ["<p>Keskar's comparison at the final checkpoint: SB and LB are the smallest and largest batch among "
             "healthy measured runs, paired by LR rule, base LR and seed; the ratio is the geometric mean over "
             "pairs with a 95% t-interval over them. The train loss each end reached stands beside it.</p>"]
    for title, rows in (("Trained to convergence (Keskar's protocol, <code>budget.stop</code>)", ratios[converged]),
                        ("Trained for equal epochs (not Keskar's protocol: large batches stop far from a minimum)",
                         ratios[~converged])):
        if len(rows):
            parts += [f"<h3>{title}</h3>", html_table(ratios_display(rows), "ratios")]
    if len(parts) == 1:
        parts.append(html_table(ratios_display(ratios), "ratios"))
    return "".join(parts)


def html_table(frame: pd.DataFrame, css_class: str = "") -> str:
    if frame.empty:
        return "<p><em>none</em></p>"
    return frame.to_html(index=False, escape=True, border=0, classes=css_class or None, na_rep="–")


# --- the page ------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; border-top: 1px solid #eee; padding-top: 0.5em; }
figure img { display: block; max-width: 100%; height: auto; cursor: zoom-in; }
figure img.whole { max-width: none; max-height: none; cursor: zoom-out; }
td.verdict { font-weight: 600; white-space: nowrap; }
td.reproduced { background: #e3f4e1; } td.not-reproduced { background: #fbe3e1; } td.inconclusive { background: #f6f1dc; }
table.findings td { font-size: 0.95em; }
figcaption { font-size: 0.9em; color: #444; max-width: 70em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
nav a { margin-right: 1em; }
"""
# a click toggles one figure between fitting the window and its full size
SCRIPT = """
document.querySelectorAll("figure img").forEach(function (img) {
  img.addEventListener("click", function () { img.classList.toggle("whole"); });
});
"""


def caption_html(rst: str) -> str:
    """A figure caption from its .rst file: plain text with ``literals``."""
    text = html.escape(" ".join(rst.split()))
    return re.sub(r"``(.+?)``", r"<code>\1</code>", text)


def figure_html(name: str, png: str | Path, caption: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return (f'<figure id="figure-{name}"><img alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption><strong>{name}</strong>: {caption_html(caption)}</figcaption></figure>")


class _WithoutAliases(yaml.SafeDumper):
    """Writes a mapping shared by two studies (the schema's defaults, a YAML anchor) out in full under each,
    where safe_dump would write `&id001` and `*id001`."""

    def ignore_aliases(self, data) -> bool:
        return True


def provenance_html(config: dict, git: dict, versions: dict, devices: list[str]) -> str:
    commit = git.get("commit") or "unknown"
    dirty = " (with uncommitted changes)" if git.get("dirty") else ""
    items = [
        f"<li>git commit: <code>{html.escape(commit)}</code>{dirty}</li>",
        "<li>versions: " + ", ".join(f"{html.escape(k)} {html.escape(str(v))}" for k, v in versions.items()) + "</li>",
        "<li>devices the runs trained on: " + (", ".join(html.escape(d) for d in devices) or "–") + "</li>",
        f"<li>built: {datetime.now(timezone.utc).isoformat(timespec='seconds')}</li>",
    ]
    config_text = html.escape(yaml.dump(config, Dumper=_WithoutAliases, sort_keys=False, allow_unicode=True))
    return ("<section id='provenance'><h2>Provenance</h2><ul>" + "".join(items) + "</ul>"
            f"<details><summary>The full resolved config</summary><pre>{config_text}</pre></details></section>")


def build_report(tables: dict[str, pd.DataFrame], summary: pd.DataFrame, figures: list[dict], config: dict,
                 git: dict, versions: dict) -> str:
    """The report page. `tables`: runs, critical, ratios, findings and (optionally) speedup; `figures`: dicts with name, section
    ("1", "2" or "3"), png (path) and caption (text), in order."""
    runs = tables["runs"]
    devices = sorted(runs["device"].dropna().unique()) if "device" in runs else []
    parts = [
        "<h1>batchlab: how the SGD batch size shapes training</h1>",
        "<p>Each study trains a grid of models × batch sizes × LR rules × learning rates × seeds, keeps the loss "
        "of every step, measures its checkpoints and reads off how many steps each batch size needs to reach "
        "the configured targets. The tables behind every number are in <code>results/tables/</code>; the "
        "provenance is at the end of this page. A click on a figure shows it at full size.</p>",
        "<nav><a href='#findings'>Findings</a><a href='#summary'>Summary</a>" + "".join(f'<a href="#section-{k}">{k} {html.escape(v)}</a>' for k, v in SECTIONS.items())
        + '<a href="#provenance">Provenance</a></nav>',
        findings_html(tables["findings"]),
        "<section id='summary'><h2>Summary</h2>",
        "<p>Per study and model (and training fraction, where a study trained on several): run health; the batch "
        "size whose best base LR gave the best median final test accuracy (test perplexity for a language model, "
        "test mean IoU for segmentation); the critical batch size B_crit of S(B) = S_min (1 + B_crit / B), fitted "
        "to the LR-tuned steps to the first target (a bound where the data only bound it, and why when there is no "
        "number); "
        "McCandlish's two noise-scale predictions, B_simple = tr(Σ) / |G|² and B_noise = tr(HΣ) / GᵀHG, each "
        "read where the train loss of the runs that reached that target reached it, flagged where it and B_crit "
        "differ by more than 10×; and the large- over small-batch ε-sharpness "
        "ratio, marked as context where the two ends were not trained to a comparable loss. A best batch at an "
        "edge of the grid says so. Diverged and stalled runs enter none of these numbers.</p>",
        html_table(summary_display(summary), "summary"),
        "<h3>Runs that did not train</h3>",
        html_table(unhealthy_display(runs)),
        "</section>",
    ]
    section_tables = {
        "2": sharpness_section_tables(tables["ratios"], config),
        "3": ("<p>The critical batch size per LR rule and target (<code>best</code>: tuned over every rule and "
              "LR). The last column counts the batch sizes whose tuned LR is the smallest or largest of its grid: there the "
              "grid may not bracket the optimum LR, and the steps to target may be overestimated.</p>"
              + html_table(critical_display(tables["critical"], tables.get("speedup")), "critical")),
    }
    for key, title in SECTIONS.items():
        parts.append(f"<section id='section-{key}'><h2>{key} {html.escape(title)}</h2>")
        parts.append(section_tables.get(key, ""))
        parts += [figure_html(f["name"], f["png"], f["caption"]) for f in figures if f["section"] == key]
        parts.append("</section>")
    parts.append(provenance_html(config, git, versions, devices))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>batchlab report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n<script>{SCRIPT}</script></body></html>\n")
