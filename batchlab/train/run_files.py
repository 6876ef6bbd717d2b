"""A run's files: whether it finished or can resume, its checkpoints, and its outputs.

Checkpoints hold the model, the optimizer and the curve so far, stamped with a hash of the
run's config and checksummed (batchlab.io); a restarted run resumes from the newest matching
one that passes its checksum. A finished run is kept while its config and the library code
are the same (`finished_summary`).

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
    median_last_epochs_test_acc
                 Masters & Luschi's measure: the median test accuracy at the ends of the
                 last `eval.last_epochs` epochs, with median_last_epochs_n (how many) and
                 median_last_epochs_reason (why it is null: not asked, stopped early, diverged).

Run directory:
    metrics.parquet             the dense curve (one row per step)
    final.pt                    final weights (+ run_id, spec, step, status)
    checkpoints/step_<k>.pt     log-spaced (and `checkpoints.regular_points` evenly spaced) checkpoints
                                for along-training analyses
    checkpoints/resume.pt       only while a run is unfinished (every checkpoint of a language model
                                that carries its state holds the member's rows of it: carried_state)
    checkpoints/resume_previous.pt
                                the resume checkpoint before it, kept until the next one is written
                                (see open_members)
    checkpoints/COMPLETE        once it has finished (a later rerun then starts from scratch)
    run.json                    resolved config, seed, versions, device, git commit, results
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from batchlab import io, provenance
from batchlab.config import RunSpec, without_result_free
from batchlab.metrics import perplexity
from batchlab.stacked.models import StackedModel
from batchlab.stacked.optim import StackedOptimizer
from batchlab.train.curve import Curve, last_epochs_median
from batchlab.train.plan import Plan

log = logging.getLogger(__name__)


COMPLETE_MARK = "COMPLETE"  # in checkpoints/: the run behind these checkpoints finished
RESUME, RESUME_PREVIOUS = "resume.pt", "resume_previous.pt"


# What a run's training took, kept across resumes: the wall seconds, and the process's CPU seconds
# (on a CPU with one torch thread, the wall time the run would take alone, whatever else shared
# the cores; estimates are checked against it).
ELAPSED = ("wall_time_s", "cpu_time_s")


@dataclass
class Member:
    """One run of a stack: its spec, its directory, and its curve on the host."""

    spec: RunSpec
    run_dir: Path
    chash: str
    curve: Curve
    start_step: int
    elapsed_before: dict[str, float]  # wall_time_s and cpu_time_s spent before this process, on resumed steps
    resumed: dict | None


def result_hash(spec: dict) -> str:
    """The hash of everything in a run's spec that can change its results (batchlab.config.RESULT_FREE): changing
    how often a resume checkpoint is written neither retrains nor refuses to resume."""
    return provenance.config_hash(without_result_free(spec))


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


def open_members(runs: list[tuple[RunSpec, Path]], total_steps: int, columns: tuple[str, ...]) -> list[Member]:
    """The unfinished members of a stack, each at the newest step at which all of them have a good checkpoint.

    Why a common step, not each member's newest: members found at different steps would train as
    separate, smaller stacks, and a conv net's grouped convolutions round differently at another
    stack size, so their curves would leave the uninterrupted run's in the last bits. Members
    drift apart only when a job dies while writing their checkpoints (killed, a full disk): each
    member keeps its resume checkpoint before the newest (RESUME_PREVIOUS) until the next is
    written, so the common step is at most one resume interval back. A member with no checkpoint
    of its config starts at step 0; where no step is shared, each starts from its own newest.
    """
    books = [_Checkpoints(*_checkpoint_dir(spec, run_dir), spec.run_id) for spec, run_dir in runs]
    states = _common_states(books)
    members = []
    for (spec, run_dir), book, resumed in zip(runs, books, states):
        if resumed is None:
            # Nothing here belongs to this config: checkpoints of an earlier config of this run_id must
            # never be analysed as this run's, so start from a clean folder.
            for stale in book.folder.glob("*.pt"):
                log.info("removing %s: not a checkpoint of this run's config", stale)
                stale.unlink()
            members.append(Member(spec, run_dir, book.chash, Curve.empty(total_steps, columns), 0,
                                  dict.fromkeys(ELAPSED, 0.0), None))
            continue
        newest = book.newest_step()
        if newest > resumed["step"]:
            log.info("%s rolls back from step %d to %d, the newest its stack shares", spec.run_id, newest, resumed["step"])
            book.drop_resume_after(resumed["step"])  # the next resume write keeps its predecessor, not a step ahead
        log.info("resuming %s from step %d of %d", spec.run_id, resumed["step"], total_steps)
        members.append(Member(spec, run_dir, book.chash, Curve.from_state(resumed["curve"], total_steps, columns),
                              resumed["step"], {key: resumed.get(key, math.nan) for key in ELAPSED}, resumed))
    return members


def _checkpoint_dir(spec: RunSpec, run_dir: Path) -> tuple[Path, str]:
    """A member's checkpoint folder, cleared of what it must not resume from; and its config hash."""
    ckpt_dir = run_dir / "checkpoints"
    if (ckpt_dir / COMPLETE_MARK).exists():
        # It finished under another config or other code: start over rather than resume
        # from checkpoints of the old code.
        log.info("%s finished before under other code or config; retraining from scratch", spec.run_id)
        shutil.rmtree(ckpt_dir)
    io.remove_leftovers(run_dir)
    io.remove_leftovers(ckpt_dir)
    return ckpt_dir, result_hash(spec.to_dict())


class _Checkpoints:
    """One member's checkpoint files, each read at most once: the steps they hold, and their states.

    A damaged file (unreadable, or failing its checksum) or one of another config counts as
    absent, with a warning for the damaged: an older one will do, since training from it again
    gives the same weights.
    """

    def __init__(self, folder: Path, chash: str, run_id: str):
        self.folder, self.chash, self.run_id = folder, chash, run_id
        self._states: dict[Path, dict | None] = {}
        # a step_<k>.pt file's step is in its name; a resume file's only in its content
        self.steps = {_named_step(path): path for path in folder.glob("step_*.pt") if _named_step(path) is not None}
        for name in (RESUME_PREVIOUS, RESUME):  # the newer one wins a tie
            state = self.state(folder / name)
            if state is not None:
                self.steps[state["step"]] = folder / name

    def state(self, path: Path) -> dict | None:
        if path not in self._states:
            self._states[path] = None
            if path.exists():
                try:
                    state = io.load_torch(path)
                except OSError as exc:
                    log.warning("skipping damaged checkpoint %s: %s", path, exc)
                else:
                    if state.get("config_hash") == self.chash:
                        self._states[path] = state
        return self._states[path]

    def at(self, step: int) -> dict | None:
        """The state at `step`, or None (and the step forgotten) when its file is no good."""
        state = self.state(self.steps[step])
        if state is None or state["step"] != step:
            del self.steps[step]
            return None
        return state

    def newest(self) -> dict | None:
        while self.steps:
            state = self.at(max(self.steps))
            if state is not None:
                return state
        return None

    def newest_step(self) -> int:
        return max(self.steps)

    def drop_resume_after(self, step: int) -> None:
        for name in (RESUME, RESUME_PREVIOUS):
            state = self.state(self.folder / name)
            if state is not None and state["step"] > step:
                (self.folder / name).unlink()


def _common_states(books: list[_Checkpoints]) -> list[dict | None]:
    """Each member's state at the newest step that every member with a good checkpoint has (see open_members);
    None for a member with none. Where no step is shared, each member's newest."""
    while True:
        having = [book for book in books if book.steps]
        if not having:
            return [None] * len(books)
        shared = set.intersection(*(set(book.steps) for book in having))
        if not shared:
            return [book.newest() for book in books]
        step = max(shared)
        states = {book.run_id: book.at(step) for book in having}  # a bad file drops the step from its book
        if all(state is not None for state in states.values()):
            return [states.get(book.run_id) for book in books]


def _named_step(path: Path) -> int | None:
    """The step in a step_<k>.pt file's name."""
    number = path.stem.removeprefix("step_")
    return int(number) if number.isdigit() else None


def rotate_resume(ckpt_dir: Path) -> Path:
    """Where a member's next resume checkpoint goes, its current one kept as the previous (see open_members)."""
    current = ckpt_dir / RESUME
    if current.exists():
        current.replace(ckpt_dir / RESUME_PREVIOUS)
    return current


def save_member_checkpoint(path: Path, member: Member, model: StackedModel, optimizer: StackedOptimizer, k: int,
                           step: int, elapsed: dict[str, float], extra: dict | None = None) -> None:
    """Member k's checkpoint at `step`; `extra` adds entries (a language model's carried state)."""
    io.save_torch(
        {
            "config_hash": member.chash,
            "run_id": member.spec.run_id,
            "spec": member.spec.to_dict(),
            "step": step,
            "model": model.member_state_dict(k),
            "optimizer": optimizer.member_state_dict(k),
            "curve": member.curve.to_state(step),
            **elapsed,
            **(extra or {}),
        },
        path,
    )


def write_outputs(member: Member, state_dict: dict, plan: Plan, step: int, status: str, stopped: str,
                   diverged_step: int | None, dev: torch.device, elapsed: dict[str, float], task: str,
                   step_mode: str) -> dict:
    spec, run_dir, curve = member.spec, member.run_dir, member.curve
    metrics = curve.frame(step, plan.steps_per_epoch, spec.batch_size)
    io.write_parquet(metrics, run_dir / "metrics.parquet")
    io.save_torch({"run_id": spec.run_id, "spec": spec.to_dict(), "step": step, "status": status, "model": state_dict},
                  run_dir / "final.pt")
    final = dict(zip(curve.columns, curve.evals[step]))
    if task == "language_model":
        final.update(train_perplexity=perplexity(final["train_loss"]), test_perplexity=perplexity(final["test_loss"]))
        if "valid_loss" in final:
            final["valid_perplexity"] = perplexity(final["valid_loss"])
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
        **last_epochs_median(curve, plan, step, status),
        **elapsed,
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
    # COMPLETE before the resume files go: a job killed between the two leaves a finished run, not one to train again
    (run_dir / "checkpoints" / COMPLETE_MARK).touch()
    for name in (RESUME, RESUME_PREVIOUS):
        (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    return summary
