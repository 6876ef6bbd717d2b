"""Measure a run's checkpoints: the rows of sharpness.parquet.

For each checkpoint (the final weights, and with `along_training` every log-spaced one)
on a fixed training subset with no augmentation:
- Keskar's epsilon-sharpness, full space and random subspace, for each epsilon;
- the Hessian's top eigenvalue (Lanczos) and trace (Hutchinson);
- McCandlish's gradient noise scale B_simple, from batches of the whole training set.
Each row carries the checkpoint's full-train-set loss, so sharpness can be plotted against
cross-entropy along training.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from batchlab import io
from batchlab.analysis.hessian import hutchinson_trace, top_eigenvalue
from batchlab.analysis.noise_scale import model_noise_scale
from batchlab.analysis.objective import ModelObjective
from batchlab.analysis.sharpness import eps_sharpness
from batchlab.config import RunSpec
from batchlab.data import Dataset
from batchlab.models import build_model
from batchlab.tables import SHARPNESS_COLUMNS

log = logging.getLogger(__name__)
METRICS = ("eps_sharpness_full", "eps_sharpness_subspace", "hessian_lambda_max", "hessian_trace", "noise_scale")


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
        train_loss = pd.read_parquet(run_dir / "metrics.parquet", columns=["step", "train_loss"]).set_index("step")["train_loss"]
        for path in (run_dir / "checkpoints").glob("step_*.pt"):
            step = int(path.stem.removeprefix("step_"))
            if step != summary["steps"] and step in train_loss.index:
                out.append((step, path, float(train_loss[step])))
    return sorted(out, key=lambda t: t[0])


def measure_state(spec: RunSpec, state_dict: dict, data: Dataset, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> list[dict]:
    """Every metric at one set of weights; NaN values where the weights are not finite."""
    model = build_model(spec.model, data.input_shape, data.num_classes, spec.bn_batch_size).to(x.device)
    model.load_state_dict(state_dict)
    seed, bn_mode = cfg["seed"], cfg["bn_mode"]
    rows: list[dict] = []

    def add(metric, value, epsilon=np.nan, stderr=np.nan, subset_loss=np.nan, n_evals=0):
        rows.append(dict(metric=metric, epsilon=epsilon, value=float(value), stderr=float(stderr),
                         subset_loss=float(subset_loss), n_evals=int(n_evals)))

    if not all(torch.isfinite(p).all() for p in model.parameters()):
        log.warning("%s: weights are not finite; its metrics are NaN", spec.run_id)
        for metric in METRICS:
            for eps in cfg["sharpness"]["epsilons"] if metric.startswith("eps_") else [np.nan]:
                add(metric, np.nan, epsilon=eps)
        return rows

    obj = ModelObjective(model, x, y, bn_mode=bn_mode)
    sharp = cfg["sharpness"]
    for eps in sharp["epsilons"]:
        for metric, dim, wanted in (("eps_sharpness_full", None, sharp["full_space"]),
                                    ("eps_sharpness_subspace", sharp["subspace_dim"], sharp["subspace_dim"] is not None)):
            if wanted:
                r = eps_sharpness(obj, eps, subspace_dim=dim, max_iter=sharp["max_iter"], seed=seed)
                add(metric, r.value, epsilon=eps, subset_loss=r.loss, n_evals=r.n_fev)
    hess = cfg["hessian"]
    lam, n_hvp = top_eigenvalue(obj, tol=hess["tol"], max_hvp=hess["max_hvp"], seed=seed)
    add("hessian_lambda_max", lam, n_evals=n_hvp)
    trace, trace_se = hutchinson_trace(obj, n_probes=hess["n_probes"], seed=seed)
    add("hessian_trace", trace, stderr=trace_se, n_evals=hess["n_probes"])
    ns = cfg["noise_scale"]
    noise = model_noise_scale(model, data.x_train, data.y_train, b_small=ns["b_small"], b_big=ns["b_big"],
                              n_draws=ns["n_draws"], seed=seed, bn_mode=bn_mode)
    add("noise_scale", noise.b_simple, n_evals=2 * ns["n_draws"])
    return rows


def analyse_run(run_dir: str | Path, spec: RunSpec, data: Dataset, cfg: dict, along_training: bool) -> pd.DataFrame:
    """All metrics of a run's checkpoints (see the module docstring), one row per (step, metric, epsilon)."""
    run_dir = Path(run_dir)
    x, y = analysis_subset(data, cfg["n_examples"], cfg["seed"])
    rows = []
    checkpoints = run_checkpoints(run_dir, along_training)
    for step, path, train_loss in tqdm(checkpoints, desc=spec.run_id, file=sys.stderr, mininterval=10):
        state = io.load_torch(path, map_location=x.device)["model"]
        for row in measure_state(spec, state, data, x, y, cfg):
            rows.append(dict(run_id=spec.run_id, step=step, train_loss=train_loss, bn_mode=cfg["bn_mode"],
                             n_examples=len(x), **row))
    return pd.DataFrame(rows, columns=list(SHARPNESS_COLUMNS))
