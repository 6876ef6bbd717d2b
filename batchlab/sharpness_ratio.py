"""Keskar's comparison: how much sharper the large-batch (LB) solution is than the small-batch (SB) one.

Per study, model and training fraction, at the final checkpoint:
- SB is the smallest and LB the largest batch size among the healthy (status "completed")
  runs whose final checkpoint was measured. A diverged or stalled run is never SB or LB:
  it is not a solution.
- The two ends are paired by everything else that varies in the grid (LR rule, base LR,
  seed, BN batch size), and each pair gives one ratio LB / SB of every measure: Keskar's
  epsilon-sharpness (full space and subspace, at each epsilon), the Hessian's top
  eigenvalue and its trace.
- The epsilon-sharpness comes by two searches (`method`): Keskar's own short L-BFGS-B search and
  the multi-start search run to convergence; each gives ratios of its own, and the headline is the
  converged one where it was measured (the short search falls further short at the sharper end,
  which biases the ratio low).
- The ratio reported is the geometric mean of the pairs' ratios, with a 95% t-interval of
  the mean log-ratio: with the three to five seeds of a sharpness study a percentile
  bootstrap has too few distinct resamples to mean anything, while the t-interval widens
  honestly as the pairs disagree. One pair gives a ratio and no interval.
- Pairs whose measure is not positive at either end (a lambda_max of 0, a NaN from
  non-finite weights) have no ratio and are counted out.
Beside each ratio stand the medians of both ends' values and of their final train loss, so
that a reader sees how far each end was trained.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from batchlab.tables import CONVERGED_SEARCH, KESKAR_SEARCH

MEASURES = ("eps_sharpness_full", "eps_sharpness_subspace", "hessian_lambda_max", "hessian_trace")
PAIR_KEY = ["lr_rule", "base_lr", "seed", "bn_batch_size"]
RATIO_COLUMNS = (
    "study", "model", "train_fraction", "metric", "method", "epsilon", "sb_batch_size", "lb_batch_size", "n_pairs", "sb_value", "lb_value",
    "ratio", "ratio_ci_low", "ratio_ci_high", "sb_train_loss", "lb_train_loss", "sb_test_acc", "lb_test_acc",
)


def final_measures(runs: pd.DataFrame, sharpness: pd.DataFrame) -> pd.DataFrame:
    """The measures at each healthy run's final checkpoint, joined to its run row."""
    healthy = runs[runs["status"] == "completed"]
    if "train_fraction" not in healthy:  # a runs table from before training fractions: all data
        healthy = healthy.assign(train_fraction=1.0)
    rows = sharpness[sharpness["metric"].isin(MEASURES)].merge(
        healthy[["run_id", "study", "model", "train_fraction", "batch_size", "steps", "final_train_loss", "final_test_acc", *PAIR_KEY]],
        on="run_id")
    rows = rows[rows["step"] == rows["steps"]]
    # NaN epsilon (non-epsilon measures) would never match itself in a merge or groupby; a table from before the
    # method column measured epsilon-sharpness by Keskar's search only
    method = rows["method"] if "method" in rows else pd.Series(None, index=rows.index, dtype=object)
    eps_rows = rows["metric"].str.startswith("eps_")
    method = method.where(method.notna(), np.where(eps_rows, KESKAR_SEARCH, ""))
    return rows.assign(epsilon=rows["epsilon"].fillna(0.0), method=method)


def geometric_mean_interval(ratios: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Geometric mean of positive ratios and the t-interval of their mean log."""
    logs = np.log(ratios)
    mean = float(logs.mean())
    if len(logs) < 2:
        return float(np.exp(mean)), np.nan, np.nan
    half = stats.t.ppf(0.5 + level / 2, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return float(np.exp(mean)), float(np.exp(mean - half)), float(np.exp(mean + half))


def _pair_ends(group: pd.DataFrame, sb: int, lb: int) -> pd.DataFrame:
    pair_key = [k for k in PAIR_KEY if group[k].notna().any()]  # bn_batch_size is all-null without ghost BN
    small, large = (group[group["batch_size"] == b] for b in (sb, lb))
    return small.merge(large, on=pair_key, suffixes=("_sb", "_lb"))


def sharpness_ratios(runs: pd.DataFrame, sharpness: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per (study, model, training fraction, metric, epsilon): the LB / SB ratio with its interval (module docstring)."""
    measured = final_measures(runs, sharpness)
    rows = []
    for (study, model, fraction), model_rows in measured.groupby(["study", "model", "train_fraction"]):
        sb, lb = model_rows["batch_size"].min(), model_rows["batch_size"].max()
        if sb == lb:
            continue
        for (metric, method, eps), group in model_rows.groupby(["metric", "method", "epsilon"]):
            pairs = _pair_ends(group, sb, lb)
            positive = pairs[(pairs["value_sb"] > 0) & (pairs["value_lb"] > 0)]
            ratio, low, high = (geometric_mean_interval((positive["value_lb"] / positive["value_sb"]).to_numpy(), level)
                                if len(positive) else (np.nan, np.nan, np.nan))
            rows.append(dict(
                study=study, model=model, train_fraction=fraction, metric=metric, method=method,
                epsilon=eps if eps > 0 else np.nan,
                sb_batch_size=int(sb), lb_batch_size=int(lb), n_pairs=len(positive),
                sb_value=pairs["value_sb"].median(), lb_value=pairs["value_lb"].median(),
                ratio=ratio, ratio_ci_low=low, ratio_ci_high=high,
                sb_train_loss=pairs["final_train_loss_sb"].median(), lb_train_loss=pairs["final_train_loss_lb"].median(),
                sb_test_acc=pairs["final_test_acc_sb"].median(), lb_test_acc=pairs["final_test_acc_lb"].median(),
            ))
    return pd.DataFrame(rows, columns=list(RATIO_COLUMNS))


def searched(ratios: pd.DataFrame) -> pd.DataFrame:
    """The epsilon-sharpness rows of the converged search where a (study, model, fraction, metric) has it, else of
    Keskar's; other measures as they are."""
    if "method" not in ratios or ratios.empty:
        return ratios
    group = ratios.groupby(["study", "model", "train_fraction", "metric"])["method"]
    has_converged = group.transform(lambda m: (m == CONVERGED_SEARCH).any())
    keep = ~ratios["metric"].str.startswith("eps_") | (ratios["method"] == np.where(has_converged, CONVERGED_SEARCH,
                                                                                      KESKAR_SEARCH))
    return ratios[keep]


def headline_ratio(ratios: pd.DataFrame) -> pd.DataFrame:
    """Per (study, model, training fraction): full-space epsilon-sharpness at the largest epsilon (Keskar's 1e-3 by
    default), or the subspace measure where the full one was not run; by the converged search where it ran."""
    ratios = searched(ratios)
    for metric in ("eps_sharpness_full", "eps_sharpness_subspace"):
        rows = ratios[ratios["metric"] == metric]
        if len(rows):
            return rows[rows["epsilon"] == rows.groupby(["study", "model", "train_fraction"])["epsilon"].transform("max")]
    return ratios.iloc[0:0]
