"""Steps to a target, speed-up curves and the critical batch size.

Golmant et al. 2018 and Shallue et al. 2018 ask how many steps each batch size needs to
reach a target, and where a larger batch stops paying. The rules, in order:

1. A run's steps to target: the first *evaluated* step at which the metric reaches the
   target (loss or error <= target). A diverged run, or one that never gets there, has
   not reached it.
2. A (batch size, LR) cell: if more than half of its seeds did not reach the target,
   the cell did not; otherwise its steps are the median over the seeds that did.
3. Per batch size, the minimum over the LR grid, with the LR that gave it (Shallue's
   tuning per batch size): per LR rule (`constant`, `linear`, `sqrt`, each over its own
   base LRs), and over every rule and LR together as the rule `best`.
4. Speed-up: steps at the smallest batch size of the curve over steps at B; perfect
   scaling is B over that smallest batch size. Its 95% interval is a bootstrap over
   seeds: each cell's seeds are resampled with replacement and rules 2-4 applied again.
5. Critical batch size: S(B) = S_min (1 + B_crit / B) (McCandlish et al. 2018) fitted to
   the reached points in log space with SciPy's `curve_fit`, with a 95% interval for
   B_crit from the fit's covariance (t distribution). Each point's regime follows from
   the local scaling exponent B_crit / (B + B_crit) of the fitted curve: near-linear
   when it is at least 0.8, plateau when at most 0.2, diminishing in between (none for
   a point that did not reach the target).
6. The noise-scale prediction: McCandlish's B_simple at the analysed checkpoint whose
   metric is nearest the target (in log), median over the runs of that model and rule;
   only runs measured along training (three checkpoints or more) count when there are any.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats

TARGET_METRICS = ("train_loss", "test_loss", "test_error")
CELL = ["study", "model", "lr_rule", "base_lr", "batch_size"]
CURVE = ["study", "model", "lr_rule"]
BEST_RULE = "best"
SPEEDUP_COLUMNS = (
    "study", "model", "lr_rule", "target_metric", "target_value", "batch_size", "steps_to_target", "best_lr",
    "best_base_lr", "reached", "n_seeds", "n_seeds_reached", "speedup", "speedup_ci_low", "speedup_ci_high",
    "perfect_speedup", "regime",
)
CRITICAL_COLUMNS = (
    "study", "model", "lr_rule", "target_metric", "target_value", "b_crit", "s_min", "ci_low", "ci_high",
    "n_points", "b_noise_predicted",
)


def metric_values(curves: pd.DataFrame, metric: str) -> pd.Series:
    """The target metric at each curve row (NaN between evaluations); test_error = 1 - test_acc."""
    if metric == "test_error":
        return 1.0 - curves["test_acc"]
    if metric in ("train_loss", "test_loss"):
        return curves[metric]
    raise ValueError(f"unknown target metric {metric!r}; choose one of {', '.join(TARGET_METRICS)}")


def run_steps_to_target(runs: pd.DataFrame, curves: pd.DataFrame, metric: str, target: float) -> pd.Series:
    """Rule 1, for every run: steps to target, aligned with `runs`; NaN where not reached or diverged."""
    value = metric_values(curves, metric)
    first = curves.loc[value.notna() & (value <= target)].groupby("run_id")["step"].min()
    steps = runs["run_id"].map(first).astype(float).where(runs["status"] == "completed")
    return steps.rename("steps")


def cell_steps(seed_steps: np.ndarray) -> np.ndarray:
    """Rule 2 along the last axis: seeds, with NaN for not reached and -1 for an absent seed."""
    present = seed_steps != -1
    reached = present & ~np.isnan(seed_steps)
    n, n_reached = present.sum(-1), reached.sum(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells where no seed reached
        median = np.nanmedian(np.where(reached, seed_steps, np.nan), axis=-1)
    return np.where((n_reached > 0) & (2 * (n - n_reached) <= n), median, np.nan)


def _seed_matrix(group: pd.DataFrame) -> tuple[np.ndarray, list[float], list[int], pd.DataFrame]:
    """(lr, batch, seed) array of steps for one curve, the LR and batch axes, and the cell table."""
    group = group.assign(lr_key=group["setting"])
    lrs = sorted(group["lr_key"].unique())
    batches = sorted(group["batch_size"].unique())
    width = group.groupby(["lr_key", "batch_size"]).size().max()
    arr = np.full((len(lrs), len(batches), width), -1.0)
    for (lr, b), cell in group.groupby(["lr_key", "batch_size"]):
        arr[lrs.index(lr), batches.index(b), : len(cell)] = cell["steps"].to_numpy()
    return arr, lrs, batches, group


def _tune(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rules 2-3 on (..., lr, batch, seed): per batch the minimum over LRs, and its LR index."""
    cells = cell_steps(arr)  # (..., lr, batch)
    filled = np.where(np.isnan(cells), np.inf, cells)
    best = filled.min(axis=-2)
    return np.where(np.isinf(best), np.nan, best), filled.argmin(axis=-2)


def speedup_curve(group: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Rules 2-4 for one curve: `group` has one row per run with setting, base_lr, lr, batch_size, steps."""
    arr, lrs, batches, group = _seed_matrix(group)
    steps, best_idx = _tune(arr)
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
            reached=reached, n_seeds=int(n_seeds[best_idx[j], j]),
            n_seeds_reached=int(((arr[best_idx[j], j] != -1) & ~np.isnan(arr[best_idx[j], j])).sum()),
            speedup=ref / steps[j] if reached and np.isfinite(ref) else np.nan,
            speedup_ci_low=np.percentile(sp, 2.5) if len(sp) > n_boot // 2 else np.nan,
            speedup_ci_high=np.percentile(sp, 97.5) if len(sp) > n_boot // 2 else np.nan,
            perfect_speedup=b / batches[0],
        ))
    return pd.DataFrame(rows)


def fit_critical_batch(batch_sizes, steps, level: float = 0.95) -> dict:
    """Rule 5: fit S(B) = S_min (1 + B_crit / B) in log space; B_crit, S_min and B_crit's interval."""
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    keep = np.isfinite(s) & (s > 0)
    b, s = b[keep], s[keep]
    out = dict(b_crit=np.nan, s_min=np.nan, ci_low=np.nan, ci_high=np.nan, n_points=int(len(b)))
    if len(b) < 3:
        return out

    def log_model(bb, log_s_min, log_b_crit):
        return log_s_min + np.log1p(np.exp(log_b_crit) / bb)

    p0 = (np.log(s.min()), np.log(np.median(b)))
    try:
        (log_s_min, log_b_crit), cov = optimize.curve_fit(log_model, b, np.log(s), p0=p0, maxfev=10_000)
    except (RuntimeError, optimize.OptimizeWarning):
        return out
    out.update(b_crit=float(np.exp(log_b_crit)), s_min=float(np.exp(log_s_min)))
    se = float(np.sqrt(cov[1, 1])) if np.isfinite(cov[1, 1]) else np.inf
    if len(b) > 2 and np.isfinite(se):
        t = stats.t.ppf(0.5 + level / 2, len(b) - 2)
        out.update(ci_low=float(np.exp(log_b_crit - t * se)), ci_high=float(np.exp(log_b_crit + t * se)))
    return out


def regime(batch_size: float, b_crit: float) -> str | None:
    """Rule 5's regime of a point from the fitted curve's local scaling exponent."""
    if not np.isfinite(b_crit):
        return None
    exponent = b_crit / (batch_size + b_crit)
    return "near-linear" if exponent >= 0.8 else "plateau" if exponent <= 0.2 else "diminishing"


def noise_prediction(sharpness: pd.DataFrame, curves: pd.DataFrame, runs: pd.DataFrame, metric: str, target: float) -> pd.Series:
    """Rule 6: B_simple nearest the target per (study, model, lr_rule); the `best` rule pools them all."""
    noise = sharpness[sharpness["metric"] == "noise_scale"][["run_id", "step", "value"]]
    at = curves[["run_id", "step"]].assign(m=metric_values(curves, metric)).dropna(subset=["m"])
    at = noise.merge(at, on=["run_id", "step"]).merge(runs[["run_id", *CURVE]], on="run_id")
    # runs measured along training can be caught near the target; a final checkpoint alone cannot
    along = at.groupby("run_id")["step"].transform("nunique") >= 3
    if along.any():
        at = at[along]
    at = at[np.isfinite(at["value"]) & (at["value"] > 0) & (at["m"] > 0)]
    if at.empty or target <= 0:
        return pd.Series(dtype=float)
    at = at.assign(dist=np.abs(np.log(at["m"]) - np.log(target)))
    nearest = at.loc[at.groupby("run_id")["dist"].idxmin()]
    per_rule = nearest.groupby(CURVE)["value"].median()
    pooled = nearest.groupby(["study", "model"])["value"].median()
    pooled.index = pd.MultiIndex.from_tuples([(s, m, BEST_RULE) for s, m in pooled.index], names=CURVE)
    return pd.concat([per_rule, pooled])


def speedup_tables(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict, sharpness: pd.DataFrame | None = None,
                   seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """speedup.parquet and critical_batch.parquet for every study's targets.

    `settings` maps study -> its `speedup` config: {"targets": {metric: [values]}, "n_bootstrap": n};
    studies without targets give no rows.
    """
    speed_parts, crit_rows = [], []
    for study, cfg in settings.items():
        study_targets, n_boot = cfg["targets"], cfg["n_bootstrap"]
        study_runs = runs[runs["study"] == study]
        study_curves = curves[curves["run_id"].isin(study_runs["run_id"])]
        for metric, values in study_targets.items():
            for target in values:
                steps = run_steps_to_target(study_runs, study_curves, metric, target)
                # an LR setting is one base LR of one rule: the pooled `best` curve keeps rules apart,
                # since at the reference batch all rules give the same LR and would count twice
                setting = study_runs["lr_rule"] + ":" + study_runs["base_lr"].map("{:.6g}".format)
                per_run = study_runs.assign(steps=steps.to_numpy(), setting=setting)
                pooled = per_run.assign(lr_rule=BEST_RULE)
                noise = (noise_prediction(sharpness, study_curves, study_runs, metric, target)
                         if sharpness is not None and len(sharpness) else pd.Series(dtype=float))
                for (s, model, rule), group in pd.concat([per_run, pooled]).groupby(CURVE, sort=False):
                    curve = speedup_curve(group, n_boot=n_boot, seed=seed)
                    fit = fit_critical_batch(curve["batch_size"], curve["steps_to_target"])
                    curve = curve.assign(study=s, model=model, lr_rule=rule, target_metric=metric, target_value=target,
                                         regime=[regime(b, fit["b_crit"]) if reached else None
                                                 for b, reached in zip(curve["batch_size"], curve["reached"])])
                    speed_parts.append(curve)
                    crit_rows.append(dict(study=s, model=model, lr_rule=rule, target_metric=metric, target_value=target,
                                          **fit, b_noise_predicted=float(noise.get((s, model, rule), np.nan))))
    speedup = pd.concat(speed_parts, ignore_index=True)[list(SPEEDUP_COLUMNS)] if speed_parts else pd.DataFrame(columns=SPEEDUP_COLUMNS)
    return speedup, pd.DataFrame(crit_rows, columns=list(CRITICAL_COLUMNS))
