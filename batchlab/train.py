"""The training loop: one run of the grid, from a `RunSpec` to its run directory.

Habits that keep it fast and safe:
- the data set sits on the device as tensors; each epoch draws a permutation seeded by
  (seed, epoch) and batches are index slices of it, so there is no DataLoader and a
  resumed run sees exactly the batches an uninterrupted one would;
- the loss of every step is written into a device buffer and read back only at
  evaluation points, so the hot loop never waits for the device;
- divergence (a non-finite batch loss, or one above `divergence.max_loss`) is found at
  the next evaluation point, and the run ends there with `status = "diverged"`, the first
  bad step recorded, and its outputs written like any other run;
- with a convergence budget (`budget.stop`, Keskar's "until the loss ceased to improve")
  every epoch end is an evaluation point too, and the run ends at the first evaluation
  that meets a criterion (batchlab.health.stop_reason); `epochs` or `steps` is then a cap.
  The criteria read only the curve's evaluations, so a resumed run stops where an
  uninterrupted one would;
- checkpoints hold the model, the optimizer and the curve so far, stamped with a hash
  of the run's config; a restarted run resumes from the newest matching one.

How a run ends, in run.json:
    status       "diverged" (a bad batch loss), else "stalled" when it finished without
                 training (final train loss near chance, or no improvement on step 0:
                 batchlab.health.stall_reason, logged as a warning), else "completed".
                 A stalled run writes all its outputs like a completed one.
    stop_reason  "diverged"; "train_loss", "train_acc" or "plateau" (a `budget.stop`
                 criterion met, checked after updates only, so never at step 0);
                 "budget" (it ran to its cap without meeting one).
    steps        the step it ended at; planned_steps is the cap.

Curve rows: row k >= 1 is update k: `batch_loss` is the loss of the batch of update k
(before the update) and `lr` its learning rate; the evaluation columns at row k are
measured after update k. Row 0 is the evaluation at initialisation.

Run directory:
    metrics.parquet             the dense curve (one row per step)
    final.pt                    final weights (+ run_id, spec, step, status)
    checkpoints/step_<k>.pt     log-spaced checkpoints for along-training analyses
    checkpoints/resume.pt       only while a run is unfinished
    checkpoints/COMPLETE        once it has finished (a later rerun then starts from scratch)
    run.json                    resolved config, seed, versions, device, git commit, results
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from batchlab import io, provenance
from batchlab.config import RunSpec
from batchlab.data import Dataset, load_prepared
from batchlab.data.augment import apply_augment
from batchlab.health import stall_reason, stop_reason
from batchlab.lr_rules import lr_factor
from batchlab.models import build_model

log = logging.getLogger(__name__)
EVAL_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")
COMPLETE_MARK = "COMPLETE"  # in checkpoints/: the run behind these checkpoints finished


# --- plan: how many steps, and when to evaluate and checkpoint ----------------------------

@dataclass(frozen=True)
class Plan:
    steps_per_epoch: int
    total_steps: int
    eval_steps: frozenset[int]
    checkpoint_steps: frozenset[int]


def log_spaced_steps(total: int, n: int) -> set[int]:
    """About `n` integer steps spaced evenly in log between 1 and `total`."""
    if n <= 0 or total <= 0:
        return set()
    return {int(s) for s in np.unique(np.round(np.geomspace(1, total, n)))}


def make_plan(spec: RunSpec, n_train: int) -> Plan:
    steps_per_epoch = n_train // spec.batch_size  # the incomplete last batch is dropped
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {spec.batch_size} is larger than the {n_train} training examples")
    budget = spec.budget
    total = budget["epochs"] * steps_per_epoch if "epochs" in budget else budget["steps"]
    regular = {int(s) for s in np.round(np.linspace(0, total, spec.eval["regular_points"] + 1))}
    logs = log_spaced_steps(total, spec.eval["log_points"])
    # the convergence criteria are checked at evaluations, so at least once an epoch
    epoch_ends = set(range(steps_per_epoch, total + 1, steps_per_epoch)) if budget.get("stop") else set()
    ckpts = {0} | (log_spaced_steps(total, spec.checkpoints["log_points"]) - {total})
    evals = regular | logs | epoch_ends | ckpts | {0, total}
    return Plan(steps_per_epoch, total, frozenset(evals), frozenset(ckpts))


# --- pieces of the loop --------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def build_optimizer(params, cfg: dict, lr: float) -> torch.optim.Optimizer:
    if cfg["name"] == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"]
        )
    if cfg["name"] == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"])
    raise ValueError(f"unknown optimizer {cfg['name']!r}; choose sgd or adam")


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training set in `epoch`: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole of (x, y), in eval mode (BN running stats)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").double()
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    model.train(was_training)
    return loss_sum.item() / len(x), correct.item() / len(x)


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """One SGD update as a function of the batch; returns the batch loss as a device tensor."""

    def step(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def first_bad_step(batch_loss: np.ndarray, start: int, stop: int, max_loss: float) -> int | None:
    """The first step in [start, stop] whose batch loss is non-finite or above max_loss."""
    window = batch_loss[start : stop + 1]
    bad = np.flatnonzero(~np.isfinite(window) | (window > max_loss))
    return int(start + bad[0]) if len(bad) else None


# --- checkpoints ---------------------------------------------------------------------------

@dataclass
class Curve:
    """The curve so far, on the host."""

    batch_loss: np.ndarray  # (S+1,)
    lr: np.ndarray  # (S+1,)
    evals: dict[int, tuple[float, float, float, float]]

    @classmethod
    def empty(cls, total_steps: int) -> "Curve":
        return cls(np.full(total_steps + 1, np.nan), np.full(total_steps + 1, np.nan), {})

    def to_state(self, upto: int) -> dict:
        steps = sorted(self.evals)
        return {
            "batch_loss": torch.from_numpy(self.batch_loss[: upto + 1].copy()),
            "lr": torch.from_numpy(self.lr[: upto + 1].copy()),
            "eval_steps": torch.tensor(steps, dtype=torch.int64),
            "eval_values": torch.tensor([self.evals[s] for s in steps], dtype=torch.float64).reshape(-1, 4),
        }

    @classmethod
    def from_state(cls, state: dict, total_steps: int) -> "Curve":
        curve = cls.empty(total_steps)
        n = len(state["batch_loss"])
        curve.batch_loss[:n] = state["batch_loss"].numpy()
        curve.lr[:n] = state["lr"].numpy()
        curve.evals = {int(s): tuple(v.tolist()) for s, v in zip(state["eval_steps"], state["eval_values"])}
        return curve

    def frame(self, upto: int, steps_per_epoch: int, batch_size: int) -> pd.DataFrame:
        steps = np.arange(upto + 1)
        df = pd.DataFrame(
            {
                "step": steps,
                "epoch": steps / steps_per_epoch,
                "examples_seen": steps * batch_size,
                "lr": self.lr[: upto + 1],
                "batch_loss": self.batch_loss[: upto + 1],
            }
        )
        values = np.full((upto + 1, 4), np.nan)
        for s, v in self.evals.items():
            if s <= upto:
                values[s] = v
        for i, col in enumerate(EVAL_COLUMNS):
            df[col] = values[:, i]
        return df


def save_checkpoint(path: Path, model, optimizer, step: int, curve: Curve, chash: str, spec: RunSpec, wall: float) -> None:
    io.save_torch(
        {
            "config_hash": chash,
            "run_id": spec.run_id,
            "spec": spec.to_dict(),
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "curve": curve.to_state(step),
            "wall_time_s": wall,
        },
        path,
    )


def newest_checkpoint(ckpt_dir: Path, chash: str) -> dict | None:
    """The checkpoint with the highest step whose config hash matches, if any."""
    best = None
    for path in ckpt_dir.glob("*.pt"):
        try:
            state = io.load_torch(path)
        except Exception as exc:  # a damaged file is skipped, not fatal: an older one will do
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        if state.get("config_hash") != chash:
            continue
        if best is None or state["step"] > best["step"]:
            best = state
    return best


# --- the run -------------------------------------------------------------------------------

def train_run(
    spec: RunSpec,
    data: Dataset | str | Path,
    run_dir: str | Path,
    device: str = "auto",
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Train one run into `run_dir` and return its summary (also written to run.json).

    `max_steps` stops early once that many updates are done, leaving a resume checkpoint
    and no final outputs (for chunked jobs under a time limit, and for tests of resume).
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    dev = resolve_device(device)
    if not isinstance(data, Dataset):
        data = load_prepared(data, dev)
    if data.x_train.device.type != dev.type:
        raise ValueError(f"data set is on {data.x_train.device}, the run on {dev}")
    plan = make_plan(spec, data.n_train)
    S, B = plan.total_steps, spec.batch_size
    chash = provenance.config_hash(spec.to_dict())

    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.input_shape, data.num_classes, spec.bn_batch_size).to(dev)
    peak_lr = spec.lr
    optimizer = build_optimizer(model.parameters(), spec.optimizer, peak_lr)
    step_fn = make_step(model, optimizer)

    if (ckpt_dir / COMPLETE_MARK).exists():
        # This run finished before and snakemake still asked for it again (its code or inputs
        # changed): start over rather than resume from checkpoints of the old code.
        log.info("%s finished before; retraining from scratch", spec.run_id)
        shutil.rmtree(ckpt_dir)
    resumed = newest_checkpoint(ckpt_dir, chash)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        curve = Curve.from_state(resumed["curve"], S)
        step, wall_before = resumed["step"], resumed["wall_time_s"]
        log.info("resuming %s from step %d of %d", spec.run_id, step, S)
    else:
        curve, step, wall_before = Curve.empty(S), 0, 0.0

    def evaluate_now(at: int) -> None:
        ev = spec.eval["batch_size"]
        curve.evals[at] = (*evaluate(model, data.x_train, data.y_train, ev), *evaluate(model, data.x_test, data.y_test, ev))

    def wall() -> float:
        return wall_before + time.perf_counter() - t_start

    t_start = time.perf_counter()
    if step == 0:
        evaluate_now(0)
        save_checkpoint(ckpt_dir / "step_0.pt", model, optimizer, 0, curve, chash, spec, wall())

    sched = spec.schedule
    milestones = tuple(sched["decay_milestones"])
    losses = torch.full((S + 1,), float("nan"), device=dev)
    flushed = checked = step  # host copy of batch_loss is valid up to `flushed`
    last_resume_save = time.perf_counter()
    stopped, diverged_step = None, None  # stopped: the stop_reason once divergence or `budget.stop` ends the run
    perm_epoch, perm = -1, None
    current_lr = None
    bar = tqdm(total=S, initial=step, desc=spec.run_id, file=sys.stderr, mininterval=1 if sys.stderr.isatty() else 15)

    while step < S:
        if max_steps is not None and step >= max_steps:
            break
        # batch: slice of this epoch's permutation
        epoch, pos = divmod(step, plan.steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = epoch_permutation(data.n_train, spec.seed, epoch).to(dev), epoch
        idx = perm[pos * B : (pos + 1) * B]
        xb, yb = data.x_train[idx], data.y_train[idx]
        if data.augment != "none":
            g = torch.Generator(device=dev).manual_seed(spec.seed * 1_000_003 + step)
            xb = apply_augment(data.augment, xb, g)
        # learning rate: a pure function of the step
        lr = peak_lr * lr_factor(step, S, sched["warmup_steps"], sched["decay"], sched["decay_gamma"], milestones)
        if lr != current_lr:
            for group in optimizer.param_groups:
                group["lr"] = lr
            current_lr = lr
        # forward, backward, update; the loss stays on the device
        losses[step + 1] = step_fn(xb, yb)
        curve.lr[step + 1] = lr
        step += 1
        bar.update(1)

        if step in plan.eval_steps:
            # evaluation point: read the losses back, check divergence, evaluate, checkpoint
            curve.batch_loss[flushed + 1 : step + 1] = losses[flushed + 1 : step + 1].cpu().numpy()
            flushed = step
            bad = first_bad_step(curve.batch_loss, checked + 1, step, spec.divergence["max_loss"])
            checked = step
            evaluate_now(step)
            if bad is not None:
                stopped, diverged_step = "diverged", bad
                log.warning("%s diverged at step %d (batch loss %s)", spec.run_id, bad, curve.batch_loss[bad])
                break
            train_loss, _, _, test_acc = curve.evals[step]
            bar.set_postfix(train_loss=f"{train_loss:.4f}", test_acc=f"{test_acc:.3f}", refresh=False)
            stopped = stop_reason(curve.evals, plan.steps_per_epoch, spec.budget.get("stop"))
            if stopped is not None:
                # final.pt holds these weights, so no step checkpoint duplicates them
                log.info("%s stops at step %d of %d: %s criterion met", spec.run_id, step, S, stopped)
                break
            if step in plan.checkpoint_steps:
                save_checkpoint(ckpt_dir / f"step_{step}.pt", model, optimizer, step, curve, chash, spec, wall())
            elif step < S and time.perf_counter() - last_resume_save > spec.checkpoints["resume_every_s"]:
                save_checkpoint(ckpt_dir / "resume.pt", model, optimizer, step, curve, chash, spec, wall())
                last_resume_save = time.perf_counter()
    bar.close()

    if stopped is None and step < S:  # stopped by max_steps: keep what we have, finish later
        curve.batch_loss[flushed + 1 : step + 1] = losses[flushed + 1 : step + 1].cpu().numpy()
        save_checkpoint(ckpt_dir / "resume.pt", model, optimizer, step, curve, chash, spec, wall())
        return {"run_id": spec.run_id, "status": "interrupted", "step": step}

    stopped = stopped or "budget"
    status = "diverged" if stopped == "diverged" else health_status(spec, curve, data.num_classes)
    return _write_outputs(spec, run_dir, model, curve, plan, step, status, stopped, diverged_step, dev, wall(), resumed)


def health_status(spec: RunSpec, curve: Curve, num_classes: int) -> str:
    """The status of a run that ended without diverging, "completed" or "stalled"; a stall is logged with its reason."""
    reason = stall_reason(curve.evals, num_classes, spec.health)
    if reason is None:
        return "completed"
    log.warning("%s stalled: %s", spec.run_id, reason)
    return "stalled"


def _write_outputs(spec, run_dir, model, curve, plan, step, status, stopped, diverged_step, dev, wall_time, resumed) -> dict:
    metrics = curve.frame(step, plan.steps_per_epoch, spec.batch_size)
    io.write_parquet(metrics, run_dir / "metrics.parquet")
    io.save_torch(
        {"run_id": spec.run_id, "spec": spec.to_dict(), "step": step, "status": status, "model": model.state_dict()},
        run_dir / "final.pt",
    )
    final = curve.evals[step]
    evaluated = metrics.dropna(subset=["test_acc"])
    summary = {
        "run_id": spec.run_id,
        "spec": spec.to_dict(),
        "seed": spec.seed,
        "lr": spec.lr,
        "status": status,
        "diverged_step": diverged_step,
        "stop_reason": stopped,
        "steps": step,
        "planned_steps": plan.total_steps,
        "steps_per_epoch": plan.steps_per_epoch,
        "epochs": step / plan.steps_per_epoch,
        **{f"final_{k}": v for k, v in zip(EVAL_COLUMNS, final)},
        "best_test_acc": float(evaluated["test_acc"].max()),
        "wall_time_s": wall_time,
        "resumed_from_step": resumed["step"] if resumed is not None else None,
        "device": provenance.device_name(dev),
        "versions": provenance.versions(),
        "git": provenance.git_commit(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    io.write_json(summary, run_dir / "run.json")
    (run_dir / "checkpoints" / "resume.pt").unlink(missing_ok=True)
    (run_dir / "checkpoints" / COMPLETE_MARK).touch()
    return summary
