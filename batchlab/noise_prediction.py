"""The noise scale's prediction of the critical batch size, read where training reaches the target.

McCandlish et al. 2018 predict B_crit for a target loss from the gradient noise scale at the
parameters where training reaches that loss: B_simple = tr(Sigma) / |G|^2, and B_noise =
tr(H Sigma) / (G^T H G), which does not assume a well-conditioned Hessian. Both are functions of
the parameters, and under a decaying LR they change by orders of magnitude over a run, so a
prediction read at the wrong state is not a prediction. The rules, for each row of
critical_batch.parquet (one target of one curve):

1. The runs: those of the curve (its study, model, training fraction and LR rule; every rule for
   `best`) that completed and reached the target (batchlab.speedup's rule 1; none for a refused
   target).
2. The level: the train loss at which a run reached the target. For a train-loss target, the
   target itself; for a test target, the run's train loss at the evaluation where it got there.
3. The read: each measure (B_simple: sharpness.parquet's `noise_scale` rows; B_noise: its
   `b_noise` rows) at the run's analysed checkpoints (step > 0, finite positive values, each with
   the full train loss of its checkpoint). Where two consecutive checkpoints bracket the level
   (the first one at or below it and the one before), both within a factor READ_TOLERANCE of it
   in loss, log value and log interval are interpolated linearly in log loss, and the state's
   train loss is the level. Otherwise the checkpoint nearest the level in log loss is read, when
   it lies within that factor; its train loss is the state's. Else the run gives no read: its
   checkpoints are too far from the level (the checkpoint plan's `regular_points` puts more where
   the loss falls).
4. The prediction: the geometric mean of the runs' reads, with a 95% Student-t interval on the
   log scale whose standard error is the larger of the spread over runs and the runs' own errors
   (from their intervals, a 95% interval being +-1.96 standard errors in log), over sqrt(n). One
   run gives its own interval. An interval of width zero (identical reads without their own
   errors) is NaN: there is no interval, never a zero-width one.
5. `b_noise_train_loss`: the median over the reads of both measures of the state's train loss,
   so anyone can check that the prediction was read at the target.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from batchlab.speedup import BEST_RULE, TARGET_ABOVE_INITIAL, run_steps_to_target, train_fractions

READ_TOLERANCE = 1.25  # rule 3: a checkpoint whose train loss is further from the level measures another state
CI_LEVEL = 0.95
MEASURES = {"b_simple": "noise_scale", "b_noise": "b_noise"}  # column prefix -> sharpness.parquet metric
NOISE_COLUMNS = (
    "b_simple", "b_simple_ci_low", "b_simple_ci_high", "b_simple_n_runs",
    "b_noise", "b_noise_ci_low", "b_noise_ci_high", "b_noise_n_runs", "b_noise_train_loss",
)
_Z = stats.norm.ppf(0.5 + CI_LEVEL / 2)


def run_levels(runs: pd.DataFrame, curves: pd.DataFrame, metric: str, target: float) -> pd.Series:
    """Rules 1-2: the train loss at which each run reached the target, indexed by run_id (only runs that did)."""
    steps = run_steps_to_target(runs, curves, metric, target)
    reached = pd.Series(steps.to_numpy(), index=runs["run_id"].to_numpy()).dropna()
    if metric == "train_loss":
        return pd.Series(float(target), index=reached.index, name="level")
    loss = curves.set_index(["run_id", "step"])["train_loss"]
    keys = list(zip(reached.index, reached.astype(int)))
    levels = pd.Series(loss.reindex(keys).to_numpy(), index=reached.index, name="level")
    return levels[np.isfinite(levels) & (levels > 0)]


def read_at_level(points: pd.DataFrame, level: float) -> dict | None:
    """Rule 3 for one run and one measure: {value, ci_low, ci_high, train_loss} at `level`, or None.

    `points` has step, train_loss, value, ci_low, ci_high of the run's analysed checkpoints.
    """
    points = points[(points["step"] > 0) & np.isfinite(points["value"]) & (points["value"] > 0)
                    & np.isfinite(points["train_loss"]) & (points["train_loss"] > 0)].sort_values("step")
    if points.empty:
        return None
    log_loss, log_level, tol = np.log(points["train_loss"].to_numpy()), np.log(level), np.log(READ_TOLERANCE)
    below = np.flatnonzero(log_loss <= log_level)
    if len(below) and below[0] > 0:
        i, j = below[0] - 1, below[0]
        if log_loss[i] - log_level <= tol and log_level - log_loss[j] <= tol:
            w = (log_loss[i] - log_level) / (log_loss[i] - log_loss[j])  # 0 at i, 1 at j
            pair = points.iloc[[i, j]]

            def between(column: str) -> float:
                with np.errstate(divide="ignore", invalid="ignore"):
                    logs = np.log(pair[column].to_numpy(dtype=float))
                return float(np.exp((1 - w) * logs[0] + w * logs[1]))

            return dict(value=between("value"), ci_low=between("ci_low"), ci_high=between("ci_high"),
                        train_loss=float(level))
    distance = np.abs(log_loss - log_level)
    k = int(np.argmin(distance))
    if distance[k] > tol:
        return None
    row = points.iloc[k]
    return dict(value=float(row["value"]), ci_low=float(row["ci_low"]), ci_high=float(row["ci_high"]),
                train_loss=float(row["train_loss"]))


def pooled(values, ci_low, ci_high) -> tuple[float, float, float]:
    """Rule 4: (geometric mean, interval low, interval high) of the runs' reads; NaN for none."""
    values, ci_low, ci_high = (np.asarray(a, dtype=float) for a in (values, ci_low, ci_high))
    n = len(values)
    if n == 0:
        return np.nan, np.nan, np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        own = (np.log(ci_high) - np.log(ci_low)) / (2 * _Z)
    own = np.where(np.isfinite(own) & (own > 0), own, np.nan)
    if n == 1:
        finite = np.isfinite(ci_low[0]) and np.isfinite(ci_high[0]) and ci_high[0] > ci_low[0]
        return (float(values[0]), float(ci_low[0]), float(ci_high[0])) if finite else (float(values[0]), np.nan, np.nan)
    log_values = np.log(values)
    centre = float(np.exp(log_values.mean()))
    own_var = np.nanmean(own ** 2) if np.isfinite(own).any() else 0.0
    se = np.sqrt(max(log_values.var(ddof=1), own_var) / n)
    if not se > 0:
        return centre, np.nan, np.nan
    half = stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * se
    return centre, float(centre * np.exp(-half)), float(centre * np.exp(half))


def run_reads(sharpness: pd.DataFrame, levels: pd.Series) -> pd.DataFrame:
    """Rule 3 for every run with a level: one row per (run_id, measure) that could be read."""
    rows = []
    for prefix, metric in MEASURES.items():
        rows_of = sharpness[sharpness["metric"] == metric]
        rows_of = rows_of.assign(ci_low=rows_of.get("ci_low", np.nan), ci_high=rows_of.get("ci_high", np.nan))
        for run_id, points in rows_of[rows_of["run_id"].isin(levels.index)].groupby("run_id"):
            read = read_at_level(points, levels[run_id])
            if read is not None:
                rows.append(dict(run_id=run_id, measure=prefix, **read))
    return pd.DataFrame(rows, columns=["run_id", "measure", "value", "ci_low", "ci_high", "train_loss"])


def prediction(reads: pd.DataFrame) -> dict:
    """Rules 4-5 over one curve's reads: the NOISE_COLUMNS."""
    out = {}
    for prefix in MEASURES:
        of = reads[reads["measure"] == prefix]
        centre, low, high = pooled(of["value"], of["ci_low"], of["ci_high"])
        out |= {prefix: centre, f"{prefix}_ci_low": low, f"{prefix}_ci_high": high, f"{prefix}_n_runs": len(of)}
    out["b_noise_train_loss"] = float(reads["train_loss"].median()) if len(reads) else np.nan
    return out


def attach_noise_predictions(critical: pd.DataFrame, runs: pd.DataFrame, curves: pd.DataFrame,
                             sharpness: pd.DataFrame) -> pd.DataFrame:
    """critical_batch.parquet with NOISE_COLUMNS: each row's prediction read at its target (rules 1-5)."""
    runs = runs.assign(train_fraction=train_fractions(runs))
    rows, cache = [], {}
    for fit in critical.itertuples(index=False):
        key = (fit.study, fit.model, fit.train_fraction, fit.target_metric, fit.target_value)
        if key not in cache:
            of = runs[(runs["study"] == fit.study) & (runs["model"] == fit.model)
                      & (runs["train_fraction"] == fit.train_fraction)]
            refused = fit.fit_status == TARGET_ABOVE_INITIAL or not np.isfinite(fit.target_value)
            levels = (pd.Series(dtype=float) if refused or sharpness.empty else
                      run_levels(of, curves[curves["run_id"].isin(of["run_id"])], fit.target_metric, fit.target_value))
            cache[key] = run_reads(sharpness, levels).merge(of[["run_id", "lr_rule"]], on="run_id")
        reads = cache[key]
        rows.append(prediction(reads if fit.lr_rule == BEST_RULE else reads[reads["lr_rule"] == fit.lr_rule]))
    table = pd.DataFrame(rows, columns=list(NOISE_COLUMNS), index=critical.index)
    counts = [c for c in NOISE_COLUMNS if c.endswith("_n_runs")]
    table[counts] = table[counts].fillna(0).astype("int64")
    return pd.concat([critical.drop(columns=[c for c in NOISE_COLUMNS if c in critical]), table], axis=1)
