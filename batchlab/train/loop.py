"""The training loop: a stack of runs of one model and one batch size, each into its own run directory.

Each member of the stack (batchlab.train.stack) keeps its own initialisation, data order,
augmentation draws, LR schedule, curve, evaluations, divergence check, checkpoints and resume;
a member that diverges or meets its stop criterion writes its outputs at that evaluation and
leaves the stack. A single run is a stack of one (`train_run`).

Habits that keep it fast and safe:
- the data set sits on the device as tensors and batches are index slices of each epoch's
  permutation (batchlab.train.plan), so there is no DataLoader;
- the loss of every step is written into a device buffer and read back only at
  evaluation points, so the hot loop never waits for the device;
- divergence and the convergence criteria are judged at evaluation points only
  (batchlab.train.curve, batchlab.train.plan);
- a restarted run resumes from its newest checkpoint (batchlab.train.run_files), written as
  often as its cost allows and on SIGTERM (batchlab.train.resume).

A language model may train as PyTorch's word_language_model does instead (the study's
`language_model` key, batchlab.train.language_model): batches in stream order with the LSTM state
carried between them, evaluations over whole streams, and the LR divided at epoch ends whose
validation loss did not improve. Off, nothing here changes.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from batchlab.config import RunSpec
from batchlab.data import IGNORE_INDEX, Dataset, load_prepared
from batchlab.devices import resolve_device
from batchlab.health import prior_entropy, stop_reason
from batchlab.lr_rules import schedule_factors, warms_up
from batchlab.stacked.step import resolve_step_mode
from batchlab.train import language_model as lm
from batchlab.train.curve import first_bad_step, health_status
from batchlab.train.evaluation import eval_columns, eval_subsets, evaluate_stack
from batchlab.train.plan import Plan, epoch_permutation, make_plan
from batchlab.train.resume import Interrupted, ResumeClock, clock, sigterm_event
from batchlab.train.run_files import (RESUME, Member, finished_summary, open_members, rotate_resume, save_member_checkpoint,
                                      write_outputs)
from batchlab.train.stack import Stack, check_stackable, member_batches

log = logging.getLogger(__name__)


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

    Members resume from the newest checkpoint step they all share (batchlab.train.run_files.open_members),
    so that they train as the uninterrupted stack did; members that share none (a run new to the
    stack) train as separate stacks, one after another. `max_steps` stops early once that many updates are
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
    columns = eval_columns(data.task)
    if lm.anneal_divisor(specs[0]) is not None:
        if data.x_valid is None:
            raise ValueError(f"{specs[0].run_id}: language_model.plateau_anneal needs a validation split, and "
                             f"{data.name} has none")
        columns += lm.VALID_COLUMNS
    summaries: dict[str, dict] = {}
    unfinished = []
    for spec, run_dir in zip(specs, map(Path, run_dirs)):
        done = finished_summary(spec, run_dir)
        if done is not None:
            log.info("%s finished before with this config and code; kept", spec.run_id)
            summaries[spec.run_id] = done
        else:
            unfinished.append((spec, run_dir))
    members = open_members(unfinished, plan.total_steps, columns)
    with sigterm_event() as stop:
        for start in sorted({m.start_step for m in members}):
            group = [m for m in members if m.start_step == start]
            summaries.update(_train_from(group, data, plan, dev, max_steps, progress, stop, step_mode, len(specs)))
    return [summaries[spec.run_id] for spec in specs]


def train_run(spec: RunSpec, data: Dataset | str | Path, run_dir: str | Path, device: str = "auto",
              max_steps: int | None = None, progress: bool = True, step_mode: str = "auto",
              cudnn_benchmark: bool = True) -> dict:
    """Train one run: a stack of one (see `train_stack`)."""
    return train_stack([spec], data, [run_dir], device, max_steps, progress, step_mode, cudnn_benchmark)[0]


def _train_from(members: list[Member], data: Dataset, plan: Plan, dev: torch.device, max_steps: int | None,
                progress: bool, stop: threading.Event, step_mode: str, stack_size: int) -> dict[str, dict]:
    """Train members that all stand at the same step, until each has finished (or `max_steps`, or `stop`).
    `stack_size`: the runs of the whole stack, which set the evaluation's chunks (evaluate_stack)."""
    spec = members[0].spec
    S, B, step = plan.total_steps, spec.batch_size, members[0].start_step
    stack = Stack(members, data, dev, step_mode)
    log.info("training %d run(s) together from step %d: %s", len(members), step, ", ".join(m.spec.run_id for m in members))
    t_start, cpu_start = clock(), time.process_time()

    chance = prior_entropy(data.y_train, data.num_classes, IGNORE_INDEX)  # the loss of predicting the targets' prior

    def elapsed(m: Member) -> dict[str, float]:
        return {"wall_time_s": m.elapsed_before["wall_time_s"] + clock() - t_start,
                "cpu_time_s": m.elapsed_before["cpu_time_s"] + time.process_time() - cpu_start}

    carry, divisor = lm.carries_state(spec), lm.anneal_divisor(spec)
    subsets = None if carry else eval_subsets(data, spec.eval)  # None: every evaluation is over the whole sets
    if carry:  # the members' state rows, zero or as their checkpoints left them
        lm_module = lm.language_model_module(stack.model)
        lm_module.carried_state = lm.zero_state(lm_module, len(members) * B)
        for k, m in enumerate(members):
            if m.resumed is not None and "carried_state" in m.resumed:
                for state, saved in zip(lm_module.carried_state, m.resumed["carried_state"]):
                    state[:, k * B : (k + 1) * B] = saved.to(dev)
        order = lm.stream_order(data.n_train, B).to(dev)

    def evaluate_split(x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, ...]:
        if carry:
            return lm.evaluate_streams(stack.model, x, y, spec.language_model.get("eval_columns", 10))
        return evaluate_stack(stack.model, x, y, spec.eval["batch_size"], data.num_classes, data.task == "segmentation",
                              stack_size)

    def evaluate_now(at: int, full: bool = False) -> None:
        full = full or subsets is None or at in plan.full_eval_steps
        x_train, y_train, x_test, y_test = (data.x_train, data.y_train, data.x_test, data.y_test) if full else subsets
        train, test = evaluate_split(x_train, y_train), evaluate_split(x_test, y_test)
        valid = evaluate_split(data.x_valid, data.y_valid) if divisor is not None else ()
        for k, m in enumerate(stack.members):  # in the order of the curve's columns: losses and accuracies, mean IoUs, valid
            m.curve.evals[at] = tuple(float(scores[k])
                                      for scores in (*train[:2], *test[:2], *train[2:], *test[2:], *valid))
            if full:
                m.curve.subset_steps.discard(at)  # a run stopping on a subset evaluation is evaluated again, whole
            else:
                m.curve.subset_steps.add(at)

    losses = torch.full((S + 1, len(members)), float("nan"), device=dev, dtype=data.dtype)
    flushed = step  # host copies of batch_loss are valid up to `flushed`
    # A resumed run checks for divergence from its last evaluation on, as an uninterrupted one
    # would: it may have been saved between evaluations, after a bad step not yet judged.
    checked = max(s for s in plan.eval_steps if s <= step)
    # the LR factors of every step, without and with warm-up: a member's LR is its peak times the one of its rule
    factors = np.full((S + 1, 2), np.nan)
    column = {m.spec.run_id: k for k, m in enumerate(members)}  # a member's column of `losses`, fixed for the whole loop
    warm = {m.spec.run_id: int(warms_up(m.spec.schedule, m.spec.lr_rule)) for m in members}  # its column of `factors`
    resume_clock = ResumeClock(spec.checkpoints["resume_every_s"])
    scale = {m.spec.run_id: 1.0 for m in members}  # the plateau anneal's LR multiplier of each member

    def anneal(at: int) -> bool:
        """Each member's LR multiplier from its curve's epoch ends up to `at`; whether one changed."""
        before = dict(scale)
        for m in stack.members:
            losses_at_ends = lm.epoch_end_losses(m.curve.evals, m.curve.columns, plan.steps_per_epoch, at)
            scale[m.spec.run_id] = lm.plateau_scale(losses_at_ends, divisor)
        stack.lr_scale = torch.tensor([scale[m.spec.run_id] for m in stack.members], device=dev, dtype=data.dtype)
        return scale != before

    if divisor is not None:
        anneal(step)

    def flush(upto: int) -> None:
        """Copy the losses and LRs since the last flush into the members' host curves."""
        nonlocal flushed
        host = losses[flushed + 1 : upto + 1].cpu().numpy()
        for m in stack.members:
            m.curve.batch_loss[flushed + 1 : upto + 1] = host[:, column[m.spec.run_id]]
            m.curve.lr[flushed + 1 : upto + 1] = m.spec.lr * factors[flushed + 1 : upto + 1, warm[m.spec.run_id]]
            if divisor is not None:  # constant since the last flush: it changes right after one, at an epoch end
                m.curve.lr[flushed + 1 : upto + 1] *= scale[m.spec.run_id]
        flushed = upto

    def save_all(name: str, at: int, which: list[int] | None = None) -> None:
        """Every member's checkpoint `name` at step `at` (or the members `which`); its duration sets the resume
        interval. A resume checkpoint keeps the one before it (run_files.rotate_resume)."""
        flush(at)  # after the device sync this implies, so the timing is of the save alone
        with resume_clock.saving():
            for k, m in enumerate(stack.members):
                if which is not None and k not in which:
                    continue
                extra = {"carried_state": lm.member_rows(lm_module.carried_state, k, B)} if carry else {}
                path = rotate_resume(m.run_dir / "checkpoints") if name == RESUME else m.run_dir / "checkpoints" / name
                save_member_checkpoint(path, m, stack.model, stack.optimizer, k, at, elapsed(m), extra)

    if step == 0:
        evaluate_now(0)
        save_all("step_0.pt", 0)

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
        if carry:
            if pos == 0:
                for state in lm_module.carried_state:
                    state.zero_()  # in place: a recorded CUDA graph reads these very tensors
            xb, yb = (t[order[pos]].unsqueeze(0).expand(len(stack.members), B, -1) for t in (data.x_train, data.y_train))
        else:
            if epoch != perm_epoch:
                perms = torch.stack([epoch_permutation(data.n_train, m.spec.seed, epoch) for m in stack.members]).to(dev)
                perm_epoch = epoch
            xb, yb = member_batches(data, perms, seeds, step, pos, B)
        # learning rate: a pure function of the step and the member's LR rule, scaled by its peak
        factor = schedule_factors(step, S, spec.schedule)
        if factor != factor_now:
            lr, factor_now = stack.lr(*factor), factor
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
            if finished and step in stack.members[0].curve.subset_steps:
                evaluate_now(step, full=True)  # a run's final metrics are over the whole sets; it stopped on the subsets
            if finished and keep:
                # The members left resume from here, before the finished ones are done with: a job killed later
                # never has them retrain, in a smaller stack, steps they took beside the finished ones.
                save_all(RESUME, step, keep)
            for k, stopped, diverged_step in finished:
                m = stack.members[k]
                status = "diverged" if stopped == "diverged" else health_status(m.spec, m.curve, chance)
                summaries[m.spec.run_id] = write_outputs(m, stack.model.member_state_dict(k), plan, step, status,
                                                          stopped, diverged_step, dev, elapsed(m), data.task, step_mode)
            if not keep:
                stack.members = []
                break
            if finished:
                kept_state = lm.select_members(lm_module.carried_state, keep, B) if carry else None
                stack.keep(keep)
                if carry:
                    lm_module = lm.language_model_module(stack.model)
                    lm_module.carried_state = kept_state
                factor_now = perm_epoch = None  # the LR vector and permutations follow the members left
                cols = torch.tensor([column[m.spec.run_id] for m in stack.members], device=dev)
                seeds = [m.spec.seed for m in stack.members]
            if divisor is not None and step % plan.steps_per_epoch == 0 and anneal(step):
                factor_now = None  # the LR vector follows the new multipliers
            first = stack.members[0].curve.evals[step]
            bar.set_postfix(train_loss=f"{first[0]:.4f}", test_acc=f"{first[3]:.3f}", refresh=False)
        # Here every member is unfinished and step < S: the last step is an evaluation that ends them all.
        if step in plan.checkpoint_steps:
            save_all(f"step_{step}.pt", step)
        elif resume_clock.due():
            save_all(RESUME, step)
    bar.close()

    if stack.members and step < S:  # stopped by max_steps or SIGTERM: keep what we have, finish later
        save_all(RESUME, step)
        if stop.is_set():
            raise Interrupted(f"SIGTERM at step {step} of {S}: resume checkpoints written for "
                              f"{', '.join(m.spec.run_id for m in stack.members)}; run the job again to resume")
        for m in stack.members:
            summaries[m.spec.run_id] = {"run_id": m.spec.run_id, "status": "interrupted", "step": step}
    return summaries
