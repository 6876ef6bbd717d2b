"""The papers' claims as data, and the verdict our tables give each one.

A claim (`Claim`) names its paper and the figure or table it comes from, the quantity and how
it is computed from our tables, the paper's own value or shape, the protocol it needs, and a
judge: a function of the tables that returns one row per (study, model, training fraction)
(and, where a claim is asked at several settings such as Keskar's two epsilons, per
`condition`). Every row carries our value with its 95% interval and one verdict:

- `reproduced`: the protocol is met and the interval lies on the claim's side;
- `not reproduced`: the protocol is met and the interval lies on the other side;
- `inconclusive`, with the reason: the protocol is not met (said how), the interval straddles
  the claim's threshold or is missing, a value sits at the edge of its grid, or the quantity
  was not measured in this config.

Where the protocol is not met the number is still given, as context, and the verdict says
why it is not a finding. The caveats column says what differs from the paper whatever the
verdict: the stand-in data set, the budget, the number of seeds.

`findings_table` runs every claim of `CLAIMS` and returns findings.parquet.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from batchlab.quality import CLASSIFICATION, Quality, failed_as_worst, quality_scores, run_tasks, with_fraction
from batchlab.sharpness_ratio import PAIR_KEY, headline_ratio, searched
from batchlab.tables import CONVERGED_SEARCH, KESKAR_SEARCH, MEDIAN_LAST_EPOCHS
from batchlab.speedup import BEST_RULE, FIT_OK, FIT_STATUS_TEXT, lr_edges, train_fractions

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
FINDING_COLUMNS = (
    "claim_id", "paper", "claim", "source", "quantity", "protocol", "study", "model", "train_fraction", "condition",
    "paper_value", "value", "ci_low", "ci_high", "value_text", "verdict", "reason", "caveats",
)
ALL = "all"  # study and model of a row that compares across studies

SMALL_BATCH_LIMIT = 32  # Masters & Luschi: "best test performance is always achieved with a batch size below m = 32"
SMALL_BN_LIMIT = 8  # ... and with a BN batch of 4 or 8
ML_LAST_EPOCHS = 5  # ... each run measured by its median test accuracy over the last 5 epochs
ML_MEASURE = Quality(MEDIAN_LAST_EPOCHS, "median test accuracy over the last epochs", True, False)
ML_FALLBACK = (f"protocol not met for the measure: final test accuracy, not the median over the last {ML_LAST_EPOCHS} "
               f"epochs (eval.last_epochs: {ML_LAST_EPOCHS} records it)")
MATCHED_LOSS_FACTOR = 2.0  # Keskar: the two ends' final train losses within this factor count as matched
CONVERGED_SLACK = 1.5  # ... or both at most this factor above the study's stop loss
ORDER_OF_MAGNITUDE = 10.0  # McCandlish: the noise scale predicts B_crit within about an order of magnitude
FRACTION_TOLERANCE = 2.0  # Golmant: "hardly moves" = B_crit within a factor 2 across training fractions
N_BOOT = 1000

# Keskar et al. 2017, table of epsilon-sharpness (full space), SB / LB, and test accuracy SB -> LB (%)
KESKAR_SHARPNESS = {
    "F1": {1e-3: (1.23, 205.14), 5e-4: (0.61, 42.90)}, "F2": {1e-3: (1.39, 310.64), 5e-4: (0.90, 93.15)},
    "C1": {1e-3: (28.58, 707.23), 5e-4: (7.08, 227.31)}, "C2": {1e-3: (8.68, 925.32), 5e-4: (2.07, 175.31)},
    "C3": {1e-3: (29.85, 258.75), 5e-4: (8.56, 105.11)}, "C4": {1e-3: (12.83, 421.84), 5e-4: (4.07, 109.35)},
}
KESKAR_ACCURACY = {"F1": (98.03, 97.81), "F2": (64.02, 59.45), "C1": (80.04, 77.26), "C2": (89.24, 87.26),
                   "C3": (49.58, 46.45), "C4": (63.08, 57.81)}
# our models and Keskar's networks of the same kind
KESKAR_NETWORK = {"mlp": "F1", "keskar_f1": "F1", "cnn": "C1", "keskar_c1": "C1"}
GOLMANT_B_CRIT = {CLASSIFICATION: 2048, "segmentation": 64, "language_model": 32}
GOLMANT_SETTING = {CLASSIFICATION: "CIFAR-10 ResNets", "segmentation": "DRN-D-22, Cityscapes",
                   "language_model": "LSTM, WikiText-2"}
TASK_NAMES = {CLASSIFICATION: "classification", "segmentation": "segmentation", "language_model": "language model"}
TEST_WORSE_PAPER = "< 1: the test loss scales worse (CIFAR-10)"
FRACTION_PAPER = "≈1× at 100 / 50 / 25% (CIFAR-10, SVHN)"
NOISE_PAPER = "within ≈10×, over tasks whose B_crit spans 6 orders of magnitude"
REGIMES_PAPER = "all three on every workload (e.g. CIFAR-10 ResNet-8, batch 2–8192)"
STAND_INS = {
    "mnist1d": "MNIST-1D stands in for MNIST / CIFAR",
    "shapes": "generated shapes stand in for Cityscapes",
    "pydoc_text": "Python's documentation stands in for WikiText-2",
    "fashion_mnist": "Fashion-MNIST stands in for MNIST",
}


class Tables(NamedTuple):
    """What the claims are judged from: the workflow's tables and each study's config."""

    runs: pd.DataFrame
    speedup: pd.DataFrame
    critical: pd.DataFrame
    ratios: pd.DataFrame
    studies: dict


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    source: str
    claim: str
    quantity: str
    protocol: str
    paper_value: str
    judge: Callable[[Tables], list[dict]]


# --- shared pieces ---------------------------------------------------------------------------

def verdict_of(low: float, high: float, threshold: float, above: bool = True) -> tuple[str, str]:
    """The verdict of an interval against the claim's threshold: the claim holds above it (or below, `above`
    False). A missing end is no interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return INCONCLUSIVE, "no interval (too few runs or pairs)"
    side = low > threshold if above else high < threshold
    other = high < threshold if above else low > threshold
    if side:
        return REPRODUCED, ""
    if other:
        return NOT_REPRODUCED, ""
    return INCONCLUSIVE, f"the interval spans {threshold:g}"


def verdict_within(low: float, high: float, factor: float) -> tuple[str, str]:
    """The verdict of a ratio's interval against agreement within `factor` either way."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return INCONCLUSIVE, "no interval"
    if low >= 1 / factor and high <= factor:
        return REPRODUCED, ""
    if high < 1 / factor or low > factor:
        return NOT_REPRODUCED, ""
    return INCONCLUSIVE, f"interval too wide to tell agreement within {factor:g}×"


def caveats(tables: Tables, study: str, model: str) -> str:
    """What differs from the paper, whatever the verdict: data set, model, budget and seeds."""
    cfg = tables.studies.get(study, {})
    runs = tables.runs[(tables.runs["study"] == study) & (tables.runs["model"] == model)]
    parts = []
    dataset = cfg.get("dataset")
    if dataset in STAND_INS:
        parts.append(STAND_INS[dataset])
    parts.append(f"model {model}")
    budget = cfg.get("budget", {})
    if "epochs" in budget:
        stop = budget.get("stop")
        parts.append(f"{budget['epochs']} epochs" + (f", stopped at train loss {stop['train_loss']:g}"
                                                     if stop and "train_loss" in stop else ""))
    if len(runs):
        parts.append(f"{runs['seed'].nunique()} seed{'s' if runs['seed'].nunique() > 1 else ''}")
    return "; ".join(parts)


def row(tables: Tables, study: str, model: str, fraction: float, value: float, low: float, high: float,
        value_text: str, verdict: str, reason: str, paper_value: str | None = None, condition: str = "") -> dict:
    return dict(study=study, model=model, train_fraction=float(fraction), condition=condition,
                value=float(value), ci_low=float(low), ci_high=float(high), value_text=value_text,
                verdict=verdict, reason=reason, caveats=caveats(tables, study, model),
                **({} if paper_value is None else {"paper_value": paper_value}))


def not_measured(tables: Tables, why: str) -> list[dict]:
    """The one row of a claim this config does not ask."""
    return [dict(study=ALL, model=ALL, train_fraction=1.0, condition="", value=np.nan, ci_low=np.nan,
                 ci_high=np.nan, value_text="–", verdict=INCONCLUSIVE, reason=f"not measured: {why}", caveats="")]


def batch_count_text(value: float) -> str:
    """A batch-size-like number (B_crit, B_simple, B_noise): whole from 10 up, two significant digits below,
    so that a lower end of 0.06 does not print as 0."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


def interval_text(value: float, low: float, high: float, spec: str | Callable[[float], str] = "{:.3g}",
                  unit: str = "") -> str:
    """'value [low, high]' (the value alone without a finite interval); `spec` a format string or a function."""
    fmt = spec if callable(spec) else spec.format
    if not known(value):
        return "–"
    if known(low) and known(high):
        return f"{fmt(value)}{unit} [{fmt(low)}, {fmt(high)}]"
    return f"{fmt(value)}{unit}"


def known(x) -> bool:
    """A finite number: not None, NaN, pandas' NA or infinite."""
    return not pd.isna(x) and bool(np.isfinite(x))


def model_groups(runs: pd.DataFrame):
    """(study, model, fraction, runs) of every study's model and training fraction."""
    runs = with_fraction(runs)
    for (study, model, fraction), group in runs.groupby(["study", "model", "train_fraction"], sort=True):
        yield study, model, float(fraction), group


def study_task(tables: Tables, study: str) -> str:
    mine = tables.runs[tables.runs["study"] == study]
    return run_tasks(mine).iloc[0] if len(mine) else CLASSIFICATION


# --- Masters & Luschi --------------------------------------------------------------------------

def masters_luschi_scores(runs: pd.DataFrame) -> tuple[pd.Series, str, str]:
    """Each run's score for Masters & Luschi's claims, the measure's name, and a note where it is not theirs.

    Their measure is the median test accuracy over the last 5 epochs (runs.parquet's
    median_last_epochs_test_acc), used where every completed run of a classification group has one (a run that
    did not complete scores 0, as in `quality_scores`). Otherwise the final task quality stands in, and for a
    classification group the note says the protocol's measure is missing."""
    classification = bool((run_tasks(runs) == CLASSIFICATION).all())
    completed = runs["status"].astype(str) == "completed"
    recorded = runs.get(MEDIAN_LAST_EPOCHS, pd.Series(np.nan, index=runs.index))
    if not (classification and completed.any() and recorded[completed].notna().all()):
        return quality_scores(runs), "final test quality", ML_FALLBACK if classification else ""
    counts = runs.get("median_last_epochs_n", pd.Series(ML_LAST_EPOCHS, index=runs.index))[completed]
    fewest = int(counts.min())
    name = f"median test accuracy over the last {fewest} epochs"
    note = "" if fewest >= ML_LAST_EPOCHS else f"a median over {fewest} epoch ends, not the paper's {ML_LAST_EPOCHS}"
    return failed_as_worst(runs, ML_MEASURE), name, note


def score_cube(runs: pd.DataFrame, column: str, scores: pd.Series) -> tuple[np.ndarray, list, list]:
    """(setting, `column` value, seed) array of the runs' `scores` (NaN where absent), with its two axes; a
    setting is one (LR rule, base LR)."""
    runs = runs.assign(score=scores, setting=list(zip(runs["lr_rule"], runs["base_lr"])))
    settings, values = sorted(runs["setting"].unique()), sorted(runs[column].unique())
    width = int(runs.groupby(["setting", column]).size().max())
    cube = np.full((len(settings), len(values), width), np.nan)
    for (setting, value), cell in runs.groupby(["setting", column]):
        cube[settings.index(setting), values.index(value), : len(cell)] = cell["score"].to_numpy()
    return cube, settings, values


def cell_medians(cube: np.ndarray) -> np.ndarray:
    """Median over seeds of (..., setting, value, seed); -inf for a cell without runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(cube, axis=-1)
    return np.where(np.isnan(medians), -np.inf, medians)


def best_along(cube: np.ndarray) -> np.ndarray:
    """Index of the best value of the middle axis of (..., setting, value, seed): the best median over seeds at
    the best setting."""
    return np.argmax(cell_medians(cube).max(axis=-2), axis=-1)


def bootstrap_cube(cube: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Resamples of the cube's seeds, with replacement within each cell (absent seeds stay absent)."""
    rng = np.random.default_rng(seed)
    present = ~np.isnan(cube)
    n = np.maximum(present.sum(-1), 1)
    order = np.argsort(~present, axis=-1, kind="stable")  # present seeds first
    packed = np.take_along_axis(cube, order, axis=-1)
    idx = np.floor(rng.random((n_boot, *cube.shape)) * n[None, ..., None]).astype(int)
    boot = np.take_along_axis(np.broadcast_to(packed, (n_boot, *cube.shape)), idx, axis=-1)
    return np.where(present[None].any(-1, keepdims=True), boot, np.nan)


def best_setting_per_value(cube: np.ndarray) -> np.ndarray:
    """Index of the best setting at each value of a (setting, value, seed) cube."""
    return np.argmax(cell_medians(cube), axis=0)


def judge_small_batches(tables: Tables) -> list[dict]:
    rows = []
    for study, model, fraction, runs in model_groups(tables.runs):
        batches = sorted(runs["batch_size"].unique())
        if len(batches) < 3:
            continue
        scores, measure, measure_note = masters_luschi_scores(runs)
        cube, settings, batches = score_cube(runs, "batch_size", scores)
        best = batches[int(best_along(cube))]
        boot = np.array(batches)[best_along(bootstrap_cube(cube))]
        low, high = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
        edge_of = dict(zip(zip(runs["lr_rule"], runs["base_lr"]), lr_edges(runs)))
        edges = [edge_of[settings[i]] is not None for i in best_setting_per_value(cube)]
        at_best = edges[batches.index(best)]
        verdict, reason = verdict_of(low, high, SMALL_BATCH_LIMIT + 0.5, above=False)
        stop = tables.studies.get(study, {}).get("budget", {}).get("stop")
        if runs["seed"].nunique() < 2:
            verdict, reason = INCONCLUSIVE, "one seed: no interval over seeds"
        if measure_note == ML_FALLBACK:
            verdict, reason = INCONCLUSIVE, ""  # the note says why
        if stop:
            verdict, reason = INCONCLUSIVE, "protocol not met: trained to a loss, not for equal epochs"
        elif at_best or sum(edges) * 2 > len(edges):
            verdict, reason = INCONCLUSIVE, (
                f"protocol not met: the LR grid does not bracket the optimum (best LR at a grid edge at "
                f"{sum(edges)} of {len(edges)} batch sizes{', the best one among them' if at_best else ''})")
        notes = [measure_note]
        if best == batches[0]:
            notes.append("the best batch is the smallest of the grid: the optimum may lie below it")
        if best == batches[-1]:
            notes.append("the best batch is the largest of the grid")
        reason = "; ".join([r for r in (reason, *notes) if r])
        text = f"best m = {best} by {measure} (95% over seeds: {low:.0f}–{high:.0f}; grid {batches[0]}–{batches[-1]})"
        rows.append(row(tables, study, model, fraction, best, low, high, text, verdict, reason))
    return rows or not_measured(tables, "no study with 3 or more batch sizes")


def judge_ghost_bn(tables: Tables) -> list[dict]:
    runs = tables.runs[tables.runs["bn_batch_size"].notna()] if "bn_batch_size" in tables.runs else tables.runs[:0]
    rows = []
    for study, model, fraction, group in model_groups(runs):
        if group["bn_batch_size"].nunique() < 2:
            continue
        bests, boots = [], []
        scores, measure, measure_note = masters_luschi_scores(group)
        for _, part in group.groupby("batch_size"):
            cube, _, bns = score_cube(part, "bn_batch_size", scores)
            bests.append(bns[int(best_along(cube))])
            boots.append(np.array(bns)[best_along(bootstrap_cube(cube))])
        largest = max(bests)
        boot_largest = np.max(boots, axis=0)
        low, high = float(np.percentile(boot_largest, 2.5)), float(np.percentile(boot_largest, 97.5))
        verdict, reason = verdict_of(low, high, SMALL_BN_LIMIT + 0.5, above=False)
        if group["seed"].nunique() < 2:
            verdict, reason = INCONCLUSIVE, "one seed: no interval over seeds"
        if measure_note == ML_FALLBACK:
            verdict, reason = INCONCLUSIVE, ""  # the note says why
        reason = "; ".join(r for r in (reason, measure_note) if r)
        text = (f"largest best BN batch by {measure} over {len(bests)} SGD batches: {largest:.0f} "
                f"(95%: {low:.0f}–{high:.0f}); best per SGD batch {', '.join(f'{b:.0f}' for b in bests)}")
        rows.append(row(tables, study, model, fraction, largest, low, high, text, verdict, reason))
    return rows or not_measured(tables, "no study varies bn_batch_size (a ghost-BN grid)")


# --- Keskar ---------------------------------------------------------------------------------------

def keskar_protocol(study_cfg: dict, sb_loss: float, lb_loss: float) -> tuple[bool, str]:
    """Keskar's comparison needs both ends trained to convergence, or compared at a matched train loss."""
    stop = study_cfg.get("budget", {}).get("stop") or {}
    stop_loss = stop.get("train_loss")
    if stop_loss is not None and max(sb_loss, lb_loss) <= CONVERGED_SLACK * stop_loss:
        return True, ""
    if min(sb_loss, lb_loss) > 0 and max(sb_loss, lb_loss) / min(sb_loss, lb_loss) <= MATCHED_LOSS_FACTOR:
        return True, ""
    how = "equal epochs" if stop_loss is None else f"stop loss {stop_loss:g} not reached"
    return False, (f"protocol not met ({how}): SB ended at train loss {sb_loss:.3g}, LB at {lb_loss:.3g}, "
                   f"neither converged nor within {MATCHED_LOSS_FACTOR:g}× of each other")


def keskar_paper_ratio(model: str, epsilon: float) -> str:
    ratios = {net: lb / sb for net, by_eps in KESKAR_SHARPNESS.items() for eps, (sb, lb) in by_eps.items()
              if np.isclose(eps, epsilon)}
    net = KESKAR_NETWORK.get(model)
    spread = f"{min(ratios.values()):.0f}–{max(ratios.values()):.0f}× over F1–C4" if ratios else "not reported"
    return f"{ratios[net]:.0f}× ({net}); {spread}" if net in ratios else spread


def keskar_search_text(ratios: pd.DataFrame, r) -> str:
    """Beside a ratio by the converged search, the same ratio by Keskar's own short search, where both ran."""
    if getattr(r, "method", KESKAR_SEARCH) != CONVERGED_SEARCH:
        return ""
    same = ratios[(ratios["study"] == r.study) & (ratios["model"] == r.model) & (ratios["metric"] == r.metric)
                  & np.isclose(ratios["epsilon"], r.epsilon) & (ratios["method"] == KESKAR_SEARCH)]
    if "train_fraction" in same:
        same = same[np.isclose(same["train_fraction"], getattr(r, "train_fraction", 1.0))]
    if same.empty:
        return ""
    k = same.iloc[0]
    return f"; Keskar's 10-iteration search: {interval_text(k['ratio'], k['ratio_ci_low'], k['ratio_ci_high'], unit='×')}"


def judge_sharper_lb(tables: Tables, threshold: float = 1.0) -> list[dict]:
    rows = []
    chosen = searched(tables.ratios)
    full = chosen[chosen["metric"] == "eps_sharpness_full"]
    ratios = full if len(full) else headline_ratio(tables.ratios)
    for r in ratios.itertuples():
        met, why = keskar_protocol(tables.studies.get(r.study, {}), r.sb_train_loss, r.lb_train_loss)
        verdict, reason = verdict_of(r.ratio_ci_low, r.ratio_ci_high, threshold) if met else (INCONCLUSIVE, why)
        search = "converged search" if getattr(r, "method", None) == CONVERGED_SEARCH else "Keskar's search"
        text = (f"{interval_text(r.ratio, r.ratio_ci_low, r.ratio_ci_high, unit='×')} "
                f"(B = {r.lb_batch_size} / {r.sb_batch_size}, {r.n_pairs} pairs, {search}"
                f"{keskar_search_text(tables.ratios, r)})")
        if not met:
            text += " — context only"
        rows.append(row(tables, r.study, r.model, getattr(r, "train_fraction", 1.0), r.ratio, r.ratio_ci_low,
                        r.ratio_ci_high, text, verdict, reason, paper_value=keskar_paper_ratio(r.model, r.epsilon),
                        condition=f"ε = {r.epsilon:g}"))
    return rows or not_measured(tables, "no ε-sharpness measured at two batch sizes")


def judge_sharper_by_orders(tables: Tables) -> list[dict]:
    return judge_sharper_lb(tables, threshold=ORDER_OF_MAGNITUDE)


def paired_quality(group: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """The healthy smallest- and largest-batch runs of one model, paired by LR rule, base LR and seed."""
    healthy = group[group["status"] == "completed"]
    sb, lb = healthy["batch_size"].min(), healthy["batch_size"].max()
    healthy = healthy.assign(score=quality_scores(healthy))
    key = [k for k in PAIR_KEY if healthy[k].notna().any()]
    pairs = healthy[healthy["batch_size"] == sb].merge(healthy[healthy["batch_size"] == lb], on=key,
                                                       suffixes=("_sb", "_lb"))
    return pairs, sb, lb


def judge_lb_worse(tables: Tables) -> list[dict]:
    rows = []
    for study, model, fraction, group in model_groups(tables.runs):
        # Keskar's networks classify: a perplexity or a mean IoU has no SB / LB accuracy gap to compare
        if study_task(tables, study) != CLASSIFICATION:
            continue
        if group.loc[group["status"] == "completed", "batch_size"].nunique() < 2:
            continue
        pairs, sb, lb = paired_quality(group)
        if pairs.empty:
            continue
        diff = (pairs["score_lb"] - pairs["score_sb"]).to_numpy()
        mean = float(diff.mean())
        if len(diff) > 1 and diff.std(ddof=1) > 0:
            half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
            low, high = mean - half, mean + half
        else:
            low = high = np.nan
        met, why = keskar_protocol(tables.studies.get(study, {}), pairs["final_train_loss_sb"].median(),
                                   pairs["final_train_loss_lb"].median())
        verdict, reason = verdict_of(low, high, 0.0, above=False) if met else (INCONCLUSIVE, why)
        text = (f"LB − SB test accuracy: {interval_text(100 * mean, 100 * low, 100 * high, '{:+.1f}', ' pp')} "
                f"(B = {lb} / {sb}, {len(diff)} pairs)")
        net = KESKAR_NETWORK.get(model)
        drops = {n: lb_acc - sb_acc for n, (sb_acc, lb_acc) in KESKAR_ACCURACY.items()}
        paper = ((f"{drops[net]:+.1f} pp ({net}); " if net else "")
                 + f"{max(drops.values()):+.1f} to {min(drops.values()):+.1f} pp over F1–C4")
        rows.append(row(tables, study, model, fraction, mean, low, high, text + ("" if met else " — context only"),
                        verdict, reason, paper_value=paper))
    return rows or not_measured(tables, "no classification study with two healthy batch sizes")


# --- Golmant, Shallue, McCandlish: the steps to target ----------------------------------------

def headline_fits(tables: Tables, metric: str = "train_loss") -> list[pd.Series]:
    """Per (study, model, training fraction): the tuned (`best`) fit at the study's first target on `metric`."""
    crit = tables.critical
    if crit.empty:
        return []
    crit = crit.assign(train_fraction=train_fractions(crit))
    out = []
    tuned = crit[(crit["lr_rule"] == BEST_RULE) & (crit["target_metric"] == metric)]
    for _, rows in tuned.groupby(["study", "model", "train_fraction"], sort=True):
        out.append(rows.iloc[0])  # speedup_tables writes a study's targets in their configured order
    return out


def curve_points(tables: Tables, fit: pd.Series) -> pd.DataFrame:
    """The speed-up rows of a fit's curve."""
    sp = tables.speedup.assign(train_fraction=train_fractions(tables.speedup))
    mask = ((sp["study"] == fit["study"]) & (sp["model"] == fit["model"]) & (sp["lr_rule"] == fit["lr_rule"])
            & np.isclose(sp["train_fraction"], fit["train_fraction"]) & (sp["target_metric"] == fit["target_metric"])
            & (sp["target_rule"] == fit["target_rule"]) & np.isclose(sp["target_value"].astype(float),
                                                                     float(fit["target_value"]), equal_nan=True))
    return sp[mask.to_numpy()].sort_values("batch_size")


def fit_text(fit: pd.Series) -> str:
    if fit["fit_status"] == FIT_OK:
        return f"B_crit = {interval_text(fit['b_crit'], fit['ci_low'], fit['ci_high'], '{:.0f}')}"
    bound = fit.get("b_crit_bound")
    status = FIT_STATUS_TEXT.get(fit["fit_status"], str(fit["fit_status"]))
    reason = fit.get("not_reached_reason")
    status += f" ({reason})" if isinstance(reason, str) and reason else ""
    return f"B_crit {bound} ({status})" if isinstance(bound, str) and bound else f"no B_crit ({status})"


def steps_do_not_fall(points: pd.DataFrame) -> bool:
    """The larger batch takes more steps: the speed-up interval at the largest reached batch lies below 1."""
    reached = points[points["reached"].eq(True)]
    return len(reached) >= 3 and bool(reached["speedup_ci_high"].iloc[-1] < 1)


def fit_inconclusive(fit: pd.Series) -> str:
    """Why a fit that is not `ok` gives no verdict."""
    status = fit["fit_status"]
    text = FIT_STATUS_TEXT.get(status, str(status))
    if status in ("beyond_grid", "above_range", "below_grid", "below_range"):
        return f"grid edge: {text}"
    if status == "not_reached":
        reason = fit.get("not_reached_reason")
        return f"{text}" + (f": {reason}" if isinstance(reason, str) and reason else "")
    return text


def judge_knee(tables: Tables) -> list[dict]:
    rows = []
    for fit in headline_fits(tables):
        points = curve_points(tables, fit)
        task = study_task(tables, fit["study"])
        if steps_do_not_fall(points):
            verdict, reason = NOT_REPRODUCED, "steps to target do not fall with the batch size"
        elif fit["fit_status"] != FIT_OK:
            verdict, reason = INCONCLUSIVE, fit_inconclusive(fit)
        elif not (points["reached"].eq(True) & (points["batch_size"] >= fit["b_crit"])).any():
            verdict, reason = INCONCLUSIVE, "the flat side is not observed: no reached batch at or past B_crit"
        else:
            verdict, reason = REPRODUCED, ""
        paper = f"≈{GOLMANT_B_CRIT[task]} ({GOLMANT_SETTING[task]})" if task in GOLMANT_B_CRIT else "–"
        rows.append(row(tables, fit["study"], fit["model"], fit["train_fraction"], fit["b_crit"], fit["ci_low"],
                        fit["ci_high"], f"{fit_text(fit)} at {target_name(fit)}", verdict, reason, paper_value=paper))
    return rows or not_measured(tables, "no train-loss target configured")


def target_name(fit: pd.Series) -> str:
    name = fit["target_metric"].replace("_", " ")
    return f"{name} ≤ {float(fit['target_value']):.3g}" if np.isfinite(float(fit["target_value"])) else name


def judge_domains(tables: Tables) -> list[dict]:
    ok = [f for f in headline_fits(tables) if f["fit_status"] == FIT_OK]
    by_task: dict[str, list] = {}
    for f in ok:
        by_task.setdefault(study_task(tables, f["study"]), []).append(f)
    known = [t for t in by_task if t in GOLMANT_B_CRIT]
    tasks_run = {study_task(tables, s) for s in tables.runs["study"].unique()}
    paper = " > ".join(f"{TASK_NAMES[t]} ≈{GOLMANT_B_CRIT[t]}" for t in sorted(GOLMANT_B_CRIT, key=GOLMANT_B_CRIT.get,
                                                                                 reverse=True))
    ours = "; ".join(f"{TASK_NAMES[t]}: " + ", ".join(
        f"{f['model']} {interval_text(f['b_crit'], f['ci_low'], f['ci_high'], '{:.0f}')}" for f in by_task[t])
        for t in known) or "–"
    agree = disagree = 0
    for i, a in enumerate(known):
        for b in known[i + 1:]:
            for fa in by_task[a]:
                for fb in by_task[b]:
                    if fa["ci_low"] > fb["ci_high"] or fb["ci_low"] > fa["ci_high"]:
                        ours_order = fa["b_crit"] > fb["b_crit"]
                        papers_order = GOLMANT_B_CRIT[a] > GOLMANT_B_CRIT[b]
                        agree += ours_order == papers_order
                        disagree += ours_order != papers_order
    if len(known) < 2:
        missing = sorted(set(GOLMANT_B_CRIT) - set(known))
        verdict, reason = INCONCLUSIVE, (f"a B_crit in fewer than two domains (none in "
                                         f"{', '.join(TASK_NAMES[t] for t in missing)}; "
                                         f"domains trained: {', '.join(sorted(TASK_NAMES.get(t, t) for t in tasks_run))})")
    elif disagree:
        verdict, reason = NOT_REPRODUCED, f"{disagree} pair(s) of domains with separate intervals in the other order"
    elif agree:
        verdict, reason = REPRODUCED, f"{agree} pair(s) of domains with separate intervals, in the paper's order"
    else:
        verdict, reason = INCONCLUSIVE, "the domains' intervals overlap"
    return [dict(study=ALL, model=ALL, train_fraction=1.0, condition="", value=np.nan, ci_low=np.nan, ci_high=np.nan,
                 value_text=ours, verdict=verdict, reason=reason, paper_value=paper,
                 caveats="; ".join(dict.fromkeys(STAND_INS[c["dataset"]] for c in tables.studies.values()
                                                 if c.get("dataset") in STAND_INS)))]


def judge_test_worse(tables: Tables) -> list[dict]:
    rows = []
    test = {(f["study"], f["model"], f["train_fraction"]): f for f in headline_fits(tables, "test_loss")}
    for train in headline_fits(tables):
        key = (train["study"], train["model"], train["train_fraction"])
        if key not in test:
            continue
        t = test[key]
        if train["fit_status"] != FIT_OK or t["fit_status"] != FIT_OK:
            which = "train" if train["fit_status"] != FIT_OK else "test"
            bad = train if which == "train" else t
            verdict, reason = INCONCLUSIVE, f"no B_crit on the {which} loss: {fit_inconclusive(bad)}"
            value = low = high = np.nan
        else:
            # the two fits come from different curves: the conservative interval of the ratio
            value = t["b_crit"] / train["b_crit"]
            low, high = t["ci_low"] / train["ci_high"], t["ci_high"] / train["ci_low"]
            verdict, reason = verdict_of(low, high, 1.0, above=False)
        text = (f"B_crit test / train = {interval_text(value, low, high, unit='×')} "
                f"(test: {fit_text(t)}; train: {fit_text(train)})")
        rows.append(row(tables, *key, value, low, high, text, verdict, reason,
                        paper_value=TEST_WORSE_PAPER))
    return rows or not_measured(tables, "no study with both a train-loss and a test-loss target")


def judge_fraction(tables: Tables) -> list[dict]:
    rows = []
    fits = headline_fits(tables)
    by_model: dict[tuple, list] = {}
    for f in fits:
        by_model.setdefault((f["study"], f["model"]), []).append(f)
    for (study, model), group in by_model.items():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda f: -f["train_fraction"])
        full, small = group[0], group[-1]
        if full["fit_status"] != FIT_OK or small["fit_status"] != FIT_OK:
            value = low = high = np.nan
            verdict, reason = INCONCLUSIVE, "no B_crit at both fractions: " + fit_inconclusive(
                full if full["fit_status"] != FIT_OK else small)
        else:
            value = small["b_crit"] / full["b_crit"]
            low, high = small["ci_low"] / full["ci_high"], small["ci_high"] / full["ci_low"]
            verdict, reason = verdict_within(low, high, FRACTION_TOLERANCE)
        text = (f"B_crit at {small['train_fraction']:.0%} / at {full['train_fraction']:.0%} = "
                f"{interval_text(value, low, high, unit='×')}")
        rows.append(row(tables, study, model, small["train_fraction"], value, low, high, text, verdict, reason,
                        paper_value=FRACTION_PAPER))
    return rows or not_measured(tables, "no study trains at more than one training fraction")


NOISE_MEASURES = {"b_simple": "B_simple = tr(Σ) / |G|²", "b_noise": "B_noise = tr(HΣ) / GᵀHG"}


def judge_noise_scale(tables: Tables) -> list[dict]:
    rows = []
    for fit in headline_fits(tables):
        for measure, name in NOISE_MEASURES.items():
            prediction = fit.get(measure, np.nan)
            if not np.isfinite(prediction):
                continue
            lo_n, hi_n = fit[f"{measure}_ci_low"], fit[f"{measure}_ci_high"]
            label = measure.replace("b_", "B_")
            if fit["fit_status"] != FIT_OK:
                value = low = high = np.nan
                verdict, reason = INCONCLUSIVE, f"no B_crit: {fit_inconclusive(fit)}"
            else:
                value = prediction / fit["b_crit"]
                low, high = lo_n / fit["ci_high"], hi_n / fit["ci_low"]
                verdict, reason = verdict_within(low, high, ORDER_OF_MAGNITUDE)
                if verdict != INCONCLUSIVE and not hi_n > lo_n:
                    verdict, reason = INCONCLUSIVE, "the prediction has no interval (one run with an exact value)"
            text = (f"{label} / B_crit = {interval_text(value, low, high, unit='×')} "
                    f"({label} {interval_text(prediction, lo_n, hi_n, batch_count_text)} from {fit[f'{measure}_n_runs']:.0f} "
                    f"runs; {fit_text(fit)})")
            rows.append(row(tables, fit["study"], fit["model"], fit["train_fraction"], value, low, high, text, verdict,
                            reason, paper_value=NOISE_PAPER, condition=name))
            rows[-1]["caveats"] += f"; read at train loss {fit['b_noise_train_loss']:.3g}"
    return rows or not_measured(tables, "no noise scale measured near the state where a run reached a target")


def judge_regimes(tables: Tables) -> list[dict]:
    rows = []
    for fit in headline_fits(tables):
        points = curve_points(tables, fit)
        seen = set(points.loc[points["reached"].eq(True), "regime"].dropna())
        wanted = ("near-linear", "diminishing", "plateau")
        if steps_do_not_fall(points):
            verdict, reason = NOT_REPRODUCED, "steps to target do not fall with the batch size"
        elif fit["fit_status"] != FIT_OK:
            verdict, reason = INCONCLUSIVE, fit_inconclusive(fit)
        elif set(wanted) <= seen:
            verdict, reason = REPRODUCED, ""
        else:
            verdict, reason = INCONCLUSIVE, "grid edge: no " + " and no ".join(w for w in wanted if w not in seen) + \
                " point among the reached batches"
        text = ", ".join(f"{b:.0f}: {r}" for b, r in zip(points["batch_size"], points["regime"].fillna("–"))
                         if isinstance(r, str)) or fit_text(fit)
        rows.append(row(tables, fit["study"], fit["model"], fit["train_fraction"], len(seen & set(wanted)), np.nan,
                        np.nan, f"regimes seen: {text}", verdict, reason,
                        paper_value=REGIMES_PAPER))
    return rows or not_measured(tables, "no train-loss target configured")


CLAIMS = (
    Claim("ml_small_batch_best", "Masters & Luschi 2018", "Figs. of best test accuracy against m",
          "The best test accuracy lies at a small batch, m ≤ 32, not at the grid's large end.",
          "The batch size whose best LR setting gives the best median over seeds of each run's median test "
          "accuracy over its last 5 epochs (the final test quality where that was not recorded); 95% range of "
          "that batch over a bootstrap of the seeds.",
          "Equal epochs for every m; an LR grid that brackets the optimum at each batch size; 2 or more seeds; "
          "each run measured by its median test accuracy over the last 5 epochs.",
          "best m always < 32 (2–8 on CIFAR-10/100)", judge_small_batches),
    Claim("ml_ghost_bn_small", "Masters & Luschi 2018", "BN batch against SGD batch grid",
          "With ghost BN, the best BN batch is small (4–8) whatever the SGD batch.",
          "Per SGD batch, the BN batch with the best median test quality at its best LR (each run's median test "
          "accuracy over its last 5 epochs where recorded); the largest over SGD batches, with its bootstrap range.",
          "A grid of BN batch sizes at several SGD batch sizes; 2 or more seeds.",
          "4–8 for every SGD batch (CIFAR)", judge_ghost_bn),
    Claim("keskar_lb_sharper", "Keskar et al. 2017", "Table of ε-sharpness (full space)",
          "Large-batch minima are sharper: LB / SB ε-sharpness > 1 at both ε.",
          "Geometric mean over seed pairs of LB / SB ε-sharpness at the final checkpoint (sharpness_ratios).",
          "Both ends trained to convergence, or compared at a matched train loss (within 2×).",
          "LB / SB 9–223× over F1–C4 at ε = 1e-3", judge_sharper_lb),
    Claim("keskar_lb_sharper_10x", "Keskar et al. 2017", "Table of ε-sharpness (full space)",
          "... by one to two orders of magnitude: LB / SB ε-sharpness > 10.",
          "As above, against 10.", "As above.", "LB / SB 9–223× over F1–C4 at ε = 1e-3", judge_sharper_by_orders),
    Claim("keskar_lb_worse_test", "Keskar et al. 2017", "Table of test accuracy, SB and LB",
          "Large batches generalize worse: LB test accuracy below SB.",
          "Mean over seed pairs of LB − SB final test accuracy (healthy runs), with a t-interval.",
          "Both ends trained to convergence, or compared at a matched train loss (within 2×).",
          "−0.2 to −5.3 pp over F1–C4", judge_lb_worse),
    Claim("golmant_knee", "Golmant et al. 2018", "Speed-up curves (CIFAR-10, LSTM, DRN)",
          "Steps to target fall about linearly up to a critical batch size, then flatten.",
          "B_crit of S(B) = S_min (1 + B_crit / B) fitted to the LR-tuned steps to the first train-loss target.",
          "The target reached by 3 or more batch sizes, the knee inside the batch grid, the larger batches "
          "reaching the target.",
          "≈2048 (CIFAR-10), ≈64 (DRN), ≈32 (LSTM)", judge_knee),
    Claim("golmant_domains", "Golmant et al. 2018", "Speed-up curves across domains",
          "B_crit depends on the domain: classification far above segmentation and language modelling.",
          "The B_crit of each domain's studies; pairs of domains whose intervals separate, against the paper's "
          "order.",
          "A B_crit (fit `ok`) in two or more domains.",
          "classification ≈2048 > segmentation ≈64 > language model ≈32", judge_domains),
    Claim("golmant_test_worse", "Golmant et al. 2018", "Speed-up on the test loss",
          "Scaling measured on the test loss is worse than on the train loss.",
          "B_crit on the first test-loss target over B_crit on the first train-loss target; conservative interval "
          "from the two fits' intervals.",
          "A B_crit on both losses.", TEST_WORSE_PAPER, judge_test_worse),
    Claim("golmant_fraction", "Golmant et al. 2018", "Speed-up at 100 / 50 / 25% of the data",
          "The training-set fraction hardly moves B_crit.",
          "B_crit at the smallest fraction over B_crit on the whole set; agreement within 2×.",
          "A B_crit at two or more fractions.", FRACTION_PAPER, judge_fraction),
    Claim("mccandlish_noise_scale", "McCandlish et al. 2018", "Noise scale against B_crit",
          "The gradient noise scale predicts the critical batch size.",
          "B_simple and B_noise (geometric means over the runs that reached the target, each read where its train "
          "loss reached it), over the measured B_crit; agreement within 10× either way.",
          "The noise scale read where training reaches the target loss; a B_crit from the same target.",
          NOISE_PAPER, judge_noise_scale),
    Claim("shallue_regimes", "Shallue et al. 2018", "Steps to result against batch size",
          "The steps-to-target curve shows perfect scaling, diminishing returns and a maximal useful batch size.",
          "The regime of each reached batch from the fitted curve's local exponent B_crit / (B + B_crit): "
          "near-linear ≥ 0.8, plateau ≤ 0.2.",
          "An accepted B_crit, and reached batches on both sides of it.",
          REGIMES_PAPER, judge_regimes),
)


def findings_table(runs: pd.DataFrame, speedup: pd.DataFrame, critical: pd.DataFrame, ratios: pd.DataFrame,
                   studies: dict) -> pd.DataFrame:
    """findings.parquet: every claim of CLAIMS judged on the tables (module docstring)."""
    tables = Tables(runs, speedup, critical, ratios, studies)
    rows = []
    for claim in CLAIMS:
        base = dict(claim_id=claim.id, paper=claim.paper, claim=claim.claim, source=claim.source,
                    quantity=claim.quantity, protocol=claim.protocol, paper_value=claim.paper_value or "–")
        rows += [{**base, **r} for r in claim.judge(tables)]
    table = pd.DataFrame(rows, columns=list(FINDING_COLUMNS))
    return table.astype({"train_fraction": float, "value": float, "ci_low": float, "ci_high": float})
