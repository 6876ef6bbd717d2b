"""Cost before you run: a config's runs, jobs, steps and estimated device-hours.

From a checked config (`batchlab.config.check_config`) this counts, per study and model and
in total, what the workflow will do: the runs, the training jobs (stacks, `build_stacks`),
the other jobs (one analysis per stack with analysed runs, one interpolation per study with
pairs, one data preparation per data set, and the fixed tail of tables, figures and report),
the run-steps (`make_plan` of each run, on the data set's size from
`batchlab.data.catalog`: measured from the files under the data set's root where they are
there, the official release's otherwise, which the output says first), the training
examples and the evaluated examples (each member runs over the whole train and test splits
at step 0, the last step and every checkpoint, and over the `eval.train_subset` /
`eval.test_subset` subsets at its other evaluation points).

Hours come from the throughput table that `benchmarks/throughput.py` writes
(`benchmarks/throughput.csv`), using the rows of ONE device. A training row is one model
on one data set (its input shape and classes) with one optimizer at one (B, K); the rows of
the study's model are narrowed to its optimizer, then its data set, then its shape, where
such rows exist, and a note says which it had to do without. A stack of K runs at batch
size B costs, per stacked step, K * B / examples_per_s at (B, K), per evaluated example
K / eval_examples_per_s at K, and per checkpoint (each `checkpoints` step and final.pt)
K member saves of checkpoint_ms:
- in K, the time per stacked step is interpolated linearly between measured stack sizes and,
  outside them, scaled in proportion to K from the nearest one (noted: stacking is cheaper
  per run than that on most devices, so fewer runs than measured are underestimated);
- in B, log(examples/s) is interpolated linearly in log(B) between measured batch sizes and
  held at the end value outside them (noted);
- a model with no row on the device gets no hours: its steps are counted, and the note says
  which benchmark to run. Nothing is invented.
An analysis row is one measure of one checkpoint (one pair, for the interpolation) of one
model, timed at a preset's settings, with the work those settings ask for (`analysis_work`:
the units its time grows in proportion to). Each analysed run's final checkpoint, and with
`along_training` each of its step checkpoints, costs the sum of its measures, each scaled
from the row of the nearest work (noted when scaled); a measure with no row leaves the
model's analyses untimed (noted), never guessed.
With a convergence budget (`budget.stop`) every run is counted to its cap, an upper bound
(noted), and so are its checkpoints and their analyses. Stacks are costed at their full K
throughout, though a member that diverges or stops early leaves its stack. The hours are
those of one device running one job at a time: a job's start (interpreter, torch, data)
and the resume checkpoints (at most about 5% of a stack, batchlab.train.resume) are not
counted, nor are data preparation, tables and figures.

`Estimate.longest` holds the longest job of each rule (a training stack, an analysis job,
a study's interpolation); `slurm_fit` compares them with the SLURM profile's runtime for
that rule over its attempts.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from batchlab.config import analysed_runs, build_grid, build_pairs, build_stacks
from batchlab.data.catalog import dataset_info

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
# The columns benchmarks/throughput.py writes; the estimate needs REQUIRED_COLUMNS of them (a table
# from before the others existed reads as training rows of an unrecorded optimizer and shape).
THROUGHPUT_COLUMNS = ["device", "torch", "model", "model_options", "dataset", "shape", "optimizer", "augment",
                      "batch_size", "k", "steps", "step_ms", "run_steps_per_s", "examples_per_s", "eval_examples_per_s",
                      "checkpoint_ms", "measure", "method", "work", "seconds", "settings", "measured_at"]
REQUIRED_COLUMNS = ("device", "model", "batch_size", "k", "examples_per_s", "eval_examples_per_s")
TRAIN = "train"  # the `measure` of a training row; the others are ANALYSIS_MEASURES
# What an analysis row times: per checkpoint, Keskar's short sharpness searches, the converged
# searches (the final checkpoint only), the Hessian spectrum, B_simple and B_noise; per pair, the
# 1-D interpolation.
ANALYSIS_MEASURES = ("sharpness", "sharpness_converged", "hessian", "noise_scale", "b_noise", "interpolation")
# The jobs every config has once after training (workflow/rules/{tables,speedup,figures,report}.smk
# and the target rule `all`, which snakemake counts too); tests/test_estimate.py checks the total
# against snakemake's dry run.
TAIL_JOBS = ("gather_tables", "gather_sharpness", "gather_interpolation", "speedup_tables", "sharpness_ratios",
             "figures_1", "figures_2", "figures_3", "findings", "report_summary", "report", "all")
# The note of every timed analysis: what benchmarks/throughput.py times them on.
UPPER_BOUND = ("analyses timed on freshly initialised weights, where the adaptive estimates (two-batch draws, B_noise "
               "probes) run to their caps and the searches climb longest: trained weights usually take less")
# What a rule's longest job can be shortened by, for the lines that say it does not fit.
SHORTER = {
    "train_stack": "a smaller stack (the study's max_stack) or fewer steps; a stack resumes from its checkpoints "
                   "(checkpoints.resume_every_s) on each retry, so more retries or a longer runtime help too",
    "analyse_stack": "fewer checkpoints measured (analysis.along_training), a smaller analysis.n_examples or fewer "
                     "probes and iterations; an analysis starts again from scratch on a retry",
    "interpolate_study": "fewer alphas (interpolation.alphas) or pairs (interpolation.select); an interpolation starts "
                         "again from scratch on a retry",
}


def train_size(n_train: int, fraction: float) -> int:
    """The training examples a run at `fraction` sees: as `batchlab.data.Dataset.train_fraction` keeps them."""
    return n_train if fraction == 1 else max(1, round(fraction * n_train))


def data_shape(info) -> str:
    """A data set's input shape and classes (vocabulary) as the throughput table records them, e.g. "3x32x32:10"."""
    return "x".join(map(str, info.input_shape)) + f":{info.num_classes}"


# --- the work of an analysis --------------------------------------------------------------------

def analysis_methods(model_name: str, info, n_train: int, analysis: dict, model_options: dict | None = None
                     ) -> dict[str, str]:
    """measure -> the method the library will use for it on this model (with the study's `model_options`) and
    training set (noise scales: exact or two_batch, probes); "" for the measures with one method."""
    from batchlab.analysis.b_noise import b_noise_method
    from batchlab.analysis.noise_scale import noise_scale_method
    from batchlab.models import build_model

    methods = dict.fromkeys(ANALYSIS_MEASURES, "")
    wanted = analysis["measures"]
    if "noise_scale" in wanted or "b_noise" in wanted:
        model = build_model(model_name, info.input_shape, info.num_classes, **(model_options or {}))
        if "noise_scale" in wanted:
            methods["noise_scale"] = noise_scale_method(model, n_train, analysis["noise_scale"], analysis["bn_mode"])
        if "b_noise" in wanted:
            methods["b_noise"] = b_noise_method(model, n_train, analysis.get("b_noise"), analysis["bn_mode"])
    return methods


def analysis_work(analysis: dict, methods: dict[str, str], n_train: int, final: bool) -> dict[str, float]:
    """measure -> the work of one checkpoint's analyses (`final`: the run's final weights) under a study's
    `analysis` config, in the units each measure's time grows in proportion to, as
    `batchlab.analysis.measure` plans them:
    - sharpness: examples of the analysis subset x L-BFGS-B iterations x searches (epsilons x spaces);
    - sharpness_converged (final only): subset examples x searches (its iterations are the library's own);
    - hessian: subset examples x (Lanczos products + Hutchinson probes);
    - noise_scale: training examples (exact: a gradient each) or draws at most x (b_small + b_big);
    - b_noise: training examples x (examples + 1) products (exact) or x (probes at most + 1).
    Adaptive draws and probes are counted at their cap."""
    from batchlab.analysis.b_noise import b_noise_config
    from batchlab.analysis.measure import planned_rows
    from batchlab.tables import CONVERGED_SEARCH, KESKAR_SEARCH

    rows = planned_rows(analysis, methods["noise_scale"] or "exact", methods["b_noise"] or "exact", final)
    n_subset = min(analysis["n_examples"], n_train)
    searches = Counter(method for metric, method, _ in rows if metric.startswith("eps_"))
    metrics = {metric for metric, _, _ in rows}
    work = {}
    if searches[KESKAR_SEARCH]:
        work["sharpness"] = n_subset * analysis["sharpness"]["max_iter"] * searches[KESKAR_SEARCH]
    if searches[CONVERGED_SEARCH]:
        work["sharpness_converged"] = n_subset * searches[CONVERGED_SEARCH]
    if "hessian_lambda_max" in metrics:
        work["hessian"] = n_subset * (analysis["hessian"]["max_hvp"] + analysis["hessian"]["n_probes"])
    if "noise_scale" in metrics:
        ns = analysis["noise_scale"]
        drawn = ns["max_draws"] * (ns["b_small"] + ns["b_big"])
        work["noise_scale"] = n_train if methods["noise_scale"] == "exact" else drawn
    if "b_noise" in metrics:
        probes = b_noise_config(analysis.get("b_noise"))["max_probes"]
        work["b_noise"] = n_train * (n_train + 1 if methods["b_noise"] == "exact" else probes + 1)
    return work


def interpolation_work(interpolation: dict, n_train: int, n_test: int) -> dict[str, float]:
    """The work of one pair's interpolation under a study's `interpolation` config: alphas x the examples
    evaluated at each (the training set, also passed once more where BatchNorm statistics are recomputed,
    which the model's own row carries)."""
    return {"interpolation": interpolation["alphas"] * (n_train + n_test)}


# --- the throughput table ----------------------------------------------------------------------

def read_throughput(path: str | Path) -> pd.DataFrame:
    """The throughput table at `path`; a ValueError naming the missing columns if it lacks some."""
    table = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; it should be written by benchmarks/throughput.py")
    return table


def choose_device(table: pd.DataFrame, name: str | None = None) -> str:
    """The device whose rows to use: the one whose name contains `name` (case-insensitive), else the one
    with the most rows (ties: the most recently measured)."""
    devices = table["device"].astype(str)
    if name is None:
        if devices.empty:
            raise ValueError("the throughput table has no rows")
        counts = devices.value_counts()
        tied = counts[counts == counts.max()].index
        if len(tied) > 1 and "measured_at" in table:
            latest = table[devices.isin(tied)].groupby("device")["measured_at"].max()
            return str(latest.sort_values().index[-1])
        return str(sorted(tied)[0])
    matches = sorted({d for d in devices.unique() if name.lower() in d.lower()})
    if len(matches) == 1:
        return matches[0]
    exact = [d for d in matches if d.lower() == name.lower()]
    if len(exact) == 1:
        return exact[0]
    available = "; ".join(sorted(devices.unique())) or "none"
    if not matches:
        raise ValueError(f"no device in the throughput table matches {name!r}; measured: {available}")
    raise ValueError(f"{name!r} matches several devices ({'; '.join(matches)}): name one more precisely")


def _at_k(times: dict[int, float], k: int, model: str, flags: set) -> float:
    """A time that grows with the stack size, at K = k, from its values at the measured stack sizes:
    linear between them, in proportion to K from the nearest one outside them (flagged)."""
    ks = sorted(times)
    if k in times:
        return times[k]
    if ks[0] < k < ks[-1]:
        return float(np.interp(k, ks, [times[m] for m in ks]))
    nearest = ks[0] if k < ks[0] else ks[-1]
    flags.add(("k", model, k, nearest))
    return times[nearest] * k / nearest


def _closest(rows: pd.DataFrame, wanted: dict[str, str]) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """`rows` narrowed to each wanted (column, value) in turn where some row has it; the (column, wanted, measured)
    it had to do without."""
    missed = []
    for column, value in wanted.items():
        matching = rows[rows[column] == value]
        if matching.empty:
            missed.append((column, value, ", ".join(sorted(set(rows[column]) - {""})) or "unrecorded"))
        else:
            rows = matching
    return rows, missed


def _text_columns(rows: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    for column in columns:  # an older table lacks some; a blank cell reads as NaN
        rows[column] = rows[column].astype(object).where(rows[column].notna(), "").astype(str) if column in rows else ""
    return rows


def options_text(options: dict | None) -> str:
    """A study's `model_options` of one model as a throughput row records them: `key=value` pairs sorted by key and
    joined by `;`, blank without any (as in a row from before the column existed)."""
    return ";".join(f"{key}={value}" for key, value in sorted((options or {}).items()))


class Throughput:
    """The rows of one device, and the time a stacked step, an evaluation, a checkpoint or an analysis takes."""

    CASE = ["model", "model_options", "dataset", "shape", "optimizer"]

    def __init__(self, table: pd.DataFrame, device: str):
        self.device = device
        rows = _text_columns(table[table["device"].astype(str) == device].copy(),
                             ("model_options", "dataset", "shape", "optimizer", "method", "settings"))
        rows["measure"] = rows["measure"].fillna(TRAIN) if "measure" in rows else TRAIN
        for column in ("checkpoint_ms", "work", "seconds"):
            if column not in rows:
                rows[column] = np.nan
        train = rows[rows["measure"] == TRAIN]
        self.rows = train.groupby([*self.CASE, "batch_size", "k"], as_index=False)[
            ["examples_per_s", "eval_examples_per_s", "checkpoint_ms"]].mean()  # a hand-merged table may repeat a case
        self.analyses = rows[rows["measure"] != TRAIN]
        self.torch = sorted(set(map(str, rows["torch"]))) if "torch" in rows else []
        self.measured = (str(rows["measured_at"].min()), str(rows["measured_at"].max())) if "measured_at" in rows else None
        self.n_rows = len(rows)
        self._costs: dict[tuple, tuple | None] = {}

    def has(self, model: str) -> bool:
        return bool((self.rows["model"] == model).any())

    def training_rows(self, model: str, dataset: str, shape: str, optimizer: str,
                      model_options: str = "") -> tuple[pd.DataFrame, list]:
        """The model's rows nearest the study's case (its model options (`options_text`), then optimizer, data set and
        shape) and what they miss."""
        return _closest(self.rows[self.rows["model"] == model], {"model_options": model_options, "optimizer": optimizer,
                                                                 "dataset": dataset, "shape": shape})

    def step_seconds(self, model: str, batch_size: int, k: int, flags: set,
                     rows: pd.DataFrame | None = None) -> float | None:
        """Seconds per stacked step of K members at `batch_size` from `rows` (default: all the model's); None if
        the model was never measured."""
        rows = self.rows[self.rows["model"] == model] if rows is None else rows
        if rows.empty:
            return None
        sizes, log_rates = [], []
        for b, at_b in rows.groupby("batch_size"):
            step = {int(r.k): r.k * b / r.examples_per_s for r in at_b.itertuples()}  # seconds per stacked step
            seconds = _at_k(step, k, model, flags)
            sizes.append(b)
            log_rates.append(math.log(k * b / seconds))
        lo, hi = sizes[0], sizes[-1]
        if not lo <= batch_size <= hi:
            flags.add(("b", model, batch_size, lo, hi))
        rate = math.exp(np.interp(math.log(batch_size), np.log(sizes), log_rates))
        return k * batch_size / rate

    def eval_seconds(self, model: str, k: int, flags: set, rows: pd.DataFrame | None = None) -> float | None:
        """Seconds per example evaluated by all K members; None if not measured."""
        rows = self.rows[self.rows["model"] == model] if rows is None else rows
        rows = rows[rows["eval_examples_per_s"].notna()]
        if rows.empty:
            return None
        per_k = rows.groupby("k")["eval_examples_per_s"].median()  # the same pass at every batch size
        return _at_k({int(m): m / rate for m, rate in per_k.items()}, k, model, flags)

    def stack_costs(self, model: str, dataset: str, shape: str, optimizer: str, batch_size: int,
                    k: int, model_options: str = "") -> tuple | None:
        """(what the rows miss of the case, seconds per stacked step, per example evaluated by all K members or None,
        per member checkpoint save or None, the extrapolations made) of a stack of K at `batch_size`; None if the
        model was never measured. Computed once per case: a preset has hundreds of stacks and a few cases."""
        key = (model, model_options, dataset, shape, optimizer, batch_size, k)
        if key not in self._costs:
            rows, missed = self.training_rows(model, dataset, shape, optimizer, model_options)
            flags: set = set()
            self._costs[key] = None if rows.empty else (
                missed, self.step_seconds(model, batch_size, k, flags, rows), self.eval_seconds(model, k, flags, rows),
                self.checkpoint_seconds(rows), frozenset(flags))
        return self._costs[key]

    @staticmethod
    def checkpoint_seconds(rows: pd.DataFrame) -> float | None:
        """Seconds to save one member's checkpoint; None if not measured."""
        saves = rows["checkpoint_ms"].dropna()
        return float(saves.median()) / 1000 if len(saves) else None

    def analysis_seconds(self, model: str, dataset: str, shape: str, measure: str, method: str, work: float,
                         flags: set, model_options: str = "") -> float | None:
        """Seconds of one checkpoint's `measure` (one pair's interpolation) by `method` at `work`: from the row of
        the nearest work, in proportion to the work (flagged when scaled); None if the model's measure by that
        method was never timed."""
        a = self.analyses
        rows = a[(a["model"] == model) & (a["measure"] == measure) & (a["method"] == method) & (a["work"] > 0)]
        if rows.empty:
            return None
        rows, missed = _closest(rows, {"model_options": model_options, "dataset": dataset, "shape": shape})
        for column, wanted, have in missed:
            flags.add(("analysis_" + column, model, wanted, have))
        best = rows.iloc[int(np.argmin(np.abs(np.log(rows["work"].to_numpy() / work))))]
        ratio = work / best["work"]
        if not math.isclose(ratio, 1, rel_tol=1e-6):
            flags.add(("scaled", model, measure, ratio))
        return float(best["seconds"]) * ratio


# --- the estimate -----------------------------------------------------------------------------

@dataclass
class _Tally:
    dataset: str
    runs: int = 0
    train_jobs: int = 0
    analysis_jobs: int = 0
    run_steps: int = 0
    train_examples: int = 0
    eval_examples: int = 0
    train_s: float = 0.0  # steps and checkpoint saves
    eval_s: float = 0.0
    analysis_s: float = 0.0  # analyses and interpolations
    longest_job_s: float = 0.0  # the longest stack: what a cluster job's time limit must cover
    timed: bool = True  # every stack of this model had throughput figures
    analyses_timed: bool = True  # every analysis and interpolation it needs had a row
    notes: list[str] = field(default_factory=list)
    flags: set = field(default_factory=set)  # extrapolations and scalings, summarised by all_notes

    def all_notes(self) -> list[str]:
        """The notes, with the extrapolations summarised (one note for all the stack sizes, one for all the batch sizes,
        one for the analyses scaled)."""
        out = list(dict.fromkeys(self.notes))
        scaled = sorted({(f[2], f[3]) for f in self.flags if f[0] == "k"})
        if scaled:
            model = next(f[1] for f in self.flags if f[0] == "k")
            what = ", ".join(f"K={k} from K={m}" for k, m in scaled)
            out.append(f"{model}: stack sizes outside the measured ones, time scaled in proportion to K ({what}); "
                       f"the cost per run usually falls with K, so this overstates larger stacks, understates smaller ones")
        outside = sorted({f[2] for f in self.flags if f[0] == "b"})
        if outside:
            model, lo, hi = next((f[1], f[3], f[4]) for f in self.flags if f[0] == "b")
            out.append(f"{model}: batch sizes {', '.join(map(str, outside))} outside the measured {lo}..{hi}; "
                       f"examples/s held at the nearest end's")
        ratios = sorted({(f[2], f[3]) for f in self.flags if f[0] == "scaled"})
        if ratios:
            model = next(f[1] for f in self.flags if f[0] == "scaled")
            what = ", ".join(f"{m} x{r:.3g}" for m, r in ratios)
            out.append(f"{model}: analyses timed at other settings, scaled in proportion to their work ({what})")
        for kind in ("analysis_model_options", "analysis_dataset", "analysis_shape"):
            what = kind.removeprefix("analysis_").replace("_", " ")
            for _, model, wanted, have in sorted(f for f in self.flags if f[0] == kind):
                have = "its defaults" if have == "unrecorded" and kind == "analysis_model_options" else have
                out.append(f"{model}: analyses timed at {what} {have}, not {wanted or 'its defaults'}")
        return out


@dataclass
class Estimate:
    device: str | None  # the device the hours are for; None without a throughput table
    by_model: pd.DataFrame  # one row per (study, model)
    by_study: pd.DataFrame  # one row per study, then a "total" row
    jobs: dict[str, int]  # job kind -> count, as snakemake counts them
    notes: list[str]  # numbered in by_model's "notes" column
    source: str = ""  # where the throughput figures came from
    data_sizes: dict[str, object] = field(default_factory=dict)  # data set -> its DatasetInfo (sizes and their source)
    longest: dict[str, tuple[str, float]] = field(default_factory=dict)  # rule -> (its longest timed job, seconds)
    stacks: dict[str, float] = field(default_factory=dict)  # training stack -> its seconds, where timed

    @property
    def total(self) -> pd.Series:
        return self.by_study.iloc[-1]

    @property
    def untimed(self) -> list[str]:
        """What has no hours: the models never measured, and the analyses of models whose analyses were not."""
        rows = self.by_model
        models = rows.loc[rows["train_hours"].isna(), "model"].unique().tolist()
        analyses = rows.loc[rows["analysis_hours"].isna() & rows["train_hours"].notna(), "model"].unique().tolist()
        return models + [f"analyses of {m}" for m in analyses if m not in models]


def _stack_seconds(tp: Throughput, spec, k: int, plan, evaluated: int, shape: str, t: _Tally) -> float | None:
    """Seconds of one training stack: its steps, its evaluations and its checkpoint saves; None if the model has
    no training rows (noted)."""
    costs = tp.stack_costs(spec.model, spec.dataset, shape, spec.optimizer.get("name", ""), spec.batch_size, k,
                           options_text(spec.model_options))
    if costs is None:
        t.notes.append(f"no throughput measured for {spec.model} on {tp.device}: run benchmarks/throughput.py "
                       f"--models {spec.model}")
        return None
    missed, step_s, eval_s, save_s, flags = costs
    t.flags |= flags
    for column, wanted, have in missed:
        if column == "model_options":
            measured = "at its default options" if have == "unrecorded" else f"with the model options {have}"
            t.notes.append(f"{spec.model} was measured {measured}; {spec.study} sets {wanted or 'its defaults'} (which "
                           f"may change its size): timed as measured; benchmarks/throughput.py --config measures a "
                           f"config's own")
        elif column == "dataset":
            t.notes.append(f"{spec.model} was measured on {have} data; {spec.study} trains it on {wanted}")
        elif column == "optimizer":
            t.notes.append(f"{spec.model} was measured with the optimizer {have}; {spec.study} trains it with {wanted} "
                           f"(whose update costs differ per parameter): timed as measured")
        else:
            t.notes.append(f"{spec.model} was measured at input shape:classes {have}; {spec.study}'s are {wanted}")
    if spec.bn_batch_size is not None:
        t.notes.append(f"{spec.study}: ghost BatchNorm (bn_batch_sizes) timed as plain BatchNorm over the batch")
    train_s = plan.total_steps * step_s
    if eval_s is None:
        t.notes.append(f"no evaluation throughput for {spec.model} on {tp.device}: evaluations not timed")
        eval_s = 0.0
    if save_s is None:
        t.notes.append(f"no checkpoint saves timed for {spec.model} on {tp.device} (a table from before they were): "
                       f"not counted")
        save_s = 0.0
    saves = k * (len(plan.checkpoint_steps) + 1)  # every step checkpoint and final.pt, each member
    t.train_s += train_s + saves * save_s
    t.eval_s += evaluated * eval_s
    return train_s + saves * save_s + evaluated * eval_s


def _checkpoint_seconds(tp: Throughput, spec, info, work: dict[str, float], methods: dict[str, str],
                        t: _Tally) -> float | None:
    """Seconds of the analyses `work` asks for at one checkpoint (or of one pair's interpolation); None, noted,
    when one of them has no row."""
    total = 0.0
    for measure, units in work.items():
        seconds = tp.analysis_seconds(spec.model, spec.dataset, data_shape(info), measure, methods[measure], units,
                                      t.flags, options_text(spec.model_options))
        if seconds is None:
            method = f" ({methods[measure]})" if methods[measure] else ""
            t.notes.append(f"no {measure}{method} timing for {spec.model} on {tp.device}: its analyses are not timed; "
                           f"run benchmarks/throughput.py --config with the config")
            return None
        total += seconds
    return total


def estimate(config: dict, throughput: pd.DataFrame | None = None, device_name: str | None = None,
             source: str = "") -> Estimate:
    """The cost of a checked config; hours from `throughput`'s rows of one device (see the module docstring)."""
    from batchlab.train.plan import evaluated_examples, make_plan  # imports torch: only here, so that reading this module stays light

    grid = build_grid(config)
    stacks = build_stacks(config, grid)
    analysed = analysed_runs(config, grid)
    pairs = build_pairs(config, grid).values()
    tp = None
    if throughput is not None:
        tp = Throughput(throughput, choose_device(throughput, device_name))
    infos: dict[str, object] = {}
    methods: dict[tuple, dict[str, str]] = {}
    tallies: dict[tuple[str, str], _Tally] = {}
    longest: dict[str, tuple[str, float]] = {}
    stack_seconds: dict[str, float] = {}

    def longer(rule: str, job: str, seconds: float) -> None:
        if seconds > longest.get(rule, ("", -1.0))[1]:
            longest[rule] = (job, seconds)

    def sizes(spec):
        if spec.dataset not in infos:
            infos[spec.dataset] = dataset_info(spec.dataset, config.get("datasets", {}).get(spec.dataset) or {})
        info = infos[spec.dataset]
        return info, train_size(info.n_train, spec.train_fraction), config["studies"][spec.study]

    def methods_of(spec, info, n_train: int, study: dict) -> dict[str, str]:
        key = (spec.study, spec.model, n_train)  # a model is built to ask: once per case
        if key not in methods:
            methods[key] = analysis_methods(spec.model, info, n_train, study["analysis"], spec.model_options) \
                if study["analysis"]["enabled"] else dict.fromkeys(ANALYSIS_MEASURES, "")
        return methods[key]

    for stack in stacks.values():
        spec = grid[stack.runs[0]]
        k = len(stack.runs)
        info, n_train, study = sizes(spec)
        plan = make_plan(spec, n_train)
        evaluated = evaluated_examples(plan, spec.eval, n_train, info.n_test)  # through one member's evaluations
        analysed_here = [run_id for run_id in stack.runs if run_id in analysed]
        t = tallies.setdefault((spec.study, spec.model), _Tally(spec.dataset))
        t.runs += k
        t.train_jobs += 1
        t.analysis_jobs += bool(analysed_here)
        t.run_steps += k * plan.total_steps
        t.train_examples += k * plan.total_steps * spec.batch_size
        t.eval_examples += k * evaluated
        if spec.budget.get("stop"):
            t.notes.append(f"{spec.study}: convergence budget (budget.stop); every run counted to its cap, an upper bound")
        if tp is None:
            t.timed = t.analyses_timed = False
            continue
        stack_s = _stack_seconds(tp, spec, k, plan, evaluated, data_shape(info), t)
        if stack_s is None:
            t.timed = False
        else:
            t.longest_job_s = max(t.longest_job_s, stack_s)
            stack_seconds[stack.stack_id] = stack_s
            longer("train_stack", stack.stack_id, stack_s)
        if analysed_here and t.analyses_timed:
            how = methods_of(spec, info, n_train, study)
            final = _checkpoint_seconds(tp, spec, info, analysis_work(study["analysis"], how, n_train, True), how, t)
            along = _checkpoint_seconds(tp, spec, info, analysis_work(study["analysis"], how, n_train, False), how, t)
            if final is None or along is None:
                t.analyses_timed = False
            else:
                checkpoints_along = len(plan.checkpoint_steps)  # step_<k>.pt files beside final.pt
                job_s = sum(final + along * checkpoints_along * analysed[run_id] for run_id in analysed_here)
                t.analysis_s += job_s
                longer("analyse_stack", stack.stack_id, job_s)
                t.notes.append(UPPER_BOUND)

    by_study_pairs: dict[str, float] = {}
    for pair in pairs:
        spec = grid[pair.candidates[0]]
        info, n_train, study = sizes(spec)
        t = tallies[(spec.study, spec.model)]
        if tp is None or not t.analyses_timed:
            t.analyses_timed = False
            continue
        seconds = _checkpoint_seconds(tp, spec, info, interpolation_work(study["interpolation"], n_train, info.n_test),
                                      {"interpolation": ""}, t)
        if seconds is None:
            t.analyses_timed = False
            continue
        t.analysis_s += seconds
        by_study_pairs[spec.study] = by_study_pairs.get(spec.study, 0.0) + seconds
    for study, seconds in by_study_pairs.items():
        longer("interpolate_study", study, seconds)

    notes: list[str] = []
    rows = []
    for (study, model), t in tallies.items():
        numbers = []
        for note in t.all_notes():
            if note not in notes:
                notes.append(note)
            numbers.append(notes.index(note) + 1)
        analysis_h = t.analysis_s / 3600 if t.timed and t.analyses_timed else math.nan
        parts = [t.train_s / 3600, t.eval_s / 3600] + ([analysis_h] if not math.isnan(analysis_h) else [])
        rows.append({"study": study, "model": model, "dataset": t.dataset, "runs": t.runs, "train_jobs": t.train_jobs,
                     "analysis_jobs": t.analysis_jobs, "run_steps": t.run_steps, "train_examples": t.train_examples,
                     "eval_examples": t.eval_examples, "train_hours": t.train_s / 3600 if t.timed else math.nan,
                     "eval_hours": t.eval_s / 3600 if t.timed else math.nan, "analysis_hours": analysis_h,
                     "hours": sum(parts) if t.timed else math.nan,
                     "longest_job_hours": t.longest_job_s / 3600 if t.timed else math.nan,
                     "notes": ",".join(map(str, sorted(set(numbers))))})
    by_model = pd.DataFrame(rows)

    counted = ["runs", "train_jobs", "analysis_jobs", "run_steps", "train_examples", "eval_examples"]
    hours = ["train_hours", "eval_hours", "analysis_hours", "hours"]
    by_study = by_model.groupby("study", sort=False)[counted].sum()
    by_study[hours] = by_model.groupby("study", sort=False)[hours].sum(min_count=1)  # NaN only where no model was timed
    by_study["longest_job_hours"] = by_model.groupby("study", sort=False)["longest_job_hours"].max()
    pair_studies = {pair.study for pair in pairs}
    by_study.insert(3, "interpolation_jobs", [int(s in pair_studies) for s in by_study.index])
    total = by_study.sum(numeric_only=True)
    total[hours] = by_model[hours].sum(min_count=1)
    total["longest_job_hours"] = by_model["longest_job_hours"].max()
    by_study.loc["total"] = total
    by_study = by_study.reset_index().rename(columns={"index": "study"})

    datasets = {study["dataset"] for study in config["studies"].values()}
    jobs = {"prepare_data": len(datasets), "train_stack": len(stacks),
            "analyse_stack": int(by_model["analysis_jobs"].sum()), "interpolate_study": len(pair_studies),
            "tables, figures, report": len(TAIL_JOBS)}
    jobs["total"] = sum(jobs.values())
    if tp is not None:
        span = f", measured {tp.measured[0][:10]}..{tp.measured[1][:10]}" if tp.measured else ""
        source = (f"{tp.device} (torch {', '.join(tp.torch) or '?'}; {tp.n_rows} rows{span}"
                  f"{'; ' + source if source else ''})")
    return Estimate(tp.device if tp else None, by_model, by_study, jobs, notes, source, infos, longest, stack_seconds)


# --- the SLURM profile ---------------------------------------------------------------------------

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}
_UNITS_MIN = {"d": 1440, "h": 60, "m": 1, "min": 1, "s": 1 / 60}


def runtime_minutes(value, attempt: int) -> float:
    """A snakemake `runtime` resource in minutes at `attempt`: a number, a duration such as "2h30m", or an
    arithmetic expression in `attempt` such as "240 * attempt" (snakemake evaluates it as Python; here only
    numbers, `attempt` and + - * / // ** are accepted)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"(\d+(\.\d+)?\s*(d|h|min|m|s)\s*)+", text):
        return sum(float(n) * _UNITS_MIN[unit] for n, _, unit in re.findall(r"(\d+(\.\d+)?)\s*(d|h|min|m|s)", text))

    def value_of(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id == "attempt":
            return attempt
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value_of(node.left), value_of(node.right))
        raise ValueError(f"runtime {text!r}: only numbers, `attempt` and arithmetic are understood here")

    return float(value_of(ast.parse(text, mode="eval").body))


def profile_runtimes(path: str | Path = SLURM_PROFILE) -> tuple[dict[str, list[float]], int]:
    """rule -> its runtime limit in minutes at each attempt (set-resources, else default-resources), from a
    snakemake profile's config.yaml; and the attempts (retries + 1)."""
    profile = yaml.safe_load(Path(path).read_text()) or {}
    attempts = int(profile.get("retries", 0)) + 1
    default = (profile.get("default-resources") or {}).get("runtime")
    out = {}
    for rule in SHORTER:
        runtime = ((profile.get("set-resources") or {}).get(rule) or {}).get("runtime", default)
        if runtime is not None:
            out[rule] = [runtime_minutes(runtime, a) for a in range(1, attempts + 1)]
    return out, attempts


def _shown(path: Path) -> str:
    """`path` from the repository's root where it lies inside it (the profile's own folder), else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.3g} h" if hours >= 1 else f"{seconds / 60:.3g} min"


def slurm_fit(est: Estimate, path: str | Path = SLURM_PROFILE) -> list[str]:
    """Lines that say whether the longest job of each rule fits the SLURM profile's runtime: a training stack
    resumes from its checkpoints, so it has the limits of all its attempts together; an analysis or an
    interpolation starts again, so it must fit one attempt. Those that do not fit come first, naming the rule,
    the job, both times and what to change."""
    if not est.longest:
        return []
    limits, attempts = profile_runtimes(path)
    where = f"the SLURM profile {_shown(Path(path))}"
    bad, tight, fine = [], [], []
    for rule, (job, seconds) in est.longest.items():
        if rule not in limits:
            continue
        per_attempt = limits[rule]
        minutes = seconds / 60
        resumes = rule == "train_stack"
        budget = sum(per_attempt) if resumes else max(per_attempt)
        spelled = " + ".join(f"{m:g}" for m in per_attempt)
        if minutes > budget:
            gets = (f"{_duration(budget * 60)} over its {attempts} attempts ({spelled} min)" if resumes
                    else f"at most {_duration(budget * 60)} in one attempt ({spelled} min over {attempts} attempts)")
            bad.append(f"DOES NOT FIT: {rule} {job} needs about {_duration(seconds)} on {est.device}, but {where} "
                       f"gives {rule} {gets}. Change: {SHORTER[rule]}; or raise set-resources.{rule}.runtime.")
        elif minutes > per_attempt[0]:
            first = f"{per_attempt[0]:g} min"
            if resumes:
                n = next(i for i in range(1, attempts + 1) if sum(per_attempt[:i]) >= minutes)
                tight.append(f"fits only across attempts: {rule} {job} needs about {_duration(seconds)} on "
                             f"{est.device}, more than the first attempt's {first}; it resumes from its checkpoints "
                             f"and ends in attempt {n} of {attempts}")
            else:
                n = next(i for i, m in enumerate(per_attempt, start=1) if m >= minutes)
                tight.append(f"fits only in a later attempt: {rule} {job} needs about {_duration(seconds)} on "
                             f"{est.device}, more than the first attempt's {first}, and starts again on each retry "
                             f"(attempt {n} of {attempts} gives {per_attempt[n - 1]:g} min)")
        else:
            fine.append(f"{rule} {_duration(seconds)} of {per_attempt[0]:g} min")
    lines = bad + tight
    if fine:
        lines.append(f"within {where}'s first attempt: the longest {', '.join(fine)}")
    return lines


# --- printing ----------------------------------------------------------------------------------

def _count(x) -> str:
    return f"{int(x):,}"


def _hours(h) -> str:
    if h is None or (isinstance(h, float) and math.isnan(h)):
        return "n/a"
    if h >= 100:
        return f"{h:,.0f}"
    if h >= 1:
        return f"{h:.1f}"
    return f"{h:.2g}"


def data_size_lines(est: Estimate) -> list[str]:
    """One line per data set whose sizes are the official release's (its files are not there yet), first; then
    one line for the others."""
    official = {name: info for name, info in est.data_sizes.items() if info.source == "official"}
    lines = [f"OFFICIAL SIZES, not measured: {name} ({info.n_train:,} train / {info.n_test:,} test; "
             f"{info.sizes_note}): the estimate is for the full release" for name, info in official.items()]
    rest = [f"{name} {info.n_train:,}/{info.n_test:,} ({info.sizes_note})" for name, info in est.data_sizes.items()
            if name not in official]
    if rest:
        lines.append("data sizes (train/test): " + "; ".join(rest))
    return lines


def summary(est: Estimate) -> str:
    """The total in one line: runs, jobs, run-steps and device-hours, and what is not timed."""
    total = est.total
    text = f"total: {_count(total['runs'])} runs, {est.jobs['total']:,} jobs, {_count(total['run_steps'])} run-steps"
    if not est.device:
        return text
    bound = "at most " if any("budget.stop" in n for n in est.notes) else ""
    untimed = est.untimed
    if math.isnan(total["hours"]):
        return text + f", device-hours unknown (no throughput for {', '.join(untimed)})"
    minutes = f" ({total['hours'] * 60:.2g} minutes)" if total["hours"] < 1 else ""
    text += f", {bound}{_hours(total['hours'])} device-hours{minutes} on {est.device}"
    return text + (f" plus the untimed {', '.join(untimed)}" if untimed else "")


def one_line(est: Estimate) -> str:
    """The estimated device-hours in one line (for `check-config`), with what is untimed and which data sizes are
    official fallbacks."""
    if not est.device:
        return "estimated device-hours: unknown (no throughput table; benchmarks/throughput.py writes it)"
    total = est.total
    untimed = est.untimed
    if math.isnan(total["hours"]):
        return f"estimated device-hours: unknown on {est.device} (no throughput for {', '.join(untimed)})"
    bound = "at most " if any("budget.stop" in n for n in est.notes) else ""
    analyses = _hours(total["analysis_hours"])
    if any(u.startswith("analyses of") for u in untimed):
        analyses = f"{analyses} timed" if total["analysis_hours"] > 0 else "untimed"
    text = (f"estimated {bound}{_hours(total['hours'])} device-hours on {est.device}, one job at a time (training "
            f"{_hours(total['train_hours'] + total['eval_hours'])}, analyses {analyses})")
    if untimed:
        text += f", plus the untimed {', '.join(untimed)}"
    official = [name for name, info in est.data_sizes.items() if info.source == "official"]
    if official:
        text += f"; official sizes for {', '.join(official)}, whose files are not there yet"
    return text + "; `python -m batchlab estimate` for the breakdown"


def format_estimate(est: Estimate, slurm_profile: str | Path | None = SLURM_PROFILE) -> str:
    """The estimate as text: first the data sizes' source and the jobs against the SLURM profile, then a table per
    study and model, one per study with the total, the jobs and the notes."""
    counts = ["runs", "train_jobs", "analysis_jobs", "run_steps", "train_examples", "eval_examples"]
    hours = ["train_hours", "eval_hours", "analysis_hours", "hours", "longest_job_hours"]
    lines = data_size_lines(est)
    if slurm_profile is not None and Path(slurm_profile).is_file():
        lines += slurm_fit(est, slurm_profile)
    if est.device:
        lines.append(f"throughput from: {est.source}")
        lines.append(f"device-hours on {est.device}, one job at a time: training steps, their evaluations and "
                     f"checkpoints, and the analyses")
    else:
        lines.append("no throughput table: counts only (run benchmarks/throughput.py for hours)")
    lines.append("")

    def readable(table: pd.DataFrame, count_columns: list[str]) -> str:
        table = table.copy()
        for col in count_columns:
            table[col] = table[col].map(_count)
        for col in hours:
            table[col] = table[col].map(_hours)
        return table.rename(columns=lambda c: c.replace("_", " ")).to_string(index=False)

    lines += ["per study and model:", readable(est.by_model, list(counts)), ""]
    lines += ["per study:", readable(est.by_study, [*counts, "interpolation_jobs"]), ""]
    lines.append("jobs: " + ", ".join(f"{n:,} {kind}" for kind, n in est.jobs.items() if kind != "total")
                 + f" = {est.jobs['total']:,} (as snakemake counts them, with the target rule `all`)")
    lines.append(summary(est))
    if est.notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(f"  [{i}] {note}" for i, note in enumerate(est.notes, start=1))
    return "\n".join(lines)
