"""Coverage of the critical batch size's 95% interval (batchlab.speedup, rule 5) on curves read off real plans.

Each synthetic run reaches its target after S* = S_min (1 + B_crit / B) exp(N(0, sigma^2)) steps; it is *read*
the way rule 1 reads a workflow run: at the first evaluated step at or after S* (batchlab.train.plan.make_plan's
evaluation steps of the preset), with the evaluated step before it as the lower end, and not reached when S* lies
past the run's budget. Seeds are pooled per batch size by rule 2 (`cell_steps`, the median of the upper and of
the lower ends), and `fit_critical_batch` fits the brackets. S_min is drawn per curve so that the largest batch
reaches the target at a fraction U(0.3, 0.9) of its budget, so that curves meet the evaluation grid at every
phase. The plans:

- `demo`: config.yaml's study `demo` (MNIST-1D, 4000 training examples, batch sizes 16 .. 512, 15 epochs,
  eval {regular_points: 20, log_points: 10}, checkpoints {log_points: 8}; 2 seeds);
- `demo-4`, `demo-3`: the same plans at 4 and 3 of its batch sizes ({16, 32, 128, 512}, {16, 64, 512});
- `masters_luschi`: config/masters_luschi.yaml's `ml_resnet` (CIFAR-10, 50000 examples, batch sizes 2 .. 2048,
  82 epochs, the schema's default eval {regular_points: 100, log_points: 30}; 1 seed).

True B_crit below the grid (B_min / 4), at its lower edge (B_min), inside (2 B_min, the grid's geometric middle,
B_max / 2), at its upper edge (B_max) and above it (4 B_max); noise sigma 0.05 and 0.2.

Per setting it prints: `claims`, the share of fits that say something (a number, or a bound ">lo" / "<hi");
`coverage`, the share of those that are right (an `ok` interval that holds the truth, a bound on the truth's side);
`accepted`, the share of `ok` fits; `bias`, the median of B_crit estimate / truth - 1 over the `ok` fits;
`raw`, the coverage of the interval itself whatever the status; and, for comparison, `points raw` and
`points bias`: the same curves fitted the old way, the upper ends as exact values (least squares, F interval),
its raw coverage and median bias over all fits with a closed interval. Usage:

    .venv/bin/python benchmarks/bcrit_coverage.py [--reps 200] [--plans demo demo-4 demo-3 masters_luschi]
        [--sigmas 0.05 0.2] [--seed 0] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from batchlab import speedup
from batchlab.config import check_config, dataset_train_size, load_config_file, study_runs
from batchlab.train.plan import make_plan

REPO = Path(__file__).resolve().parents[1]
PRESETS = {  # plan name: (config file, study, batch sizes kept (None: all))
    "demo": ("config.yaml", "demo", None),
    "demo-4": ("config.yaml", "demo", (16, 32, 128, 512)),
    "demo-3": ("config.yaml", "demo", (16, 64, 512)),
    "masters_luschi": ("config/masters_luschi.yaml", "ml_resnet", None),
}
WHERE = ("below", "low edge", "inside low", "inside", "inside high", "high edge", "above")
REACH_FRACTION = (0.3, 0.9)  # where in its budget the largest batch reaches the target


def evaluation_plan(config_file: str, study: str, batch_sizes=None) -> tuple[dict[int, np.ndarray], int]:
    """{batch size: its runs' evaluated steps, sorted} of a preset's study, by batchlab.train.plan.make_plan, and the
    study's number of seeds."""
    config = check_config(load_config_file(REPO / config_file))
    spec = config["studies"][study]
    n_train = dataset_train_size(spec["dataset"], config["datasets"])
    first = {}
    for run in study_runs(study, spec):
        first.setdefault(run.batch_size, run)
    keep = sorted(first) if batch_sizes is None else sorted(batch_sizes)
    return {b: np.array(sorted(make_plan(first[b], n_train).eval_steps), dtype=float) for b in keep}, len(spec["seeds"])


def true_b_crits(batches) -> dict[str, float]:
    b_min, b_max = float(min(batches)), float(max(batches))
    middle = float(np.sqrt(b_min * b_max))
    values = (b_min / 4, b_min, 2 * b_min, middle, b_max / 2, b_max, 4 * b_max)
    return dict(zip(WHERE, values))


def read_steps(plan: dict[int, np.ndarray], b_crit: float, sigma: float, n_seeds: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic curve: batch sizes, and per batch rule 2's steps to target and lower end (NaN: not reached)."""
    batches = np.array(sorted(plan), dtype=float)
    b_max = batches[-1]
    s_min = rng.uniform(*REACH_FRACTION) * plan[int(b_max)][-1] / (1 + b_crit / b_max)
    upper, lower = np.full((len(batches), n_seeds), np.nan), np.full((len(batches), n_seeds), np.nan)
    for i, b in enumerate(batches):
        evals = plan[int(b)]
        crossing = s_min * (1 + b_crit / b) * np.exp(rng.normal(0.0, sigma, n_seeds))
        at = np.searchsorted(evals, crossing)  # the first evaluation at or after the crossing
        reached = (at < len(evals)) & (crossing > 0)
        at = np.clip(at, 1, len(evals) - 1)  # step 0 never counts (rule 1)
        upper[i] = np.where(reached, evals[at], np.nan)
        lower[i] = np.where(reached, evals[at - 1], np.nan)
    return batches, speedup.cell_steps(upper), speedup.cell_steps(lower)


def claim(fit: dict, truth: float) -> bool | None:
    """Whether what a fit reports holds the truth: its interval when `ok`, its bound otherwise; None: no claim."""
    if fit["fit_status"] == speedup.FIT_OK:
        return bool(fit["ci_low"] <= truth <= fit["ci_high"])
    bound = fit["b_crit_bound"]
    if not isinstance(bound, str):
        return None
    value = float(bound[1:])
    return truth > value if bound.startswith(">") else truth < value


def raw_covers(fit: dict, truth: float) -> bool | None:
    """Whether the interval itself holds the truth, whatever the status (0 / inf where it runs off)."""
    if fit["fit_status"] == "too_few_points":
        return None
    low = 0.0 if np.isnan(fit["ci_low"]) else fit["ci_low"]
    high = np.inf if np.isnan(fit["ci_high"]) else fit["ci_high"]
    return bool(low <= truth <= high)


def points_fit(batches, steps) -> tuple[float, float, float]:
    """The old fit: the upper ends as exact values; its estimate and interval (0 / inf where they run off)."""
    keep = np.isfinite(steps)
    if keep.sum() < 3:
        return np.nan, np.nan, np.nan
    b, s = np.log(batches[keep]), np.log(steps[keep])
    best, low, high, _, _ = speedup._points_fit(b, s, 0.95)
    return (float(np.exp(best)), 0.0 if low is None else float(np.exp(low)),
            np.inf if high is None else float(np.exp(high)))


def run_setting(plan, n_seeds: int, b_crit: float, sigma: float, reps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    claims, accepted, raw, old_raw, old_ratio, statuses = [], [], [], [], [], {}
    for _ in range(reps):
        batches, steps, low = read_steps(plan, b_crit, sigma, n_seeds, rng)
        fit = speedup.fit_critical_batch(batches, steps, low)
        statuses[fit["fit_status"]] = statuses.get(fit["fit_status"], 0) + 1
        claims.append(claim(fit, b_crit))
        raw.append(raw_covers(fit, b_crit))
        if fit["fit_status"] == speedup.FIT_OK:
            accepted.append(fit["b_crit"] / b_crit)
        estimate, low_, high_ = points_fit(batches, steps)
        if np.isfinite(estimate):
            old_raw.append(low_ <= b_crit <= high_)
            if 0 < low_ and high_ < np.inf:
                old_ratio.append(estimate / b_crit)
    said = [c for c in claims if c is not None]
    raw = [r for r in raw if r is not None]
    return dict(claims=len(said) / reps, coverage=np.mean(said) if said else np.nan, accepted=len(accepted) / reps,
                bias=np.median(accepted) - 1 if accepted else np.nan, raw=np.mean(raw) if raw else np.nan,
                points_raw=np.mean(old_raw) if old_raw else np.nan,
                points_bias=np.median(old_ratio) - 1 if old_ratio else np.nan,
                statuses=" ".join(f"{k}:{v}" for k, v in sorted(statuses.items(), key=lambda kv: -kv[1])))


def coverage_table(plans, sigmas, reps: int, seed: int = 0, verbose: bool = False) -> pd.DataFrame:
    rows = []
    for name in plans:
        config_file, study, keep = PRESETS[name]
        plan, n_seeds = evaluation_plan(config_file, study, keep)
        for sigma in sigmas:
            for k, (where, b_crit) in enumerate(true_b_crits(plan).items()):
                start = time.perf_counter()
                row = dict(plan=name, n_batches=len(plan), seeds=n_seeds, sigma=sigma, where=where, b_crit=b_crit,
                           **run_setting(plan, n_seeds, b_crit, sigma, reps, seed + 1000 * k))
                rows.append(row)
                if verbose:
                    print(f"  {name} sigma={sigma} {where}: {time.perf_counter() - start:.1f} s", file=sys.stderr,
                          flush=True)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="synthetic curves per setting")
    parser.add_argument("--plans", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.05, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", help="also write the table here")
    parser.add_argument("--statuses", action="store_true", help="print each setting's fit_status counts too")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    table = coverage_table(args.plans, args.sigmas, args.reps, args.seed, verbose=True)
    if args.csv:
        table.to_csv(args.csv, index=False)
    columns = ["plan", "n_batches", "sigma", "where", "b_crit", "claims", "coverage", "accepted", "bias", "raw",
               "points_raw", "points_bias"] + (["statuses"] if args.statuses else [])
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\n{args.reps} curves per setting; min coverage {table['coverage'].min():.3f}; "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
