"""The training loop: a stack of runs of one model and one batch size, each into its own run directory.

A stack's members differ only in LR rule, base LR and seed. They train together: one
stacked model (batchlab.stacked.models: every weight with a leading run dimension), one
stacked optimizer (batchlab.stacked.optim: torch.optim's update per member, each with its
own LR and state) and one step that updates all of them. Each member keeps its own
initialisation, data order, augmentation draws, LR schedule, curve, evaluations,
divergence check, checkpoints and resume; a member that diverges or meets its stop
criterion writes its outputs at that evaluation and leaves the stack. A single run is a
stack of one (`train_run`).

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
  of the run's config and checksummed (batchlab.io); a restarted run resumes from the
  newest matching one that passes its checksum;
- a resume checkpoint is written as often as its cost allows (ResumeClock), and on
  SIGTERM at the next step boundary, after which training stops with Interrupted.

How a run ends, in run.json:
    status       "diverged" (a bad batch loss), else "stalled" when it finished without
                 training (final train loss near chance, the entropy of the training
                 targets' prior, or no improvement on step 0: batchlab.health.stall_reason,
                 logged as a warning), else "completed".
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
    checkpoints/step_<k>.pt     log-spaced (and `checkpoints.regular_points` evenly spaced) checkpoints
                                for along-training analyses
    checkpoints/resume.pt       only while a run is unfinished
    checkpoints/COMPLETE        once it has finished (a later rerun then starts from scratch)
    run.json                    resolved config, seed, versions, device, git commit, results
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from batchlab import io, provenance
from batchlab.config import RunSpec
from batchlab.data import IGNORE_INDEX, Dataset, load_prepared
from batchlab.data.augment import apply_augment
from batchlab.devices import resolve_device
from batchlab.health import prior_entropy, stall_reason, stop_reason
from batchlab.lr_rules import lr_factor
from batchlab.metrics import member_confusion, member_sums, mean_iou, perplexity
from batchlab.stacked.models import StackedModel, build_stacked_model
from batchlab.stacked.optim import StackedOptimizer
from batchlab.stacked.step import make_step, resolve_step_mode

log = logging.getLogger(__name__)
EVAL_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")
SEGMENTATION_COLUMNS = ("train_miou", "test_miou")


def eval_columns(task: str) -> tuple[str, ...]:
    """What an evaluation measures: loss and accuracy per target on both splits, and mean IoU for segmentation."""
    return EVAL_COLUMNS + SEGMENTATION_COLUMNS if task == "segmentation" else EVAL_COLUMNS
COMPLETE_MARK = "COMPLETE"  # in checkpoints/: the run behind these checkpoints finished


# --- plan: how many steps, and when to evaluate and checkpoint ----------------------------

@dataclass(frozen=True)
class Plan:
    """When a run evaluates and checkpoints. Every checkpoint step is an evaluation step (its
    train loss is in the curve); the final step never has a step_<k>.pt, final.pt holds it."""

    steps_per_epoch: int
    total_steps: int
    eval_steps: frozenset[int]
    checkpoint_steps: frozenset[int]


def log_spaced_steps(total: int, n: int) -> set[int]:
    """About `n` integer steps spaced evenly in log between 1 and `total`."""
    if n <= 0 or total <= 0:
        return set()
    return {int(s) for s in np.unique(np.round(np.geomspace(1, total, n)))}


def regular_steps(total: int, n: int) -> set[int]:
    """`n` intervals' worth of evenly spaced integer steps from 0 to `total`, both included."""
    return {int(s) for s in np.round(np.linspace(0, total, n + 1))}


def make_plan(spec: RunSpec, n_train: int) -> Plan:
    """Steps, evaluations and checkpoints of a run on `n_train` training examples.

    Evaluations: `eval.regular_points` evenly spaced and `eval.log_points` log-spaced steps,
    every epoch end under a convergence budget, every checkpoint step, and steps 0 and the
    last. Checkpoints: step 0, `checkpoints.log_points` log-spaced steps and, with
    `checkpoints.regular_points` = k > 0, the k evenly spaced steps 0, total/k, ..,
    (k-1) total/k (rounded), never the last step (final.pt).
    """
    steps_per_epoch = n_train // spec.batch_size  # the incomplete last batch is dropped
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {spec.batch_size} is larger than the {n_train} training examples")
    budget = spec.budget
    total = budget["epochs"] * steps_per_epoch if "epochs" in budget else budget["steps"]
    regular = regular_steps(total, spec.eval["regular_points"])
    logs = log_spaced_steps(total, spec.eval["log_points"])
    # the convergence criteria are checked at evaluations, so at least once an epoch
    epoch_ends = set(range(steps_per_epoch, total + 1, steps_per_epoch)) if budget.get("stop") else set()
    ckpt_regular = regular_steps(total, spec.checkpoints.get("regular_points", 0))  # {0} when 0
    ckpts = {0} | ((log_spaced_steps(total, spec.checkpoints["log_points"]) | ckpt_regular) - {total})
    evals = regular | logs | epoch_ends | ckpts | {0, total}
    return Plan(steps_per_epoch, total, frozenset(evals), frozenset(ckpts))


# --- pieces of the loop --------------------------------------------------------------------

def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training set in `epoch`: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and accuracy per target over the whole of (x, y), in eval mode (BN running stats)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, device=x.device, dtype=torch.float64)  # loss, correct, targets
    for i in range(0, len(x), batch_size):
        sums = member_sums(model(x[i : i + batch_size])[None], y[i : i + batch_size][None])
        totals += torch.cat(sums).double()
    model.train(was_training)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count


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
    evals: dict[int, tuple[float, ...]]  # step -> one value per column
    columns: tuple[str, ...] = EVAL_COLUMNS

    @classmethod
    def empty(cls, total_steps: int, columns: tuple[str, ...] = EVAL_COLUMNS) -> "Curve":
        return cls(np.full(total_steps + 1, np.nan), np.full(total_steps + 1, np.nan), {}, columns)

    def to_state(self, upto: int) -> dict:
        steps = sorted(self.evals)
        return {
            "batch_loss": torch.from_numpy(self.batch_loss[: upto + 1].copy()),
            "lr": torch.from_numpy(self.lr[: upto + 1].copy()),
            "eval_steps": torch.tensor(steps, dtype=torch.int64),
            "eval_values": torch.tensor([self.evals[s] for s in steps], dtype=torch.float64).reshape(-1, len(self.columns)),
        }

    @classmethod
    def from_state(cls, state: dict, total_steps: int, columns: tuple[str, ...] = EVAL_COLUMNS) -> "Curve":
        curve = cls.empty(total_steps, columns)
        n = len(state["batch_loss"])
        curve.batch_loss[:n] = state["batch_loss"].numpy()
        curve.lr[:n] = state["lr"].numpy()
        curve.evals = {int(s): tuple(v.tolist()) for s, v in zip(state["eval_steps"], state["eval_values"])}
        return curve

    def frame(self, upto: int, steps_per_epoch: int, batch_size: int) -> pd.DataFrame:
        steps = np.arange(upto + 1)
        values = np.full((upto + 1, len(self.columns)), np.nan)
        for s, v in self.evals.items():
            if s <= upto:
                values[s] = v
        return pd.DataFrame(
            {
                "step": steps,
                "epoch": steps / steps_per_epoch,
                "examples_seen": steps * batch_size,
                "lr": self.lr[: upto + 1],
                "batch_loss": self.batch_loss[: upto + 1],
                **{col: values[:, i] for i, col in enumerate(self.columns)},
            }
        )


def _named_step(path: Path) -> float:
    """The step in a step_<k>.pt file's name; infinite for resume.pt, whose step only its content says."""
    number = path.stem.removeprefix("step_")
    return int(number) if path.stem.startswith("step_") and number.isdigit() else math.inf


def newest_checkpoint(ckpt_dir: Path, chash: str) -> dict | None:
    """The checkpoint with the highest step whose config hash matches, if any.

    Files are tried newest first and reading stops at the first good one that no file left can
    beat, so a resume reads and checks one or two checkpoints, not all. A damaged one (unreadable,
    or failing its checksum) is skipped with a warning: an older one will do, since training
    from it again gives the same weights.
    """
    best = None
    for path in sorted(ckpt_dir.glob("*.pt"), key=_named_step, reverse=True):
        if best is not None and _named_step(path) <= best["step"]:
            break
        try:
            state = io.load_torch(path)
        except OSError as exc:
            log.warning("skipping damaged checkpoint %s: %s", path, exc)
            continue
        if state.get("config_hash") == chash and (best is None or state["step"] > best["step"]):
            best = state
    return best


# Why the resume interval adapts: a fixed one (120 s) lost most of a short run when it was
# killed, and a short fixed one would spend a large model's run writing checkpoints. A resume
# checkpoint is due once the time since the last save exceeds max(RESUME_FLOOR_S,
# RESUME_COST_FACTOR x how long the last save took), capped at `checkpoints.resume_every_s`:
# saving costs at most about 1/RESUME_COST_FACTOR (5 %) of the time, and a killed small run
# loses a few seconds. Any save of every member (log-spaced or resume) counts.
RESUME_FLOOR_S = 2.0
RESUME_COST_FACTOR = 20.0
clock = time.perf_counter  # wall times and the resume interval; a test may replace it


class ResumeClock:
    """When the next resume checkpoint is due (see RESUME_FLOOR_S)."""

    def __init__(self, most_s: float):
        self.most_s, self.last, self.cost = most_s, clock(), 0.0

    def interval(self) -> float:
        return min(self.most_s, max(RESUME_FLOOR_S, RESUME_COST_FACTOR * self.cost))

    def due(self) -> bool:
        return clock() - self.last > self.interval()

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        start = clock()
        yield
        self.last = clock()
        self.cost = self.last - start


class Interrupted(RuntimeError):
    """SIGTERM stopped training at a step boundary, after every unfinished member wrote a resume checkpoint."""


@contextlib.contextmanager
def sigterm_event() -> Iterator[threading.Event]:
    """An event that SIGTERM sets while the body runs, instead of killing the process.

    A cluster sends SIGTERM before SIGKILL (SLURM at its time limit, KillWait seconds before);
    training then saves at the next step boundary and stops, and the retried job resumes there.
    Only the main thread may set a signal handler: elsewhere the event is never set.
    """
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.set())
    try:
        yield received
    finally:  # None: a handler not set from Python, which cannot be put back; the default is the nearest
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# --- the stack: K runs of one model and one batch size, trained together ---------------------

SHARED_SPEC_KEYS = ("study", "dataset", "train_fraction", "model", "batch_size", "bn_batch_size", "ref_batch_size",
                    "optimizer", "budget", "schedule", "eval", "checkpoints", "divergence", "health")


def check_stackable(specs: list[RunSpec]) -> None:
    """Members of a stack differ only in LR rule, base LR and seed: one model, one batch size, one plan."""
    if not specs:
        raise ValueError("a stack needs at least one run")
    first = specs[0].to_dict()
    for spec in specs[1:]:
        other = spec.to_dict()
        differ = [k for k in SHARED_SPEC_KEYS if other[k] != first[k]]
        if differ:
            raise ValueError(f"{spec.run_id} cannot share a stack with {specs[0].run_id}: they differ in {', '.join(differ)}")
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"a run appears twice in one stack: {ids}")


@dataclass
class Member:
    """One run of a stack: its spec, its directory, and its curve on the host."""

    spec: RunSpec
    run_dir: Path
    chash: str
    curve: Curve
    start_step: int
    wall_before: float
    resumed: dict | None


def result_hash(spec: dict) -> str:
    """The hash of everything in a run's spec that can change its results: all but how often a
    resume checkpoint is written, so changing that interval neither retrains nor refuses to resume."""
    checkpoints = {k: v for k, v in spec.get("checkpoints", {}).items() if k != "resume_every_s"}
    return provenance.config_hash({**spec, "checkpoints": checkpoints})


def finished_summary(spec: RunSpec, run_dir: Path) -> dict | None:
    """The summary of a run that already finished with this config and this library code, else None.

    A stack's job runs again when a run joins it (a new seed or LR); its finished members are
    kept as they are. One finished under another config or other code is trained again.
    """
    summary_path = run_dir / "run.json"
    outputs = (run_dir / "checkpoints" / COMPLETE_MARK, summary_path, run_dir / "final.pt", run_dir / "metrics.parquet")
    if not all(path.exists() for path in outputs):
        return None
    summary = io.read_json(summary_path)
    same_config = result_hash(summary.get("spec", {})) == result_hash(spec.to_dict())
    return summary if same_config and summary.get("code_hash") == provenance.code_hash() else None


def open_member(spec: RunSpec, run_dir: Path, total_steps: int, columns: tuple[str, ...]) -> Member:
    """A member at its newest matching checkpoint, or at step 0."""
    ckpt_dir = run_dir / "checkpoints"
    if (ckpt_dir / COMPLETE_MARK).exists():
        # It finished under another config or other code: start over rather than resume
        # from checkpoints of the old code.
        log.info("%s finished before under other code or config; retraining from scratch", spec.run_id)
        shutil.rmtree(ckpt_dir)
    chash = result_hash(spec.to_dict())
    io.remove_leftovers(run_dir)
    io.remove_leftovers(ckpt_dir)
    resumed = newest_checkpoint(ckpt_dir, chash)
    if resumed is None:
        # Nothing here belongs to this config: checkpoints of an earlier config of this run_id must
        # never be analysed as this run's, so start from a clean folder.
        for stale in ckpt_dir.glob("*.pt"):
            log.info("removing %s: not a checkpoint of this run's config", stale)
            stale.unlink()
        return Member(spec, run_dir, chash, Curve.empty(total_steps, columns), 0, 0.0, None)
    log.info("resuming %s from step %d of %d", spec.run_id, resumed["step"], total_steps)
    return Member(spec, run_dir, chash, Curve.from_state(resumed["curve"], total_steps, columns), resumed["step"],
                  resumed["wall_time_s"], resumed)


CPU_EVAL_CHUNK = 1024
# The most logits one evaluation chunk holds (K x examples x positions x classes): a language
# model's are vocabulary x tokens per example, 2.4 GB for 512 WikiText-2 windows of one run.
EVAL_LOGITS = {"cpu": 2**22, "cuda": 2**28}


@torch.no_grad()
def evaluate_stack(model: StackedModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096,
                   num_classes: int | None = None, miou: bool = False) -> tuple[np.ndarray, ...]:
    """Every member's mean cross-entropy and accuracy per target over the whole of (x, y), with BN
    running statistics; with `miou`, its mean IoU over the `num_classes` classes as a third array.
    `num_classes` also bounds each chunk's logits to EVAL_LOGITS elements."""
    if miou and num_classes is None:
        raise ValueError("mean IoU needs num_classes")
    k = model.k
    # All at once, the K members see each chunk together: keep the memory of one batch. One by
    # one, only one member's activations live at a time, and on a CPU a chunk of 1024 stays in
    # cache (a CNN evaluation of 12 members: 128 ms in chunks of 1024, 160 in chunks of 341).
    member_chunk = min(batch_size, CPU_EVAL_CHUNK)
    batch_size = member_chunk if model.runs_member_by_member(member_chunk, x.device) else max(1, batch_size // k)
    if num_classes is not None:
        logits_per_example = k * num_classes * y[0].numel()
        batch_size = max(1, min(batch_size, EVAL_LOGITS.get(x.device.type, EVAL_LOGITS["cuda"]) // logits_per_example))
    totals = torch.zeros(3, k, device=x.device, dtype=torch.float64)  # loss, correct, targets
    confusion = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        logits = model.forward(xb.unsqueeze(0).expand(k, *xb.shape), train=False)  # (K, b, C, *positions)
        target = yb.unsqueeze(0).expand(k, *yb.shape)
        totals += torch.stack(member_sums(logits, target)).double()
        if miou:
            confusion = confusion + member_confusion(logits, target, num_classes)
    loss_sum, correct, count = totals.cpu().numpy()
    scores = (loss_sum / count, correct / count)
    return (*scores, mean_iou(confusion).cpu().numpy()) if miou else scores


def save_member_checkpoint(path: Path, member: Member, model: StackedModel, optimizer: StackedOptimizer, k: int,
                           step: int, wall: float) -> None:
    io.save_torch(
        {
            "config_hash": member.chash,
            "run_id": member.spec.run_id,
            "spec": member.spec.to_dict(),
            "step": step,
            "model": model.member_state_dict(k),
            "optimizer": optimizer.member_state_dict(k),
            "curve": member.curve.to_state(step),
            "wall_time_s": wall,
        },
        path,
    )


class Stack:
    """The members still training, their stacked weights and optimizer state, and their host curves."""

    def __init__(self, members: list[Member], data: Dataset, dev: torch.device, step_mode: str):
        spec = members[0].spec
        self.members = members
        self.step_mode = step_mode
        self.model = build_stacked_model(spec.model, data.input_shape, data.num_classes, [m.spec.seed for m in members],
                                         spec.bn_batch_size, device=dev, dtype=data.dtype)
        self.optimizer = StackedOptimizer(self.model.params, spec.optimizer)
        for k, m in enumerate(members):
            if m.resumed is not None:
                self.model.load_member(k, m.resumed["model"])
                self.optimizer.load_member(k, m.resumed["optimizer"])
        self.peak_lr = torch.tensor([m.spec.lr for m in members], device=dev, dtype=data.dtype)
        self._step = make_step(self.model, self.optimizer, step_mode)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """One update of every member (see batchlab.stacked.step); the (K,) batch losses."""
        return self._step(xb, yb, lr)

    def keep(self, keep: list[int]) -> None:
        """Drop the members not in `keep`: a finished member stops costing compute."""
        self.members = [self.members[k] for k in keep]
        self.model = self.model.select(keep)
        self.optimizer = self.optimizer.select(keep, self.model.params)
        self.peak_lr = self.peak_lr[keep]
        self._step = make_step(self.model, self.optimizer, self.step_mode)  # a captured step knows the old tensors only


def member_batches(data: Dataset, perms: torch.Tensor, seeds: list[int], step: int, pos: int, batch_size: int):
    """(K, B, ...) inputs and (K, B) labels: each member's slice of its own permutation, with its own augmentation."""
    idx = perms[:, pos * batch_size : (pos + 1) * batch_size]  # (K, B)
    xb, yb = data.x_train[idx], data.y_train[idx]
    if data.augment != "none":
        dev = xb.device
        xb = torch.stack([
            apply_augment(data.augment, xb[k], torch.Generator(device=dev).manual_seed(seed * 1_000_003 + step))
            for k, seed in enumerate(seeds)
        ])
    return xb, yb


def train_stack(
    specs: list[RunSpec],
    data: Dataset | str | Path,
    run_dirs: list[str | Path],
    device: str = "auto",
    max_steps: int | None = None,
    progress: bool = True,
    step_mode: str = "auto",
    cudnn_benchmark: bool = True,
) -> list[dict]:
    """Train the runs of one stack together, each into its own run directory; their summaries, in order.

    Members resume from their own newest checkpoints; members found at different steps train
    as separate stacks, one after another. `max_steps` stops early once that many updates are
    done, leaving resume checkpoints and no final outputs (for chunked jobs under a time
    limit, and for tests of resume); those members' summaries say "interrupted". SIGTERM
    does the same at the next step boundary, then raises Interrupted so that the job fails
    and its retry resumes. `step_mode` says how the device runs each update (see
    batchlab.stacked.step): `auto`, `eager` or `cuda_graph`. `cudnn_benchmark` lets cuDNN
    time its convolution algorithms on a GPU (torch.backends.cudnn.benchmark).
    """
    check_stackable(specs)
    dev = resolve_device(device)
    step_mode = resolve_step_mode(step_mode, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
    if not isinstance(data, Dataset):
        data = load_prepared(data, dev)
    if data.x_train.device.type != dev.type:
        raise ValueError(f"data set is on {data.x_train.device}, the runs on {dev}")
    data = data.train_fraction(specs[0].train_fraction)
    plan = make_plan(specs[0], data.n_train)
    summaries: dict[str, dict] = {}
    members = []
    for spec, run_dir in zip(specs, map(Path, run_dirs)):
        done = finished_summary(spec, run_dir)
        if done is not None:
            log.info("%s finished before with this config and code; kept", spec.run_id)
            summaries[spec.run_id] = done
        else:
            members.append(open_member(spec, run_dir, plan.total_steps, eval_columns(data.task)))
    with sigterm_event() as stop:
        for start in sorted({m.start_step for m in members}):
            group = [m for m in members if m.start_step == start]
            summaries.update(_train_from(group, data, plan, dev, max_steps, progress, stop, step_mode))
    return [summaries[spec.run_id] for spec in specs]


def train_run(spec: RunSpec, data: Dataset | str | Path, run_dir: str | Path, device: str = "auto",
              max_steps: int | None = None, progress: bool = True, step_mode: str = "auto",
              cudnn_benchmark: bool = True) -> dict:
    """Train one run: a stack of one (see `train_stack`)."""
    return train_stack([spec], data, [run_dir], device, max_steps, progress, step_mode, cudnn_benchmark)[0]


def _train_from(members: list[Member], data: Dataset, plan: Plan, dev: torch.device, max_steps: int | None,
                progress: bool, stop: threading.Event, step_mode: str) -> dict[str, dict]:
    """Train members that all stand at the same step, until each has finished (or `max_steps`, or `stop`)."""
    spec = members[0].spec
    S, B, step = plan.total_steps, spec.batch_size, members[0].start_step
    stack = Stack(members, data, dev, step_mode)
    log.info("training %d run(s) together from step %d: %s", len(members), step, ", ".join(m.spec.run_id for m in members))
    t_start = clock()

    chance = prior_entropy(data.y_train, data.num_classes, IGNORE_INDEX)  # the loss of predicting the targets' prior

    def wall(m: Member) -> float:
        return m.wall_before + clock() - t_start

    def evaluate_now(at: int) -> None:
        ev, miou = spec.eval["batch_size"], data.task == "segmentation"
        train = evaluate_stack(stack.model, data.x_train, data.y_train, ev, data.num_classes, miou)
        test = evaluate_stack(stack.model, data.x_test, data.y_test, ev, data.num_classes, miou)
        for k, m in enumerate(stack.members):  # in the order of eval_columns: losses and accuracies, then mean IoUs
            m.curve.evals[at] = tuple(float(scores[k]) for scores in (*train[:2], *test[:2], *train[2:], *test[2:]))

    losses = torch.full((S + 1, len(members)), float("nan"), device=dev, dtype=data.dtype)
    flushed = step  # host copies of batch_loss are valid up to `flushed`
    # A resumed run checks for divergence from its last evaluation on, as an uninterrupted one
    # would: it may have been saved between evaluations, after a bad step not yet judged.
    checked = max(s for s in plan.eval_steps if s <= step)
    factors = np.full(S + 1, np.nan)  # the LR factor of every step; a member's LR is its peak times it
    column = {m.spec.run_id: k for k, m in enumerate(members)}  # a member's column of `losses`, fixed for the whole loop
    resume_clock = ResumeClock(spec.checkpoints["resume_every_s"])

    def flush(upto: int) -> None:
        """Copy the losses and LRs since the last flush into the members' host curves."""
        nonlocal flushed
        host = losses[flushed + 1 : upto + 1].cpu().numpy()
        for m in stack.members:
            m.curve.batch_loss[flushed + 1 : upto + 1] = host[:, column[m.spec.run_id]]
            m.curve.lr[flushed + 1 : upto + 1] = m.spec.lr * factors[flushed + 1 : upto + 1]
        flushed = upto

    def save_all(name: str, at: int) -> None:
        """Every member's checkpoint `name` at step `at`; its duration sets the resume interval."""
        flush(at)  # after the device sync this implies, so the timing is of the save alone
        with resume_clock.saving():
            for k, m in enumerate(stack.members):
                save_member_checkpoint(m.run_dir / "checkpoints" / name, m, stack.model, stack.optimizer, k, at, wall(m))

    if step == 0:
        evaluate_now(0)
        save_all("step_0.pt", 0)

    sched = spec.schedule
    milestones = tuple(sched["decay_milestones"])
    perm_epoch, perms = -1, None
    factor_now, lr = None, None
    summaries: dict[str, dict] = {}
    cols = torch.arange(len(members), device=dev)  # the columns of the members still training
    seeds = [m.spec.seed for m in members]
    desc = spec.run_id if len(members) == 1 else f"{spec.study}/{spec.model}/bs{B} ×{len(members)}"
    bar = tqdm(total=S, initial=step, desc=desc, file=sys.stderr, mininterval=1 if sys.stderr.isatty() else 15,
               disable=not progress)

    while stack.members and step < S:
        if stop.is_set() or (max_steps is not None and step >= max_steps):
            break
        epoch, pos = divmod(step, plan.steps_per_epoch)
        if epoch != perm_epoch:
            perms = torch.stack([epoch_permutation(data.n_train, m.spec.seed, epoch) for m in stack.members]).to(dev)
            perm_epoch = epoch
        xb, yb = member_batches(data, perms, seeds, step, pos, B)
        # learning rate: a pure function of the step, scaled by each member's peak
        factor = lr_factor(step, S, sched["warmup_steps"], sched["decay"], sched["decay_gamma"], milestones)
        if factor != factor_now:
            lr, factor_now = stack.peak_lr * factor, factor
        losses[step + 1].index_copy_(0, cols, stack.step(xb, yb, lr))
        factors[step + 1] = factor
        step += 1
        bar.update(1)

        if step in plan.eval_steps:  # read the losses back, evaluate, then judge every member
            flush(step)
            evaluate_now(step)
            finished, keep = [], []
            for k, m in enumerate(stack.members):
                bad = first_bad_step(m.curve.batch_loss, checked + 1, step, spec.divergence["max_loss"])
                if bad is not None:
                    log.warning("%s diverged at step %d (batch loss %s)", m.spec.run_id, bad, m.curve.batch_loss[bad])
                    finished.append((k, "diverged", bad))
                    continue
                stopped = stop_reason(m.curve.evals, plan.steps_per_epoch, spec.budget.get("stop"))
                if stopped is not None:
                    log.info("%s stops at step %d of %d: %s criterion met", m.spec.run_id, step, S, stopped)
                    finished.append((k, stopped, None))
                elif step == S:
                    finished.append((k, "budget", None))
                else:
                    keep.append(k)
            checked = step
            for k, stopped, diverged_step in finished:
                m = stack.members[k]
                status = "diverged" if stopped == "diverged" else health_status(m.spec, m.curve, chance)
                summaries[m.spec.run_id] = _write_outputs(m, stack.model.member_state_dict(k), plan, step, status,
                                                          stopped, diverged_step, dev, wall(m), data.task, step_mode)
            if not keep:
                stack.members = []
                break
            if finished:
                stack.keep(keep)
                factor_now = perm_epoch = None  # the LR vector and permutations follow the members left
                cols = torch.tensor([column[m.spec.run_id] for m in stack.members], device=dev)
                seeds = [m.spec.seed for m in stack.members]
            first = stack.members[0].curve.evals[step]
            bar.set_postfix(train_loss=f"{first[0]:.4f}", test_acc=f"{first[3]:.3f}", refresh=False)
        # Here every member is unfinished and step < S: the last step is an evaluation that ends them all.
        if step in plan.checkpoint_steps:
            save_all(f"step_{step}.pt", step)
        elif resume_clock.due():
            save_all("resume.pt", step)
    bar.close()

    if stack.members and step < S:  # stopped by max_steps or SIGTERM: keep what we have, finish later
        save_all("resume.pt", step)
        if stop.is_set():
            raise Interrupted(f"SIGTERM at step {step} of {S}: resume checkpoints written for "
                              f"{', '.join(m.spec.run_id for m in stack.members)}; run the job again to resume")
        for m in stack.members:
            summaries[m.spec.run_id] = {"run_id": m.spec.run_id, "status": "interrupted", "step": step}
    return summaries


def health_status(spec: RunSpec, curve: Curve, prior_loss: float) -> str:
    """The status of a run that ended without diverging, "completed" or "stalled"; a stall is logged with its reason.

    `prior_loss` is the chance level: the entropy of the prior of the training targets the run
    trains on (batchlab.health.prior_entropy of its data, after `train_fraction`)."""
    reason = stall_reason(curve.evals, prior_loss, spec.health)
    if reason is None:
        return "completed"
    log.warning("%s stalled: %s", spec.run_id, reason)
    return "stalled"


def _write_outputs(member: Member, state_dict: dict, plan: Plan, step: int, status: str, stopped: str,
                   diverged_step: int | None, dev: torch.device, wall_time: float, task: str, step_mode: str) -> dict:
    spec, run_dir, curve = member.spec, member.run_dir, member.curve
    metrics = curve.frame(step, plan.steps_per_epoch, spec.batch_size)
    io.write_parquet(metrics, run_dir / "metrics.parquet")
    io.save_torch({"run_id": spec.run_id, "spec": spec.to_dict(), "step": step, "status": status, "model": state_dict},
                  run_dir / "final.pt")
    final = dict(zip(curve.columns, curve.evals[step]))
    if task == "language_model":
        final.update(train_perplexity=perplexity(final["train_loss"]), test_perplexity=perplexity(final["test_loss"]))
    summary = {
        "run_id": spec.run_id,
        "spec": spec.to_dict(),
        "task": task,
        "seed": spec.seed,
        "lr": spec.lr,
        "status": status,
        "diverged_step": diverged_step,
        "stop_reason": stopped,
        "steps": step,
        "planned_steps": plan.total_steps,
        "steps_per_epoch": plan.steps_per_epoch,
        "epochs": step / plan.steps_per_epoch,
        **{f"final_{k}": v for k, v in final.items()},
        "best_test_acc": float(np.nanmax([v[3] for s, v in curve.evals.items() if s <= step])),
        "wall_time_s": wall_time,
        "resumed_from_step": member.resumed["step"] if member.resumed is not None else None,
        "device": provenance.device_name(dev),
        "step_mode": step_mode,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if dev.type == "cuda" else None,
        "versions": provenance.versions(),
        "git": provenance.git_commit(),
        "code_hash": provenance.code_hash(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    io.write_json(summary, run_dir / "run.json")
    (run_dir / "checkpoints" / "resume.pt").unlink(missing_ok=True)
    (run_dir / "checkpoints" / COMPLETE_MARK).touch()
    return summary
