"""Measure a run's checkpoints: the rows of sharpness.parquet.

For each checkpoint (the final weights, and with `along_training` every other one), the
measures the study's `analysis.measures` lists, on a fixed training subset with no augmentation:
- `sharpness`: Keskar's epsilon-sharpness, full space and random subspace, for each epsilon,
  by Keskar's own short L-BFGS-B search and, with `sharpness.converged`, at the final
  checkpoint by the multi-start search run to convergence (`batchlab.analysis.sharpness`);
- `hessian`: the Hessian's top eigenvalue (Lanczos) and trace (Hutchinson);
- `noise_scale`: McCandlish's B_simple = tr(Sigma) / |G|^2 on the whole training set, exact
  from every per-example gradient or the two-batch estimate (`batchlab.analysis.noise_scale`);
- `b_noise`: McCandlish's B_noise = tr(H Sigma) / (G^T H G) on the whole training set, exact
  over every example or from Rademacher probes (`batchlab.analysis.b_noise`).
Each row carries the checkpoint's full-train-set loss, so a measure can be read against
cross-entropy along training, and says how its value was obtained (`method`) with a 95%
interval (`ci_low`, `ci_high`) where the method gives one:
- eps_sharpness_*: "lbfgsb" (Keskar's search) or "lbfgsb_multistart" (converged); a local
  maximisation, a lower bound on the true maximum: no interval;
- hessian_lambda_max: "lanczos" (deterministic to its tolerance): no interval;
- hessian_trace: "hutchinson", a t-interval from the probes' standard error;
- noise_scale: "exact" (an interval over the examples from a grouped jackknife) or
  "two_batch" (Fieller's interval over the draws);
- b_noise: "exact" (no interval: NaN) or "probes" (a t-interval over the probes).
`error_target_met` says, for the adaptive estimates (two_batch, probes), whether drawing
stopped because the relative error target was met (True) or because the cap was reached
(False); None for the others.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm import tqdm

from batchlab import io
from batchlab.analysis.hessian import hutchinson_trace, top_eigenvalue
from batchlab.analysis.b_noise import b_noise_config, b_noise_method, model_b_noise
from batchlab.analysis.noise_scale import model_noise_scale, noise_scale_method
from batchlab.analysis.objective import ModelObjective
from batchlab.analysis.sharpness import eps_sharpness, eps_sharpness_converged
from batchlab.config import RunSpec
from batchlab.data import Dataset
from batchlab.models import build_model
from batchlab.tables import CONVERGED_SEARCH, KESKAR_SEARCH, SHARPNESS_COLUMNS

log = logging.getLogger(__name__)
MEASURES = ("sharpness", "hessian", "noise_scale", "b_noise")  # the config's analysis.measures
CI_LEVEL = 0.95


def t_interval(mean: float, stderr: float, n: int) -> tuple[float, float]:
    """The 95% Student-t interval of a mean of n independent terms; NaN when n < 2."""
    if n < 2 or not np.isfinite(stderr):
        return np.nan, np.nan
    half = stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * stderr
    return mean - half, mean + half


def analysis_subset(data: Dataset, n_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed sample of the training set: the same examples for every run of a study."""
    n = min(n_examples, data.n_train)
    idx = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(seed))[:n].to(data.x_train.device)
    return data.x_train[idx], data.y_train[idx]


def run_checkpoints(run_dir: Path, along_training: bool) -> list[tuple[int, Path, float]]:
    """(step, path, full train loss) of the checkpoints to measure, by step.

    The step is in each checkpoint's file name and its train loss in the run's curve
    (every checkpoint step is an evaluation step), so no checkpoint is loaded here.
    """
    summary = io.read_json(run_dir / "run.json")
    out = [(summary["steps"], run_dir / "final.pt", summary["final_train_loss"])]
    if along_training:
        train_loss = io.read_parquet(run_dir / "metrics.parquet", ["step", "train_loss"]).set_index("step")["train_loss"]
        for path in (run_dir / "checkpoints").glob("step_*.pt"):
            step = int(path.stem.removeprefix("step_"))
            if step != summary["steps"] and step in train_loss.index:
                out.append((step, path, float(train_loss[step])))
    return sorted(out, key=lambda t: t[0])


def planned_rows(cfg: dict, noise_method: str, b_noise_method: str, final: bool = True) -> list[tuple[str, str, float]]:
    """(metric, method, epsilon) of every row `cfg` asks for at one checkpoint, in the order they are measured.

    The converged sharpness search (about 2000 evaluations, against Keskar's 15) runs at the final
    checkpoint only, where Keskar's comparison reads it; along training Keskar's search alone.
    """
    measures, sharp = cfg.get("measures", MEASURES), cfg["sharpness"]
    rows = []
    if "sharpness" in measures:
        searches = [KESKAR_SEARCH] + ([CONVERGED_SEARCH] if sharp.get("converged", False) and final else [])
        spaces = [m for m, wanted in (("eps_sharpness_full", sharp["full_space"]),
                                      ("eps_sharpness_subspace", sharp["subspace_dim"] is not None)) if wanted]
        rows += [(metric, search, eps) for eps in sharp["epsilons"] for metric in spaces for search in searches]
    if "hessian" in measures:
        rows += [("hessian_lambda_max", "lanczos", np.nan), ("hessian_trace", "hutchinson", np.nan)]
    if "noise_scale" in measures:
        rows.append(("noise_scale", noise_method, np.nan))
    if "b_noise" in measures:
        rows.append(("b_noise", b_noise_method, np.nan))
    return rows


def measure_state(spec: RunSpec, state_dict: dict, data: Dataset, x: torch.Tensor, y: torch.Tensor, cfg: dict,
                  final: bool = True) -> list[dict]:
    """Every metric `cfg["measures"]` asks for at one set of weights (`final`: the run's final weights); NaN values
    where the weights are not finite.

    The noise scales are measured on the whole training set (data.x_train), the other
    metrics on the analysis subset (x, y).
    """
    model = build_model(spec.model, data.input_shape, data.num_classes, spec.bn_batch_size, **spec.model_options).to(x.device)
    model.load_state_dict(state_dict)
    seed, bn_mode = cfg["seed"], cfg["bn_mode"]
    ns, bn_cfg = cfg["noise_scale"], cfg.get("b_noise", {})
    plan = planned_rows(cfg, noise_scale_method(model, data.n_train, ns, bn_mode),
                        b_noise_method(model, data.n_train, b_noise_config(bn_cfg), bn_mode), final)
    rows: list[dict] = []

    def add(metric, value, method, epsilon=np.nan, stderr=np.nan, subset_loss=np.nan, n_evals=0, ci=(np.nan, np.nan),
            error_target_met=None):
        rows.append(dict(metric=metric, epsilon=epsilon, value=float(value), stderr=float(stderr),
                         subset_loss=float(subset_loss), n_evals=int(n_evals),
                         ci_low=float(ci[0]), ci_high=float(ci[1]), method=method, error_target_met=error_target_met))

    if not all(torch.isfinite(p).all() for p in model.parameters()):
        log.warning("%s: weights are not finite; its metrics are NaN", spec.run_id)
        for metric, method, eps in plan:
            add(metric, np.nan, method, epsilon=eps)
        return rows

    obj = ModelObjective(model, x, y, bn_mode=bn_mode)
    sharp, hess = cfg["sharpness"], cfg["hessian"]
    for metric, method, eps in plan:
        if metric.startswith("eps_"):
            dim = sharp["subspace_dim"] if metric == "eps_sharpness_subspace" else None
            r = (eps_sharpness(obj, eps, subspace_dim=dim, max_iter=sharp["max_iter"], seed=seed)
                 if method == KESKAR_SEARCH else eps_sharpness_converged(obj, eps, subspace_dim=dim, seed=seed))
            add(metric, r.value, method, epsilon=eps, subset_loss=r.loss, n_evals=r.n_fev)
        elif metric == "hessian_lambda_max":
            lam, n_hvp = top_eigenvalue(obj, tol=hess["tol"], max_hvp=hess["max_hvp"], seed=seed)
            add(metric, lam, method, n_evals=n_hvp)
        elif metric == "hessian_trace":
            trace, trace_se = hutchinson_trace(obj, n_probes=hess["n_probes"], seed=seed)
            add(metric, trace, method, stderr=trace_se, n_evals=hess["n_probes"],
                ci=t_interval(trace, trace_se, hess["n_probes"]))
        elif metric == "noise_scale":
            noise = model_noise_scale(model, data.x_train, data.y_train, ns, seed=seed, bn_mode=bn_mode)
            # n_evals counts gradient evaluations, whose kind the method says: per-example gradients
            # for exact (one per training example), batch gradients for two_batch (a small and a big
            # batch per draw, so 2 x draws actually taken)
            n_grads = noise.n_examples if noise.method == "exact" else 2 * noise.n_draws
            add(metric, noise.b_simple, noise.method, n_evals=n_grads, ci=(noise.ci_low, noise.ci_high),
                error_target_met=noise.rel_error_met)
        else:
            got = model_b_noise(model, data.x_train, data.y_train, bn_cfg, seed=seed, bn_mode=bn_mode)
            exact = got.method == "exact"  # exact for this training set: no interval rather than one of width zero
            add(metric, got.b_noise, got.method, stderr=got.stderr, n_evals=got.n_hvp,
                ci=(np.nan, np.nan) if exact else (got.ci_low, got.ci_high),
                error_target_met=None if exact else got.rel_error_met)
    return rows


def analyse_run(run_dir: str | Path, spec: RunSpec, data: Dataset, cfg: dict, along_training: bool) -> pd.DataFrame:
    """All metrics of a run's checkpoints (see the module docstring), one row per (step, metric, epsilon)."""
    run_dir = Path(run_dir)
    data = data.train_fraction(spec.train_fraction)  # the examples this run trained on
    x, y = analysis_subset(data, cfg["n_examples"], cfg["seed"])
    rows = []
    checkpoints = run_checkpoints(run_dir, along_training)
    for step, path, train_loss in tqdm(checkpoints, desc=spec.run_id, file=sys.stderr, mininterval=10):
        state = io.load_torch(path, map_location=x.device)["model"]
        for row in measure_state(spec, state, data, x, y, cfg, final=path.name == "final.pt"):
            rows.append(dict(run_id=spec.run_id, step=step, train_loss=train_loss, bn_mode=cfg["bn_mode"],
                             n_examples=len(x), **row))
    return pd.DataFrame(rows, columns=list(SHARPNESS_COLUMNS))


def analyse_runs(runs: list[tuple[str | Path, RunSpec, bool]], data: Dataset, cfg: dict) -> pd.DataFrame:
    """`analyse_run` for each (run_dir, spec, along_training), as one table: one job measures a stack's runs,
    so the interpreter, torch and torch.func start once for all of them."""
    tables = [analyse_run(run_dir, spec, data, cfg, along_training) for run_dir, spec, along_training in runs]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(SHARPNESS_COLUMNS))
