"""Steps to a target, speed-up curves and the critical batch size.

Golmant et al. 2018 and Shallue et al. 2018 ask how many steps each batch size needs to
reach a target, and where a larger batch stops paying. The rules, in order:

1. A run's steps to target: the first *evaluated* step after step 0 at which the metric
   reaches the target (loss or error <= target; a fixed value, or one that rule 7 sets); a
   step is evaluated where the metric is not NaN in the curves table. Read off the
   evaluations, it is rounded up to the next one: the run crossed the target somewhere in
   (steps_low, steps], steps_low being the last evaluated step before it (step 0 included;
   0 when the curve has no evaluation before it). `run_steps_interval` gives both ends,
   `run_steps_to_target` the upper one. A run that did not complete (diverged or stalled), or one that never gets
   there, has not reached it, and no run reaches a target that rule 7 refuses. Why a run did
   not reach it, its case: the refusal (`target_above_initial`), "budget" (it completed
   without getting there), or its status ("diverged", "stalled"). The reason for a set of
   runs (`not_reached_reason`) is the most common case among those that did not reach,
   "mixed" when two cases tie; each row of speedup.parquet that did not reach gives the
   reason of the runs at its batch size (over the curve's LR settings), None where it reached.
2. A (batch size, LR) cell: if more than half of its seeds did not reach the target,
   the cell did not; otherwise its steps are the median over the seeds that did, and its
   lower end the median of those seeds' lower ends. A median keeps order, so the median of
   the seeds' crossings lies between the two.
3. Per batch size, the minimum over the LR grid, with the LR that gave it (Shallue's
   tuning per batch size): per LR rule (`constant`, `linear`, `sqrt`, each over its own
   base LRs), and over every rule and LR together as the rule `best`. Its lower end
   (`steps_low` in speedup.parquet) is the minimum over the LR settings whose cell reached of
   their cells' lower ends, so the tuned crossing (a minimum over the settings) lies in
   (steps_low, steps_to_target]; it is the chosen setting's own lower end unless another
   setting's bracket reaches below it. A curve is one
   (study, model, training fraction, LR rule): runs trained on 100%, 50% or 25% of the
   training set (Golmant et al. 2018's grid axis `train_fraction`; 1.0 for a runs table
   without the column) give curves and fits of their own. `best_lr_edge` says where the
   chosen LR setting's base LR sits in its own rule's base-LR grid in the study (for `best`
   too, the rule of the chosen setting): "low" the smallest, "high" the largest, "only" a
   grid of one value, else None (and None where not reached). At an edge the grid may not
   bracket the optimum LR.
4. Speed-up: steps at the smallest batch size of the curve over steps at B, both the upper
   ends `steps_to_target` (so each carries its evaluation's rounding; rule 5 uses the
   brackets); perfect scaling is B over that smallest batch size. Its 95% interval is a
   bootstrap over seeds: each cell's seeds are resampled with replacement and rules 2-4
   applied again (to the upper ends).
5. Critical batch size: S(B) = S_min (1 + B_crit / B) (McCandlish et al. 2018) fitted in log
   space, log S_B ~ N(log S_min + log1p(B_crit / B), sigma^2), to the reached batches'
   brackets (rule 3's (steps_low, steps_to_target]) by an interval (censored) likelihood:
   each batch contributes the probability that its log S lies in its bracket,
   Phi((log hi - m) / sigma) - Phi((log lo - m) / sigma), a lower end 0 leaving it open
   below (`fit_method` "interval"). For each B_crit, log S_min and sigma are profiled out
   (`censored_profile`: Newton's method in (log S_min / sigma, 1 / sigma), where the log
   likelihood is concave), sigma held at least SIGMA_FLOOR = 0.03. The floor matters where
   the brackets are wide against the scatter: where one curve passes through every bracket
   the likelihood rises towards 1 as sigma -> 0 (bounded, but the profile then collapses
   onto that set), and on the demo's and Masters & Luschi's evaluation plans such intervals
   covered the truth in as few as 90-91% of curves in some settings; held at 0.03 (about the
   smallest scatter the demo's real fits show, `fit_sigma` 0.03-0.10) they cover 93% or
   more, and where the scatter is larger the floor does not bind. The profile log
   likelihood l(B_crit) is scanned on a log grid over [B_min / 100, B_max * 100] (B_min,
   B_max: the smallest and largest reached batch), its maximum refined on a finer grid (the
   estimate, with its S_min and `fit_sigma`), and the
   95% interval is {B_crit : 2 (l_max - l(B_crit)) <= n log(1 + F_{1,n-2} / (n-2))} (n
   reached batch sizes; the hull of that set when it has gaps, its ends refined by regula
   falsi): the deviance form of the least-squares F interval below, which it equals for
   exact values, and which keeps the level with 3-6 points where the chi-square(1) threshold
   3.84 does not (it covered 0.75-0.89 at sigma 0.2 on the plans below; for n = 3, 4, 6, 11
   the threshold here is 15.3, 9.3, 6.5, 4.9).
   Without brackets (fit_critical_batch given the steps alone, or a reached batch without a
   lower end below its steps) the steps are taken as exact (`fit_method` "points"): for a
   fixed B_crit the best log S_min is the mean of log S - log1p(B_crit / B), the residual sum
   of squares RSS(B_crit) is scanned the same way and the interval is
   {B_crit : RSS <= RSS_min (1 + F_{1,n-2} / (n-2))}; with continuous log-normal noise it
   covers 93-96% of the time, but fed the upper ends of the brackets it overestimates B_crit
   and covers far less (benchmarks/bcrit_coverage.py prints both).
   Coverage, on synthetic curves read off the evaluation plans of the demo (6 batch sizes,
   2 seeds, and 3 or 4 of its batch sizes) and of Masters & Luschi's preset (11, 1 seed),
   with B_crit below, at the edges of, inside and above the batch sizes and sigma 0.05 and
   0.2 (benchmarks/bcrit_coverage.py, 200 curves per setting; a bound counts as covering
   when it is on the truth's side; a fit with neither a number nor a bound claims nothing):
   0.94-1.00 in every setting. Wherever B_crit lies within [2 B_min, B_max / 2], accepted
   (`ok`) fits have a median bias within 5% with 4 or more batch sizes (and 3 at sigma 0.05);
   with 3 batch sizes at sigma 0.2 the few accepted fits (1-24%) lean -12% to +61%. A
   B_crit four times outside the batches gives a number in at most 4.5% of curves.
   The data do not always pin B_crit down, so `fit_status` says what they do say
   (bounds are rounded outwards to whole batches):
   - `too_few_points`: fewer than 3 reached batch sizes;
   - `unconstrained`: the interval runs off both ends of the scan (ci 0 to inf);
   - `beyond_grid`: it runs off the upper end (the curve is still near-linear at the
     largest batch): only the bound B_crit > its lower end (`b_crit_bound` ">lo", ci_high inf);
   - `below_grid`: it runs off the lower end (the curve is flat at the smallest batch):
     only B_crit < its upper end (`b_crit_bound` "<hi", ci_low 0);
   - `above_range` / `below_range`: a closed interval, but the point estimate lies above
     B_max or below B_min: the knee is not bracketed by the reached batch sizes, and a
     number there would be pulled towards them, so only the bound ">lo" or "<hi";
   - `interval_too_wide`: a closed interval, an estimate within [B_min, B_max], but the
     interval wider than a factor 100 (kept, so a reader sees why there is no number);
   - `not_reached`: it would be `beyond_grid` or `above_range`, but a batch size of the
     curve larger than the largest reached one did not reach the target: a bound B_crit > lo
     would claim near-linear scaling those batches did not show, so there is none (the
     interval is kept). `not_reached_reason` gives rule 1's reason over the runs of every
     batch size above the largest reached one (all of them when none reached), whatever the
     status, and is None when the largest batch size reached;
   - `target_above_initial`: rule 7 refused the target, nothing reached it;
   - `ok`: a closed interval no wider than a factor 100 around an estimate within
     [B_min, B_max]; B_crit, S_min and the interval are reported; it stays `ok` when the
     largest batches did not reach.
   The acceptance asks the estimate, not the whole interval, to lie within the batches:
   requiring the interval within [B_min / 2, 2 B_max] as well accepted a B_crit 4x outside
   slightly less often (at most 1% against 3-5% of curves) but, by cutting off the fits on one
   side, biased the accepted ones by about +15% at B_crit = 2 B_min with sigma 0.2 (the
   coverage study).
   At a knee right at B_min or B_max about half the fits are accepted and those lean
   inwards (the others give the bound).
   FIT_STATUS_TEXT gives each status as a reader's phrase. Only an `ok` fit gives B_crit
   and S_min as numbers. Each point's regime follows from
   the local scaling exponent B_crit / (B + B_crit) of an `ok` fit: near-linear when it
   is at least 0.8, plateau when at most 0.2, diminishing in between; none for a point
   that did not reach the target, and none at all when the fit is not `ok`.
6. The noise-scale prediction beside B_crit is batchlab.noise_prediction's, attached to these tables after.
7. Targets (Golmant et al. 2018: "for the speed-up curves, epsilon is the lowest-quartile
   loss reached by the largest batch size"). A target in the config is a number, or the
   string `largest_batch_q25`, which is resolved per (study, model, training fraction), since
   the architectures and data set sizes differ in loss: the runs at the largest batch size of
   that model and fraction that completed (not diverged or stalled) pool the metric at every
   evaluated step but step 0 (for test_error the error 1 - test_acc, the same way), and the
   target is the 25th percentile of those values (np.percentile, linear interpolation). So
   some evaluation of the largest batch is at or below it. When no run of the largest batch completed (with an evaluation
   past step 0), the largest batch size that has one sets it instead (`target_fallback`
   true); when no batch size has one, the target is NaN and nothing reaches it. A resolved
   target, fixed or not, at or above the initial value (`target_initial_value`: the median
   over the model's completed runs, at that training fraction, of the metric at step 0;
   NaN, and no check, without one) is refused: no run reaches it (rules 1 and 6) and the
   fit's status is `target_above_initial`. Rules 1-6 then apply as for a fixed value. Both
   tables keep the resolved number in `target_value` and say where it came from:
   `target_rule` ("fixed" or "largest_batch_q25"), `target_batch_size` (the batch whose
   runs set it; missing for a fixed value), `target_fallback` and `target_initial_value`.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

TARGET_METRICS = ("train_loss", "test_loss", "test_error")
CELL = ["study", "model", "train_fraction", "lr_rule", "base_lr", "batch_size"]
CURVE = ["study", "model", "train_fraction", "lr_rule"]
BEST_RULE = "best"
TARGET_FIXED = "fixed"
LARGEST_BATCH_Q25 = "largest_batch_q25"
TARGET_RULES = (LARGEST_BATCH_Q25,)  # the strings a target list may hold beside numbers (rule 7)
TARGET_QUANTILE = 25.0  # rule 7: Golmant's lowest quartile
TARGET_COLUMNS = ("target_metric", "target_value", "target_initial_value", "target_rule", "target_batch_size",
                  "target_fallback")
SPEEDUP_COLUMNS = (
    "study", "model", "train_fraction", "lr_rule", *TARGET_COLUMNS, "batch_size", "steps_to_target", "best_lr",
    "best_base_lr", "best_lr_edge", "reached", "not_reached_reason", "n_seeds", "n_seeds_reached", "speedup",
    "speedup_ci_low", "speedup_ci_high", "perfect_speedup", "regime", "steps_low", "steps_eval_set",
)
CRITICAL_COLUMNS = (
    "study", "model", "train_fraction", "lr_rule", *TARGET_COLUMNS, "b_crit", "s_min", "ci_low", "ci_high",
    "n_points", "fit_status", "b_crit_bound", "not_reached_reason", "fit_method", "fit_sigma", "steps_eval_set",
)
# dtypes of the tables, so that an empty table still filters by `reached` and sorts by number
_STRING_COLUMNS = {"study", "model", "lr_rule", "target_metric", "target_rule", "regime", "fit_status", "b_crit_bound",
                   "best_lr_edge", "not_reached_reason", "fit_method", "steps_eval_set"}
_INT_COLUMNS = {"batch_size", "n_seeds", "n_seeds_reached", "n_points"}
_NULLABLE_INT_COLUMNS = {"target_batch_size"}  # missing for a fixed target
_BOOL_COLUMNS = {"reached", "target_fallback"}

FIT_OK = "ok"
NOT_REACHED = "not_reached"  # rule 5: an upper bound withheld, the larger batches did not reach the target
TARGET_ABOVE_INITIAL = "target_above_initial"  # rule 7: a target no run can reach
UPPER_BOUNDS = ("beyond_grid", "above_range")  # the statuses that claim scaling past the largest reached batch
MIXED = "mixed"  # rule 1: no single most common reason the runs did not reach; runs read on both sets
EVAL_FULL = "full"  # a curve row's eval_set for the whole train and test sets (batchlab.train.evaluation)
SCAN_MARGIN = 100.0  # rule 5's scan reaches this factor beyond the smallest and largest batch
MAX_INTERVAL_RATIO = 100.0  # a wider interval says too little to report a number
FIT_INTERVAL = "interval"  # rule 5's fit to the steps' brackets (censored likelihood)
FIT_POINTS = "points"  # rule 5's fit to the steps as exact values (least squares), when there are no brackets
SIGMA_FLOOR = 0.03  # rule 5: the interval fit's scatter of log steps is held at least this
# every fit_status as a reader's phrase (the report and the figures say why there is no B_crit with these)
FIT_STATUS_TEXT = {
    "too_few_points": "fewer than 3 batch sizes reached the target",
    "unconstrained": "the data do not bound it",
    "beyond_grid": "still near-linear at the largest batch: no upper end",
    "below_grid": "already flat at the smallest batch: no lower end",
    "above_range": "estimate above the largest batch: the knee is not bracketed",
    "below_range": "estimate below the smallest batch: the knee is not bracketed",
    "interval_too_wide": f"interval wider than {MAX_INTERVAL_RATIO:g}×",
    TARGET_ABOVE_INITIAL: "the target is not below the initial value: no run can reach it",
    NOT_REACHED: "the larger batches did not reach the target",
    FIT_OK: "fitted",
}
SCAN_POINTS = 400
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


def train_fractions(table: pd.DataFrame) -> pd.Series:
    """Each row's training fraction, aligned with `table`: 1.0 where the table (an older runs table) has none."""
    if "train_fraction" not in table:
        return pd.Series(1.0, index=table.index, name="train_fraction")
    return table["train_fraction"].astype(float).fillna(1.0)


def target_text(metric: str, rule: str, value: float | None = None, batch_size=None, fallback: bool = False) -> str:
    """A target as a reader sees it: "train loss ≤ 0.5"; for rule 7's quartile, the value resolved for one
    model ("train loss ≤ 0.123 (lower quartile of the largest batch, per model)"), or without a value the
    rule itself ("train loss ≤ lower quartile of the largest batch")."""
    name = metric.replace("_", " ")
    if rule == TARGET_FIXED:
        return f"{name} ≤ {value:g}"
    if rule != LARGEST_BATCH_Q25:
        return f"{name} ≤ {rule}"
    if value is None:
        return f"{name} ≤ lower quartile of the largest batch"
    if not np.isfinite(value):
        return f"{name}: no target (no run completed to set the lower quartile)"
    where = (f"batch {int(batch_size)}, the largest with a completed run" if fallback and not pd.isna(batch_size)
             else "the largest batch")
    return f"{name} ≤ {value:.3g} (lower quartile of {where}, per model)"


def metric_values(curves: pd.DataFrame, metric: str) -> pd.Series:
    """The target metric at each curve row (NaN between evaluations); test_error = 1 - test_acc."""
    if metric == "test_error":
        return 1.0 - curves["test_acc"]
    if metric in ("train_loss", "test_loss"):
        return curves[metric]
    raise ValueError(f"unknown target metric {metric!r}; choose one of {', '.join(TARGET_METRICS)}")


class ResolvedTarget(NamedTuple):
    """Rule 7: a target as a number, with where it came from."""

    value: float
    rule: str  # TARGET_FIXED or one of TARGET_RULES
    batch_size: int | None = None  # the batch whose runs set it; None for a fixed value
    fallback: bool = False  # the largest batch had no completed run, a smaller one set it
    initial: float = np.nan  # the median over the completed runs of the metric at step 0

    @property
    def refused(self) -> str | None:
        """Why no run may reach the target (TARGET_ABOVE_INITIAL), or None; the only place rule 7 refuses one."""
        return TARGET_ABOVE_INITIAL if self.value >= self.initial else None

    @property
    def reachable_value(self) -> float:
        """The value rules 1 and 6 compare against: NaN, which nothing reaches, for a refused target."""
        return np.nan if self.refused else self.value

    def columns(self) -> dict:
        """The target columns of the tables, but target_metric."""
        return dict(target_value=self.value, target_initial_value=self.initial, target_rule=self.rule,
                    target_batch_size=self.batch_size, target_fallback=self.fallback)


def check_target(target: float | str) -> None:
    """Rule 7's config check: a number, or one of TARGET_RULES (ValueError otherwise)."""
    if isinstance(target, str):
        if target not in TARGET_RULES:
            raise ValueError(f"unknown speed-up target {target!r}; a target is a number or {', '.join(TARGET_RULES)!r}")
    elif isinstance(target, bool) or not isinstance(target, (int, float, np.integer, np.floating)):
        raise ValueError(f"a speed-up target is a number or {', '.join(TARGET_RULES)!r}, not {target!r}")


def resolve_target(runs: pd.DataFrame, curves: pd.DataFrame, metric: str, target: float | str,
                   model: str) -> ResolvedTarget:
    """Rule 7 for one model of one study: `runs` (one study's, with model, batch_size, status) and their `curves`.

    A number is kept as it is; `largest_batch_q25` becomes the lower quartile of the metric over the evaluated
    steps (but step 0) of the completed runs at the model's largest batch size, or at the largest that has some.
    Either carries the initial value, the median of the metric at step 0 over the model's completed runs.
    """
    check_target(target)
    model_runs = runs[runs["model"] == model]
    largest = model_runs["batch_size"].max()
    done = model_runs[model_runs["status"] == "completed"]
    evaluated = curves[curves["run_id"].isin(done["run_id"])]
    evaluated = evaluated.assign(value=metric_values(evaluated, metric))
    evaluated = evaluated[np.isfinite(evaluated["value"])]
    initial = float(evaluated.loc[evaluated["step"] == 0, "value"].median())  # NaN without a step-0 evaluation
    evaluated = evaluated[evaluated["step"] > 0]
    if not isinstance(target, str):
        return ResolvedTarget(float(target), TARGET_FIXED, initial=initial)
    if evaluated.empty:
        return ResolvedTarget(np.nan, target, initial=initial)
    batch_of = evaluated["run_id"].map(done.drop_duplicates("run_id").set_index("run_id")["batch_size"])
    batch = batch_of.max()
    pooled = evaluated.loc[batch_of == batch, "value"].to_numpy(dtype=float)
    return ResolvedTarget(float(np.percentile(pooled, TARGET_QUANTILE)), target, int(batch), bool(batch != largest),
                          initial)


def run_steps_to_target(runs: pd.DataFrame, curves: pd.DataFrame, metric: str, target: float) -> pd.Series:
    """Rule 1, for every run: steps to target, aligned with `runs`; NaN where not reached or not completed."""
    return run_steps_interval(runs, curves, metric, target)["steps"]


def run_steps_interval(runs: pd.DataFrame, curves: pd.DataFrame, metric: str, target: float) -> pd.DataFrame:
    """Rule 1, for every run: where it crossed the target, (steps_low, steps], aligned with `runs`.

    `steps` is the first evaluated step after step 0 at or below the target (rule 1's steps to target), `steps_low`
    the evaluated step before it (0 when there is none); both NaN where not reached or not completed. A step is
    evaluated where the metric is not NaN. `eval_set` says what the evaluation at `steps` measured, the whole sets
    ("full") or the eval subsets ("subset"); a curve without the column predates the subsets and is full.
    """
    value = metric_values(curves, metric).to_numpy(dtype=float)
    step = curves["step"].to_numpy()
    measured_on = curves["eval_set"] if "eval_set" in curves else pd.Series(None, index=curves.index, dtype=object)
    evaluated = pd.DataFrame({"run_id": curves["run_id"].to_numpy(), "step": step, "hit": (step > 0) & (value <= target),
                              "eval_set": measured_on.fillna(EVAL_FULL).to_numpy()})[~np.isnan(value)]
    hits = evaluated[evaluated["hit"]].sort_values("step").drop_duplicates("run_id").set_index("run_id")
    first = hits["step"]
    before = evaluated[evaluated["step"] < evaluated["run_id"].map(first)]
    previous = before.groupby("run_id")["step"].max().reindex(first.index).fillna(0)
    completed = runs["status"] == "completed"
    steps = runs["run_id"].map(first).astype(float).where(completed)
    low = runs["run_id"].map(previous).astype(float).where(completed)
    eval_set = np.where(steps.notna(), runs["run_id"].map(hits["eval_set"]).to_numpy(dtype=object), None)
    return pd.DataFrame({"steps_low": low.to_numpy(), "steps": steps.to_numpy(),
                         "eval_set": pd.Series(eval_set, index=runs.index, dtype=object)}, index=runs.index)


def steps_eval_set(eval_sets) -> str | None:
    """What the steps to target of a group of runs were read on: "full", "subset", MIXED, or None where none reached."""
    seen = set(pd.Series(eval_sets, dtype=object).dropna())
    return None if not seen else seen.pop() if len(seen) == 1 else MIXED


def run_cases(runs: pd.DataFrame, steps, refused: str | None = None) -> np.ndarray:
    """Rule 1's case of each run that did not reach the target, aligned with `runs`: the refusal (rule 7), "budget"
    (it completed without getting there), or its status ("diverged", "stalled"); None where it reached."""
    case = refused or runs["status"].replace("completed", "budget").to_numpy(dtype=object)
    return np.where(np.isnan(np.asarray(steps, dtype=float)), case, None)


def most_common_case(cases) -> str | None:
    """Rule 1's reason a set of runs did not reach: their most common case, MIXED on a tie, None for no case."""
    counts = pd.Series(cases, dtype=object).dropna().value_counts()
    if counts.empty:
        return None
    return counts.index[0] if (counts == counts.iloc[0]).sum() == 1 else MIXED


def lr_edges(runs: pd.DataFrame) -> np.ndarray:
    """Rule 3, per run of one study: where its base LR sits in its rule's base-LR grid, "low" (the smallest), "high"
    (the largest), "only" (a grid of one), else None."""
    grid = runs.groupby("lr_rule")["base_lr"]
    low, high, base = grid.transform("min"), grid.transform("max"), runs["base_lr"]
    return np.select([low == high, base == low, base == high], ["only", "low", "high"], None).astype(object)


def cell_steps(seed_steps: np.ndarray) -> np.ndarray:
    """Rule 2 along the last axis: seeds, with NaN for not reached and -1 for an absent seed."""
    present = seed_steps != -1
    reached = present & ~np.isnan(seed_steps)
    n, n_reached = present.sum(-1), reached.sum(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells where no seed reached
        median = np.nanmedian(np.where(reached, seed_steps, np.nan), axis=-1)
    return np.where((n_reached > 0) & (2 * (n - n_reached) <= n), median, np.nan)


def _seed_matrix(group: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[float], list[int], pd.DataFrame]:
    """(lr, batch, seed) arrays of steps and of their lower ends for one curve (NaN lower ends where `group` has no
    steps_low), the LR and batch axes, and the cell table."""
    group = group.assign(lr_key=group["setting"])
    lrs = sorted(group["lr_key"].unique())
    batches = sorted(group["batch_size"].unique())
    width = group.groupby(["lr_key", "batch_size"]).size().max()
    arr, low = np.full((len(lrs), len(batches), width), -1.0), np.full((len(lrs), len(batches), width), -1.0)
    for (lr, b), cell in group.groupby(["lr_key", "batch_size"]):
        steps = cell["steps"].to_numpy(dtype=float)
        arr[lrs.index(lr), batches.index(b), : len(cell)] = steps
        # a lower end only where the run reached, so that rule 2 counts the same seeds for both ends
        ends = cell["steps_low"].to_numpy(dtype=float) if "steps_low" in cell else np.full(len(cell), np.nan)
        low[lrs.index(lr), batches.index(b), : len(cell)] = np.where(np.isnan(steps), np.nan, ends)
    return arr, low, lrs, batches, group


def _tune(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rules 2-3 on (..., lr, batch, seed): per batch the minimum over LRs, and its LR index."""
    cells = cell_steps(arr)  # (..., lr, batch)
    filled = np.where(np.isnan(cells), np.inf, cells)
    best = filled.min(axis=-2)
    return np.where(np.isinf(best), np.nan, best), filled.argmin(axis=-2)


def _tuned_low(arr: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Rules 2-3's lower end per batch, on (lr, batch, seed): the minimum over the LR cells that reached of the median
    of their seeds' lower ends (NaN where a reached cell has none). Medians and minima keep order, so the tuned
    steps' bracket is (this, the tuned steps]."""
    reached = np.isfinite(cell_steps(arr))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells where no seed has a lower end
        cells = cell_steps(np.where(np.isnan(low) & (arr != -1) & ~np.isnan(arr), -np.inf, low))
    cells = np.where(reached, cells, np.inf)  # -inf: a reached cell without lower ends
    best = cells.min(axis=-2)
    return np.where(np.isfinite(best), best, np.nan)


def speedup_curve(group: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Rules 2-4 for one curve: `group` has one row per run with setting, base_lr, lr, lr_edge (`lr_edges`),
    batch_size, steps, steps_low (`run_steps_interval`; optional, NaN lower ends without it) and case (`run_cases`)."""
    arr, low, lrs, batches, group = _seed_matrix(group)
    steps, best_idx = _tune(arr)
    steps_low = _tuned_low(arr, low)
    rows = []
    lr_of = group.drop_duplicates(["lr_key", "batch_size"]).set_index(["lr_key", "batch_size"])
    ref = steps[0]
    rng = np.random.default_rng(seed)
    n_seeds = (arr != -1).sum(-1)  # (lr, batch)
    # bootstrap: resample the seeds of every cell with replacement
    pick = rng.random((n_boot, *arr.shape))
    idx = np.floor(pick * np.maximum(n_seeds, 1)[None, :, :, None]).astype(int)
    boot = np.take_along_axis(np.broadcast_to(arr, (n_boot, *arr.shape)), idx, axis=-1)
    boot = np.where((np.arange(arr.shape[-1]) < n_seeds[..., None])[None], boot, -1.0)
    boot_steps, _ = _tune(boot)  # (n_boot, batch)
    with np.errstate(all="ignore"):
        boot_speedup = boot_steps[:, :1] / boot_steps
    for j, b in enumerate(batches):
        lr_key = lrs[best_idx[j]]
        reached = bool(np.isfinite(steps[j]))
        sp = boot_speedup[:, j]
        sp = sp[np.isfinite(sp)]
        rows.append(dict(
            batch_size=int(b), steps_to_target=steps[j],
            best_lr=float(lr_of.loc[(lr_key, b), "lr"]) if reached else np.nan,
            best_base_lr=float(lr_of.loc[(lr_key, b), "base_lr"]) if reached else np.nan,
            best_lr_edge=lr_of.loc[(lr_key, b), "lr_edge"] if reached else None,
            reached=reached,
            not_reached_reason=None if reached else most_common_case(group.loc[group["batch_size"] == b, "case"]),
            n_seeds=int(n_seeds[best_idx[j], j]),
            n_seeds_reached=int(((arr[best_idx[j], j] != -1) & ~np.isnan(arr[best_idx[j], j])).sum()),
            speedup=ref / steps[j] if reached and np.isfinite(ref) else np.nan,
            speedup_ci_low=np.percentile(sp, 2.5) if len(sp) > n_boot // 2 else np.nan,
            speedup_ci_high=np.percentile(sp, 97.5) if len(sp) > n_boot // 2 else np.nan,
            perfect_speedup=b / batches[0],
            steps_low=steps_low[j] if reached else np.nan,
        ))
    return pd.DataFrame(rows)


def profile_rss(log_b: np.ndarray, log_s: np.ndarray, log_b_crit) -> tuple[np.ndarray, np.ndarray]:
    """Rule 5's profile: RSS of log S at each log B_crit (any shape), and the log S_min that minimises it."""
    log_b_crit = np.atleast_1d(np.asarray(log_b_crit, dtype=float))
    # log1p(B_crit / B) without overflow for B_crit far above B
    resid = log_s - np.logaddexp(0.0, log_b_crit[..., None] - log_b)
    log_s_min = resid.mean(axis=-1)
    return ((resid - log_s_min[..., None]) ** 2).sum(axis=-1), log_s_min


def _refine_minimum(rss_at, grid: np.ndarray, rss: np.ndarray) -> float:
    """log B_crit at the profile's minimum: the best grid point, refined between its neighbours."""
    i = int(np.argmin(rss))
    bounds = (grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)])
    found = optimize.minimize_scalar(rss_at, bounds=bounds, method="bounded", options={"xatol": 1e-10})
    return float(found.x) if found.fun <= rss[i] else float(grid[i])


def _profile_interval(rss_at, grid: np.ndarray, rss: np.ndarray, best: float,
                      threshold: float) -> tuple[float | None, float | None]:
    """Ends (log B_crit) of the hull of {RSS <= threshold}, each solved to its crossing; None where it runs off.

    An exact fit (RSS_min = 0) gives threshold 0 and the single point `best`, which is right for exact data.
    """
    at = np.searchsorted(grid, best)
    xs, values = np.insert(grid, at, best), np.insert(rss, at, rss_at(best))
    inside = np.flatnonzero(values <= threshold)
    first, last = inside[0], inside[-1]

    def crossing(a: float, b: float) -> float:
        return optimize.brentq(lambda x: rss_at(x) - threshold, a, b, xtol=1e-10)

    low = None if first == 0 else crossing(xs[first - 1], xs[first])
    high = None if last == len(xs) - 1 else crossing(xs[last], xs[last + 1])
    return low, high


def _log_interval_probability(z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
    """log(Phi(z2) - Phi(z1)) for z1 < z2 (z1 may be -inf), computed in the lower tail so that it keeps its digits."""
    flip = (z1 + z2) > 0  # Phi(z2) - Phi(z1) = Phi(-z1) - Phi(-z2)
    low, high = special.log_ndtr(np.where(flip, -z2, z1)), special.log_ndtr(np.where(flip, -z1, z2))
    return high + np.log(-np.expm1(np.minimum(low - high, -1e-300)))


def _censored_terms(alpha: np.ndarray, theta: np.ndarray, a1: np.ndarray, a2: np.ndarray):
    """The interval log likelihood sum_i log(Phi(theta a2_i - alpha) - Phi(theta a1_i - alpha)), its gradient and
    Hessian in (alpha, theta), along the last axis of a1 and a2 (a1 may be -inf: an interval open below)."""
    z1, z2 = theta[..., None] * a1 - alpha[..., None], theta[..., None] * a2 - alpha[..., None]
    log_p = _log_interval_probability(z1, z2)
    closed = np.isfinite(z1)
    z1, a1 = np.where(closed, z1, 0.0), np.where(closed, a1, 0.0)
    r1 = np.where(closed, np.exp(-0.5 * z1 ** 2 - _LOG_SQRT_2PI - log_p), 0.0)  # phi(z1) / P
    r2 = np.exp(-0.5 * z2 ** 2 - _LOG_SQRT_2PI - log_p)
    d11, d22, d12 = z1 * r1 - r1 ** 2, -z2 * r2 - r2 ** 2, r1 * r2  # second derivatives of log P in (z1, z2)
    gradient = ((r1 - r2).sum(-1), (r2 * a2 - r1 * a1).sum(-1))
    hessian = ((d11 + 2 * d12 + d22).sum(-1), -(d11 * a1 + d12 * (a1 + a2) + d22 * a2).sum(-1),
               (d11 * a1 ** 2 + 2 * d12 * a1 * a2 + d22 * a2 ** 2).sum(-1))
    return log_p.sum(-1), gradient, hessian


def _censored_loglik(alpha: np.ndarray, theta: np.ndarray, a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    return _log_interval_probability(theta[..., None] * a1 - alpha[..., None],
                                     theta[..., None] * a2 - alpha[..., None]).sum(-1)


def censored_profile(a1: np.ndarray, a2: np.ndarray, sigma_floor: float = SIGMA_FLOOR,
                     iterations: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The maximum over mu and sigma >= sigma_floor of the log likelihood that y_i - mu ~ N(0, sigma^2) lies in
    (a1_i, a2_i], for every row of a1 and a2 (shape (..., n); a1 may be -inf); with the mu and sigma that reach it.

    Newton's method in (alpha, theta) = (mu / sigma, 1 / sigma), in which the log likelihood is concave (the
    Gaussian measure of an interval is log-concave in its ends), halving a step until it does not lose; theta stays
    in [1e-2, 1 / sigma_floor], and moves along its upper end in alpha alone. The likelihood of intervals that one
    mu can meet together tends to 1 as sigma -> 0; the floor keeps the profile from collapsing onto that set.
    """
    a1, a2 = np.asarray(a1, dtype=float), np.asarray(a2, dtype=float)
    shape = a1.shape[:-1]
    a1, a2 = a1.reshape(-1, a1.shape[-1]), a2.reshape(-1, a2.shape[-1])
    theta_max = 1.0 / sigma_floor
    lower = np.where(np.isfinite(a1), a1, a2 - np.log(2.0))  # a stand-in lower end, for the start only
    mid = 0.5 * (lower + a2)
    mu = mid.mean(-1)
    spread = np.sqrt(((mid - mu[:, None]) ** 2).mean(-1) + ((a2 - lower) ** 2).mean(-1) / 12)
    theta = 1.0 / np.clip(spread, sigma_floor, 1e2)
    alpha = mu * theta
    value = _censored_loglik(alpha, theta, a1, a2)
    for _ in range(iterations):
        _, (g_a, g_t), (h_aa, h_at, h_tt) = _censored_terms(alpha, theta, a1, a2)
        det = h_aa * h_tt - h_at ** 2
        newton = (h_aa < 0) & (det > 0)
        safe = np.where(newton, det, 1.0)
        d_a = np.where(newton, -(h_tt * g_a - h_at * g_t) / safe, g_a)
        d_t = np.where(newton, (h_at * g_a - h_aa * g_t) / safe, g_t)
        at_cap = (theta >= theta_max * (1 - 1e-12)) & (d_t > 0)  # held at the floor of sigma: alpha alone
        d_a = np.where(at_cap, -g_a / np.where(h_aa < 0, h_aa, -1.0), d_a)
        d_t = np.where(at_cap, 0.0, d_t)
        gain = np.zeros_like(value)
        todo, step = np.arange(len(value)), 1.0
        while len(todo) and step > 1e-6:
            new_a = alpha[todo] + step * d_a[todo]
            new_t = np.clip(theta[todo] + step * d_t[todo], 1e-2, theta_max)
            new_v = _censored_loglik(new_a, new_t, a1[todo], a2[todo])
            better = new_v >= value[todo]
            done = todo[better]
            gain[done] = new_v[better] - value[done]
            alpha[done], theta[done], value[done] = new_a[better], new_t[better], new_v[better]
            todo, step = todo[~better], step / 2
        if np.all(gain < 1e-10):
            break
    return value.reshape(shape), (alpha / theta).reshape(shape), (1.0 / theta).reshape(shape)


def profile_loglik(log_b: np.ndarray, log_low: np.ndarray, log_high: np.ndarray,
                   log_b_crit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rule 5's interval profile: at each log B_crit (any shape), the log likelihood of the brackets
    (log_low, log_high] of log S maximised over log S_min and sigma (>= SIGMA_FLOOR), with that log S_min and sigma."""
    log_b_crit = np.atleast_1d(np.asarray(log_b_crit, dtype=float))
    shift = np.logaddexp(0.0, log_b_crit[..., None] - log_b)  # log1p(B_crit / B) without overflow
    return censored_profile(log_low - shift, log_high - shift)


def _bound(sign: str, value: float) -> str:
    """A bound on B_crit as text, rounded outwards so that it never claims more than the interval."""
    return f">{np.floor(value):.0f}" if sign == ">" else f"<{np.ceil(value):.0f}"


def _judge(fit: dict, b_min: float, b_max: float, open_low: bool, open_high: bool) -> dict:
    """Rule 5's acceptance: a closed interval, an estimate within the reached batches (the knee bracketed by them),
    an interval no wider than MAX_INTERVAL_RATIO; else a bound or NaN, and why."""
    lo, hi, estimate = fit["ci_low"], fit["ci_high"], fit["b_crit"]
    if open_low and open_high:
        return dict(fit_status="unconstrained", ci_low=0.0, ci_high=np.inf)
    if open_high:
        return dict(fit_status="beyond_grid", b_crit_bound=_bound(">", lo), ci_high=np.inf)
    if open_low:
        return dict(fit_status="below_grid", b_crit_bound=_bound("<", hi), ci_low=0.0)
    if estimate > b_max:
        return dict(fit_status="above_range", b_crit_bound=_bound(">", lo))
    if estimate < b_min:
        return dict(fit_status="below_range", b_crit_bound=_bound("<", hi))
    if hi / lo > MAX_INTERVAL_RATIO:
        return dict(fit_status="interval_too_wide")
    return dict(fit_status=FIT_OK)


def _points_fit(log_b: np.ndarray, log_s: np.ndarray, level: float) -> tuple[float, float | None, float | None,
                                                                             float, float]:
    """Rule 5 on exact steps: least squares on log S with the F-based profile interval. (log B_crit, its interval's
    ends or None where they run off the scan, log S_min, sigma)."""
    def rss_at(x: float) -> float:
        return float(profile_rss(log_b, log_s, x)[0][0])

    grid = np.linspace(log_b.min() - np.log(SCAN_MARGIN), log_b.max() + np.log(SCAN_MARGIN), SCAN_POINTS)
    rss = profile_rss(log_b, log_s, grid)[0]
    best = _refine_minimum(rss_at, grid, rss)
    rss_min = rss_at(best)
    dof = len(log_b) - 2
    threshold = rss_min * (1 + stats.f.ppf(level, 1, dof) / dof)
    low, high = _profile_interval(rss_at, grid, rss, best, threshold)
    return best, low, high, float(profile_rss(log_b, log_s, best)[1][0]), float(np.sqrt(rss_min / len(log_b)))


def _interval_fit(log_b: np.ndarray, log_low: np.ndarray, log_high: np.ndarray,
                  level: float) -> tuple[float, float | None, float | None, float, float]:
    """Rule 5 on brackets: the censored profile likelihood and its F-calibrated interval, as `_points_fit`."""
    n = len(log_b)

    def profile(x):
        return profile_loglik(log_b, log_low, log_high, x)

    grid = np.linspace(log_b.min() - np.log(SCAN_MARGIN), log_b.max() + np.log(SCAN_MARGIN), SCAN_POINTS)
    loglik = profile(grid)[0]
    i = int(np.argmax(loglik))
    # the maximum, refined on a finer grid between the best point's neighbours
    local = np.linspace(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)], 41)
    local_loglik, local_mu, local_sigma = profile(local)
    j = int(np.argmax(local_loglik))
    best, top = float(local[j]), float(local_loglik[j])
    # deviance 2 (l_max - l) against n log(1 + F_{1,n-2} / (n-2)), the least-squares rule's own threshold
    threshold = n * np.log1p(stats.f.ppf(level, 1, n - 2) / (n - 2))
    at = np.searchsorted(grid, best)
    xs, deviance = np.insert(grid, at, best), 2 * (top - np.insert(loglik, at, top))
    inside = np.flatnonzero(deviance <= threshold)
    first, last = inside[0], inside[-1]
    ends = [None if first == 0 else (xs[first - 1], xs[first]),
            None if last == len(xs) - 1 else (xs[last + 1], xs[last])]
    return (best, *(None if e is None else _crossing(profile, top, threshold, *e) for e in ends),
            float(local_mu[j]), float(local_sigma[j]))


def _crossing(profile, top: float, threshold: float, outside: float, inside: float, rounds: int = 4) -> float:
    """Where the deviance 2 (top - profile) crosses `threshold` between two points, by regula falsi."""
    def excess(x: float) -> float:
        return 2 * (top - float(profile(x)[0][0])) - threshold

    f_out, f_in = excess(outside), excess(inside)
    for _ in range(rounds):
        if not (f_out > 0 >= f_in) or abs(outside - inside) < 1e-9:
            break
        x = inside + (outside - inside) * f_in / (f_in - f_out)
        f_x = excess(x)
        if f_x > 0:
            outside, f_out = x, f_x
        else:
            inside, f_in = x, f_x
    return inside + (outside - inside) * f_in / (f_in - f_out) if f_out > 0 >= f_in and f_out != f_in else inside


def fit_critical_batch(batch_sizes, steps, steps_low=None, level: float = 0.95) -> dict:
    """Rule 5: B_crit, S_min and B_crit's profile interval, with `fit_status` and `b_crit_bound` for what is reported.

    `steps` is NaN at a batch size that did not reach the target. With `steps_low` (rule 1's lower ends, 0 for
    none) every reached batch's steps lie in (steps_low, steps], and the fit is the interval (censored) one,
    `fit_method` "interval"; without it, or where a reached batch has no lower end below its steps, the steps are
    exact values, `fit_method` "points". B_crit and S_min are numbers only when `fit_status` is "ok"; ci_low and
    ci_high are kept for every status that has an interval (0 or inf on the side that runs off the scan);
    `fit_sigma` is the fitted scatter of log steps about the curve.
    """
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    low = np.full(len(s), np.nan) if steps_low is None else np.asarray(steps_low, dtype=float)
    keep = np.isfinite(s) & (s > 0) & np.isfinite(b) & (b > 0)
    unreached = b[~keep & np.isfinite(b) & (b > 0)]
    b, s, low = b[keep], s[keep], low[keep]
    out = dict(b_crit=np.nan, s_min=np.nan, ci_low=np.nan, ci_high=np.nan, n_points=int(len(b)),
               fit_status="too_few_points", b_crit_bound=None, fit_method=None, fit_sigma=np.nan)
    if len(np.unique(b)) < 3:  # two parameters: a third batch size is the least that tests the shape
        return out
    bracketed = bool(np.all((low >= 0) & (low < s)))
    if bracketed:
        with np.errstate(divide="ignore"):  # a lower end 0: open below
            best, lo, hi, log_s_min, sigma = _interval_fit(np.log(b), np.log(low), np.log(s), level)
    else:
        best, lo, hi, log_s_min, sigma = _points_fit(np.log(b), np.log(s), level)
    fit = dict(out, b_crit=float(np.exp(best)), s_min=float(np.exp(log_s_min)),
               ci_low=np.nan if lo is None else float(np.exp(lo)), ci_high=np.nan if hi is None else float(np.exp(hi)),
               fit_method=FIT_INTERVAL if bracketed else FIT_POINTS, fit_sigma=sigma)
    verdict = _judge(fit, b.min(), b.max(), open_low=lo is None, open_high=hi is None)
    if verdict["fit_status"] in UPPER_BOUNDS and (unreached > b.max()).any():  # no bound past a larger failed batch
        verdict |= dict(fit_status=NOT_REACHED, b_crit_bound=None)
    if verdict["fit_status"] != FIT_OK:
        fit.update(b_crit=np.nan, s_min=np.nan)
    return fit | verdict


def regime(batch_size: float, b_crit: float) -> str | None:
    """Rule 5's regime of a point from the fitted curve's local scaling exponent (None without an accepted B_crit)."""
    if not np.isfinite(b_crit):
        return None
    exponent = b_crit / (batch_size + b_crit)
    return "near-linear" if exponent >= 0.8 else "plateau" if exponent <= 0.2 else "diminishing"


def _typed(rows, columns) -> pd.DataFrame:
    """A table with the given columns and their dtypes, whether or not it has rows; a missing string is None."""
    table = pd.DataFrame(rows, columns=list(columns)) if len(rows) else pd.DataFrame(columns=list(columns))
    dtypes = {c: object if c in _STRING_COLUMNS else "int64" if c in _INT_COLUMNS
              else "Int64" if c in _NULLABLE_INT_COLUMNS else bool if c in _BOOL_COLUMNS else float for c in columns}
    table = table.astype(dtypes)
    strings = [c for c in columns if c in _STRING_COLUMNS]
    table[strings] = table[strings].where(table[strings].notna(), None)  # records turn None into NaN beside a string
    return table


def _per_model(study_runs: pd.DataFrame, study_curves: pd.DataFrame, metric: str,
               target: float | str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Rules 1 and 7 for one target of one study, each (model, training fraction) at its own resolved target.

    Steps to target, their lower ends, the runs' cases and the sets the steps were read on, aligned with
    `study_runs`, and the resolved target per (model, train_fraction).
    """
    steps, cases = np.full(len(study_runs), np.nan), np.full(len(study_runs), None, dtype=object)
    low, eval_sets = np.full(len(study_runs), np.nan), np.full(len(study_runs), None, dtype=object)
    resolved = {}
    for model, fraction in study_runs[["model", "train_fraction"]].drop_duplicates().itertuples(index=False):
        mask = ((study_runs["model"] == model) & (study_runs["train_fraction"] == fraction)).to_numpy()
        runs = study_runs[mask]
        curves = study_curves[study_curves["run_id"].isin(runs["run_id"])]
        resolved[(model, fraction)] = got = resolve_target(runs, curves, metric, target, model)
        interval = run_steps_interval(runs, curves, metric, got.reachable_value)
        steps[mask], low[mask] = interval["steps"].to_numpy(), interval["steps_low"].to_numpy()
        eval_sets[mask] = interval["eval_set"].to_numpy()
        cases[mask] = run_cases(runs, steps[mask], got.refused)
    return steps, low, cases, eval_sets, resolved


def speedup_tables(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict,
                   seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """speedup.parquet and critical_batch.parquet for every study's targets.

    `settings` maps study -> its `speedup` config: {"targets": {metric: [values]}, "n_bootstrap": n}, each value
    a number or one of TARGET_RULES (rule 7; anything else is a ValueError before any work);
    studies without targets give no rows, and with no rows at all both tables are empty but typed.
    """
    for cfg in settings.values():
        for metric, values in cfg["targets"].items():
            if metric not in TARGET_METRICS:
                raise ValueError(f"unknown target metric {metric!r}; choose one of {', '.join(TARGET_METRICS)}")
            for target in values:
                check_target(target)
    speed_parts, crit_rows = [], []
    runs = runs.assign(train_fraction=train_fractions(runs))
    for study, cfg in settings.items():
        study_targets, n_boot = cfg["targets"], cfg["n_bootstrap"]
        study_runs = runs[runs["study"] == study]
        study_curves = curves[curves["run_id"].isin(study_runs["run_id"])]
        # an LR setting is one base LR of one rule: the pooled `best` curve keeps rules apart,
        # since at the reference batch all rules give the same LR and would count twice
        setting = study_runs["lr_rule"] + ":" + study_runs["base_lr"].map("{:.6g}".format)
        study_runs = study_runs.assign(setting=setting, lr_edge=lr_edges(study_runs))
        for metric, values in study_targets.items():
            for target in values:
                steps, low, cases, eval_sets, resolved = _per_model(study_runs, study_curves, metric, target)
                per_run = study_runs.assign(steps=steps, steps_low=low, case=cases, eval_set=eval_sets)
                pooled = per_run.assign(lr_rule=BEST_RULE)
                for key, group in pd.concat([per_run, pooled]).groupby(CURVE, sort=False):
                    s, model, fraction, rule = key
                    got = resolved[(model, fraction)]
                    curve = speedup_curve(group, n_boot=n_boot, seed=seed)
                    fit = fit_critical_batch(curve["batch_size"], curve["steps_to_target"], curve["steps_low"])
                    if got.refused:
                        fit["fit_status"] = got.refused
                    # the batch sizes above the largest that reached (all of them when none did)
                    above = ~(group["batch_size"] <= curve.loc[curve["reached"], "batch_size"].max())
                    fit["not_reached_reason"] = most_common_case(group.loc[above, "case"])
                    accepted = fit["b_crit"] if fit["fit_status"] == FIT_OK else np.nan
                    names = dict(study=s, model=model, train_fraction=fraction, lr_rule=rule, target_metric=metric,
                                 **got.columns(), steps_eval_set=steps_eval_set(group["eval_set"]))
                    curve = curve.assign(**names, regime=[regime(b, accepted) if reached else None
                                                          for b, reached in zip(curve["batch_size"], curve["reached"])])
                    speed_parts.append(curve)
                    crit_rows.append(dict(**names, **fit))
    speedup = pd.concat(speed_parts, ignore_index=True) if speed_parts else []
    return _typed(speedup, SPEEDUP_COLUMNS), _typed(crit_rows, CRITICAL_COLUMNS)
