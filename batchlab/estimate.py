"""Cost before you run: a config's runs, jobs, steps and estimated device-hours.

From a checked config (`batchlab.config.check_config`) this counts, per study and model and
in total, what the workflow will do: the runs, the training jobs (stacks, `build_stacks`),
the other jobs (one analysis per stack with analysed runs, one interpolation per study with
pairs, one data preparation per data set, and the fixed tail of tables, figures and report),
the run-steps (`make_plan` of each run, on the data set's size from
`batchlab.data.catalog`), the training examples and the evaluated examples (each member
runs over the whole train and test splits at step 0, the last step and every checkpoint, and
over the `eval.train_subset` / `eval.test_subset` subsets at its other evaluation points).

Hours come from the throughput table that `benchmarks/throughput.py` writes
(`benchmarks/throughput.csv`), using the rows of ONE device. A stack of K runs at batch
size B costs, per stacked step, K * B / examples_per_s at (B, K), and per evaluated example
K / eval_examples_per_s at K:
- in K, the time per stacked step is interpolated linearly between measured stack sizes and,
  outside them, scaled in proportion to K from the nearest one (noted: stacking is cheaper
  per run than that on most devices, so fewer runs than measured are underestimated);
- in B, log(examples/s) is interpolated linearly in log(B) between measured batch sizes and
  held at the end value outside them (noted);
- a model with no row on the device gets no hours: its steps are counted, and the note says
  which benchmark to run. Nothing is invented.
With a convergence budget (`budget.stop`) every run is counted to its cap, an upper bound
(noted). Stacks are costed at their full K throughout, though a member that diverges or
stops early leaves its stack. The hours cover training and its evaluations on one device,
one job at a time; analyses, interpolation, data preparation and tables are counted as jobs,
not timed. `longest_job_hours` is the longest stack's: the time limit a cluster job must cover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from batchlab.config import analysed_runs, build_grid, build_pairs, build_stacks
from batchlab.data.catalog import dataset_info

# The columns benchmarks/throughput.py writes; the estimate reads REQUIRED_COLUMNS of them.
THROUGHPUT_COLUMNS = ["device", "torch", "model", "dataset", "augment", "batch_size", "k", "steps", "step_ms",
                      "run_steps_per_s", "examples_per_s", "eval_examples_per_s", "measured_at"]
REQUIRED_COLUMNS = ("device", "model", "batch_size", "k", "examples_per_s", "eval_examples_per_s")
# The jobs every config has once after training (workflow/rules/{tables,speedup,figures,report}.smk
# and the target rule `all`, which snakemake counts too); tests/test_estimate.py checks the total
# against snakemake's dry run.
TAIL_JOBS = ("gather_tables", "gather_sharpness", "gather_interpolation", "speedup_tables", "sharpness_ratios",
             "figures_1", "figures_2", "figures_3", "findings", "report_summary", "report", "all")


def train_size(n_train: int, fraction: float) -> int:
    """The training examples a run at `fraction` sees: as `batchlab.data.Dataset.train_fraction` keeps them."""
    return n_train if fraction == 1 else max(1, round(fraction * n_train))


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


class Throughput:
    """The rows of one device, and the time a stacked step or an evaluation takes at any (B, K)."""

    def __init__(self, table: pd.DataFrame, device: str):
        self.device = device
        rows = table[table["device"].astype(str) == device]
        self.rows = rows.groupby(["model", "batch_size", "k"], as_index=False)[
            ["examples_per_s", "eval_examples_per_s"]].mean()  # a hand-merged table may repeat a case
        self.datasets = rows.groupby("model")["dataset"].agg(lambda s: sorted(set(map(str, s)))).to_dict() \
            if "dataset" in rows else {}
        self.torch = sorted(set(map(str, rows["torch"]))) if "torch" in rows else []
        self.measured = (str(rows["measured_at"].min()), str(rows["measured_at"].max())) if "measured_at" in rows else None
        self.n_rows = len(rows)

    def has(self, model: str) -> bool:
        return bool((self.rows["model"] == model).any())

    def step_seconds(self, model: str, batch_size: int, k: int, flags: set) -> float | None:
        """Seconds per stacked step of K members at `batch_size`; None if the model was never measured."""
        rows = self.rows[self.rows["model"] == model]
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

    def eval_seconds(self, model: str, k: int, flags: set) -> float | None:
        """Seconds per example evaluated by all K members; None if not measured."""
        rows = self.rows[(self.rows["model"] == model) & self.rows["eval_examples_per_s"].notna()]
        if rows.empty:
            return None
        per_k = rows.groupby("k")["eval_examples_per_s"].median()  # the same pass at every batch size
        return _at_k({int(m): m / rate for m, rate in per_k.items()}, k, model, flags)


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
    train_s: float = 0.0
    eval_s: float = 0.0
    longest_job_s: float = 0.0  # the longest stack: what a cluster job's time limit must cover
    timed: bool = True  # every stack of this model had throughput figures
    notes: list[str] = field(default_factory=list)
    flags: set = field(default_factory=set)  # ("k", model, K, from K) and ("b", model, B, lo, hi): extrapolations

    def all_notes(self) -> list[str]:
        """The notes, with the extrapolations summarised (one note for all the stack sizes, one for all the batch sizes)."""
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
        return out


@dataclass
class Estimate:
    device: str | None  # the device the hours are for; None without a throughput table
    by_model: pd.DataFrame  # one row per (study, model)
    by_study: pd.DataFrame  # one row per study, then a "total" row
    jobs: dict[str, int]  # job kind -> count, as snakemake counts them
    notes: list[str]  # numbered in by_model's "notes" column
    source: str = ""  # where the throughput figures came from

    @property
    def total(self) -> pd.Series:
        return self.by_study.iloc[-1]


def estimate(config: dict, throughput: pd.DataFrame | None = None, device_name: str | None = None,
             source: str = "") -> Estimate:
    """The cost of a checked config; hours from `throughput`'s rows of one device (see the module docstring)."""
    from batchlab.train.plan import evaluated_examples, make_plan  # imports torch: only here, so that reading this module stays light

    grid = build_grid(config)
    stacks = build_stacks(config, grid)
    analysed = analysed_runs(config, grid)
    pair_studies = {pair.study for pair in build_pairs(config, grid).values()}
    tp = None
    if throughput is not None:
        tp = Throughput(throughput, choose_device(throughput, device_name))
    infos: dict[str, object] = {}
    tallies: dict[tuple[str, str], _Tally] = {}
    for stack in stacks.values():
        spec = grid[stack.runs[0]]
        k = len(stack.runs)
        if spec.dataset not in infos:
            infos[spec.dataset] = dataset_info(spec.dataset, config.get("datasets", {}).get(spec.dataset) or {})
        info = infos[spec.dataset]
        n_train = train_size(info.n_train, spec.train_fraction)
        plan = make_plan(spec, n_train)
        evaluated = evaluated_examples(plan, spec.eval, n_train, info.n_test)  # through one member's evaluations
        t = tallies.setdefault((spec.study, spec.model), _Tally(spec.dataset))
        t.runs += k
        t.train_jobs += 1
        t.analysis_jobs += any(run_id in analysed for run_id in stack.runs)
        t.run_steps += k * plan.total_steps
        t.train_examples += k * plan.total_steps * spec.batch_size
        t.eval_examples += k * evaluated
        if spec.budget.get("stop"):
            t.notes.append(f"{spec.study}: convergence budget (budget.stop); every run counted to its cap, an upper bound")
        if tp is None:
            t.timed = False
            continue
        if not tp.has(spec.model):
            t.timed = False
            t.notes.append(f"no throughput measured for {spec.model} on {tp.device}: run benchmarks/throughput.py "
                           f"--models {spec.model}")
            continue
        if spec.bn_batch_size is not None:
            t.notes.append(f"{spec.study}: ghost BatchNorm (bn_batch_sizes) timed as plain BatchNorm over the batch")
        measured_on = tp.datasets.get(spec.model, [])
        if measured_on and spec.dataset not in measured_on:
            t.notes.append(f"{spec.model} was measured on {', '.join(measured_on)} data; {spec.study} trains it on "
                           f"{spec.dataset}")
        stack_train_s = plan.total_steps * tp.step_seconds(spec.model, spec.batch_size, k, t.flags)
        eval_s = tp.eval_seconds(spec.model, k, t.flags)
        if eval_s is None:
            t.notes.append(f"no evaluation throughput for {spec.model} on {tp.device}: evaluations not timed")
            eval_s = 0.0
        t.train_s += stack_train_s
        t.eval_s += evaluated * eval_s
        t.longest_job_s = max(t.longest_job_s, stack_train_s + evaluated * eval_s)

    notes: list[str] = []
    rows = []
    for (study, model), t in tallies.items():
        numbers = []
        for note in t.all_notes():
            if note not in notes:
                notes.append(note)
            numbers.append(notes.index(note) + 1)
        hours = (t.train_s + t.eval_s) / 3600 if t.timed else math.nan
        rows.append({"study": study, "model": model, "dataset": t.dataset, "runs": t.runs, "train_jobs": t.train_jobs,
                     "analysis_jobs": t.analysis_jobs, "run_steps": t.run_steps, "train_examples": t.train_examples,
                     "eval_examples": t.eval_examples, "train_hours": t.train_s / 3600 if t.timed else math.nan,
                     "eval_hours": t.eval_s / 3600 if t.timed else math.nan, "hours": hours,
                     "longest_job_hours": t.longest_job_s / 3600 if t.timed else math.nan,
                     "notes": ",".join(map(str, sorted(set(numbers))))})
    by_model = pd.DataFrame(rows)

    counted = ["runs", "train_jobs", "analysis_jobs", "run_steps", "train_examples", "eval_examples"]
    hours = ["train_hours", "eval_hours", "hours"]
    by_study = by_model.groupby("study", sort=False)[counted].sum()
    by_study[hours] = by_model.groupby("study", sort=False)[hours].sum(min_count=1)  # NaN only where no model was timed
    by_study["longest_job_hours"] = by_model.groupby("study", sort=False)["longest_job_hours"].max()
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
    return Estimate(tp.device if tp else None, by_model, by_study, jobs, notes, source)


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


def format_estimate(est: Estimate) -> str:
    """The estimate as text: a table per study and model, one per study with the total, the jobs, the notes."""
    counts = ["runs", "train_jobs", "analysis_jobs", "run_steps", "train_examples", "eval_examples"]
    hours = ["train_hours", "eval_hours", "hours", "longest_job_hours"]
    lines = []
    if est.device:
        lines.append(f"throughput from: {est.source}")
        lines.append(f"device-hours on {est.device}, one job at a time: training steps and their evaluations")
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
    total = est.total
    untimed = est.by_model.loc[est.by_model["hours"].isna(), "model"].unique().tolist()
    text = f"total: {_count(total['runs'])} runs, {est.jobs['total']:,} jobs, {_count(total['run_steps'])} run-steps"
    if est.device:
        bound = "at most " if any("budget.stop" in n for n in est.notes) else ""
        if untimed and math.isnan(total["hours"]):
            text += f", device-hours unknown (no throughput for {', '.join(untimed)})"
        else:
            minutes = f" ({total['hours'] * 60:.2g} minutes)" if total["hours"] < 1 else ""
            text += f", {bound}{_hours(total['hours'])} device-hours{minutes} on {est.device}"
            if untimed:
                text += f" plus the untimed {', '.join(untimed)}"
    lines.append(text)
    if est.notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(f"  [{i}] {note}" for i, note in enumerate(est.notes, start=1))
    return "\n".join(lines)
