"""The stacked trainer against today's way: a plain nn.Module trained alone with torch.optim."""

import dataclasses
import itertools
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from batchlab import io
from batchlab.config import build_grid, check_config
from batchlab.data import IGNORE_INDEX, Dataset
from batchlab.data.augment import apply_augment
from batchlab.lr_rules import lr_factor
from batchlab.models import build_model
from batchlab.stacked.optim import build_optimizer
from batchlab.train import loop
from batchlab.train.loop import train_stack
from batchlab.train.plan import epoch_permutation, make_plan
from batchlab.train.stack import Stack
from tests.test_train import assert_same_results, load_weights, sigterm_during_update

STEPS = 56


def stack_specs(model: str, n_train: int, batch_size: int = 8, bn=None, base_lrs=(0.05, 0.02), seeds=(0, 1),
                optimizer=None, dataset="mnist1d") -> list:
    study = {
        "dataset": dataset, "models": [model], "batch_sizes": [batch_size], "bn_batch_sizes": [bn],
        "lr_rules": ["constant", "sqrt"], "ref_batch_size": 4, "base_lrs": list(base_lrs), "seeds": list(seeds),
        "optimizer": optimizer or {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        "budget": {"steps": STEPS}, "schedule": {"decay": "cosine", "warmup_steps": 5},
        "eval": {"regular_points": 4, "log_points": 2}, "checkpoints": {"log_points": 3},
        "analysis": {"enabled": False},
    }
    datasets = {"mnist1d": {"n_train": n_train, "n_test": 16}}
    if dataset in ("cifar10", "mnist"):
        datasets[dataset] = {"root": "/nonexistent"}
    cfg = check_config({"device": "cpu", "datasets": datasets, "studies": {"s": study}})
    return list(build_grid(cfg).values())


def signals(n=48, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 16, 40, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (n + 16,), generator=g)
    return Dataset("mnist1d", x[:n], y[:n], x[n:], y[n:], 10)


def images(n=32, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 16, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (n + 16,), generator=g)
    return Dataset("cifar10", x[:n], y[:n], x[n:], y[n:], 10, augment="crop_flip")


def tokens(n=32, seed=0, vocab=13, length=6) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(vocab, (n + 16, length), generator=g)
    y = torch.randint(vocab, (n + 16, length), generator=g)
    return Dataset("pydoc_text", x[:n], y[:n], x[n:], y[n:], vocab, task="language_model")


def masks(n=32, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 16, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (n + 16, 16, 16), generator=g)
    y[torch.rand(y.shape, generator=g) < 0.1] = IGNORE_INDEX  # unlabelled pixels, as VOC's boundaries
    return Dataset("shapes", x[:n], y[:n], x[n:], y[n:], 4, task="segmentation")


def digits(n=32, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 16, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (n + 16,), generator=g)
    return Dataset("mnist", x[:n], y[:n], x[n:], y[n:], 10)


def reference_run(spec, data: Dataset) -> tuple[np.ndarray, dict]:
    """Today's way, written out plainly: the batch losses of every step and the final weights."""
    plan = make_plan(spec, data.n_train)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.input_shape, data.num_classes, spec.bn_batch_size).to(torch.float64)
    optimizer = build_optimizer(model.parameters(), spec.optimizer, spec.lr)
    sched, losses = spec.schedule, []
    for step in range(plan.total_steps):
        epoch, pos = divmod(step, plan.steps_per_epoch)
        idx = epoch_permutation(data.n_train, spec.seed, epoch)[pos * spec.batch_size : (pos + 1) * spec.batch_size]
        xb, yb = data.x_train[idx], data.y_train[idx]
        if data.augment != "none":
            xb = apply_augment(data.augment, xb, torch.Generator().manual_seed(spec.seed * 1_000_003 + step))
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * lr_factor(step, plan.total_steps, sched["warmup_steps"], sched["decay"],
                                              sched["decay_gamma"], tuple(sched["decay_milestones"]))
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        if spec.optimizer["max_grad_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.optimizer["max_grad_norm"])
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses), model.state_dict()


def stacked(specs, data, tmp_path, **kwargs):
    dirs = [tmp_path / spec.run_id for spec in specs]
    summaries = train_stack(specs, data, dirs, device="cpu", progress=False, **kwargs)
    return summaries, dirs


CASES = {
    "mlp": dict(model="mlp", data=signals),
    "cnn": dict(model="cnn", data=signals),
    "gru": dict(model="gru", data=signals),
    "resnet8": dict(model="resnet8", data=images, dataset="cifar10"),
    "resnet8_bn-ghost": dict(model="resnet8_bn", data=images, dataset="cifar10", bn=4),
    "keskar_f1": dict(model="keskar_f1", data=digits, dataset="mnist"),
    "keskar_c1": dict(model="keskar_c1", data=images, dataset="cifar10"),
    "drn": dict(model="drn", data=masks, dataset="shapes"),
    "lstm_lm": dict(model="lstm_lm", data=tokens, dataset="pydoc_text"),
    "lstm_lm-clipped": dict(model="lstm_lm", data=tokens, dataset="pydoc_text", base_lrs=(5.0, 2.0),
                            optimizer={"name": "sgd", "max_grad_norm": 0.25}),
}


@pytest.fixture
def float64_default():
    """Token ids carry no dtype: a language model trains in torch's default one, float64 here for exactness."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


SLOW_CASES = ("drn", "lstm_lm", "lstm_lm-clipped", "keskar_f1", "keskar_c1", "gru", "resnet8_bn-ghost")  # 3-9 s each


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES])
def test_every_member_of_a_stack_follows_its_run_trained_alone(case, tmp_path, float64_default):
    c = CASES[case]
    data = c["data"]()
    specs = stack_specs(c["model"], data.n_train, bn=c.get("bn"), dataset=c.get("dataset", "mnist1d"),
                        base_lrs=c.get("base_lrs", (0.05, 0.02)), optimizer=c.get("optimizer"))
    assert len(specs) == 8  # 2 rules x 2 base LRs x 2 seeds, in one stack
    specs = specs if c["model"] in ("mlp", "cnn", "gru") else specs[::2]  # keep the larger nets quick
    summaries, dirs = stacked(specs, data, tmp_path)
    for spec, summary, run_dir in zip(specs, summaries, dirs):
        losses, weights = reference_run(spec, data)
        curve = pd.read_parquet(run_dir / "metrics.parquet")
        assert summary["steps"] == STEPS and summary["status"] in ("completed", "stalled")
        np.testing.assert_allclose(curve["batch_loss"].to_numpy()[1:], losses, rtol=1e-9, atol=1e-12)
        final = io.load_torch(run_dir / "final.pt")["model"]
        assert list(final) == list(weights)
        for name, value in weights.items():
            torch.testing.assert_close(final[name], value, rtol=1e-8, atol=1e-10, msg=f"{spec.run_id}: {name}")


def test_a_stack_of_one_is_the_reference(tmp_path):
    data = signals()
    spec = stack_specs("mlp", data.n_train, optimizer={"name": "adam", "weight_decay": 1e-4})[0]
    _, dirs = stacked([spec], data, tmp_path)
    losses, weights = reference_run(spec, data)
    np.testing.assert_allclose(pd.read_parquet(dirs[0] / "metrics.parquet")["batch_loss"].to_numpy()[1:], losses, rtol=1e-10)
    final = io.load_torch(dirs[0] / "final.pt")["model"]
    for name, value in weights.items():
        torch.testing.assert_close(final[name], value, rtol=1e-9, atol=1e-12)


def test_a_diverging_member_is_frozen_and_leaves_the_others_bit_identical(tmp_path):
    data = signals()
    healthy = stack_specs("mlp", data.n_train, base_lrs=(0.05,), seeds=(0,))  # constant and sqrt
    wild = dataclasses.replace(healthy[0], base_lr=1e4)
    with_wild, dirs = stacked([healthy[0], wild, healthy[1]], data, tmp_path / "a")
    without, dirs_without = stacked(healthy, data, tmp_path / "b")
    assert with_wild[1]["status"] == "diverged" and with_wild[1]["stop_reason"] == "diverged"
    assert with_wild[1]["steps"] < STEPS and with_wild[1]["diverged_step"] <= with_wild[1]["steps"]
    for a, b in ((dirs[0], dirs_without[0]), (dirs[2], dirs_without[1])):
        assert_same_results(a, b)


def test_a_killed_stack_resumes_every_member_to_identical_weights(tmp_path):
    data = signals()
    specs = stack_specs("cnn", data.n_train, seeds=(0, 1))[:4]
    _, whole = stacked(specs, data, tmp_path / "whole")
    interrupted, dirs = stacked(specs, data, tmp_path / "cut", max_steps=23)
    assert {s["status"] for s in interrupted} == {"interrupted"}
    resumed, dirs = stacked(specs, data, tmp_path / "cut")
    assert all(s["resumed_from_step"] is not None for s in resumed)
    for a, b in zip(whole, dirs):
        assert_same_results(a, b)


def test_sigterm_stops_a_stack_with_every_member_saved_and_the_rerun_is_bit_identical(tmp_path, monkeypatch):
    data = signals()
    specs = stack_specs("cnn", data.n_train, seeds=(0, 1))[:4]
    _, whole = stacked(specs, data, tmp_path / "whole")
    with sigterm_during_update(monkeypatch, 23):
        stacked(specs, data, tmp_path / "cut")
    dirs = [tmp_path / "cut" / spec.run_id for spec in specs]
    assert [io.load_torch(d / "checkpoints/resume.pt")["step"] for d in dirs] == [23] * 4
    resumed, dirs = stacked(specs, data, tmp_path / "cut")
    assert [s["resumed_from_step"] for s in resumed] == [23] * 4
    for a, b in zip(whole, dirs):
        assert_same_results(a, b)


def test_runs_that_differ_in_more_than_lr_and_seed_do_not_stack():
    data = signals()
    specs = stack_specs("mlp", data.n_train)
    other = dataclasses.replace(specs[0], batch_size=16)
    with pytest.raises(ValueError, match="differ in batch_size"):
        train_stack([specs[0], other], data, ["/tmp/a", "/tmp/b"], device="cpu")


def test_members_that_resume_from_different_steps_give_the_whole_stacks_curves_bit_for_bit(tmp_path):
    """Two members resume from their checkpoints, two start again (their checkpoints gone): they train, and are
    evaluated, as two stacks of two. Evaluated in chunks that a stack of 4 and one of 2 would cut differently,
    each member's curve must still be the whole stack's, to the last bit. (An MLP, in float32: its members' updates
    do not depend on how many train together. A conv net's grouped convolutions do, in the last bits.)"""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(48 + 40, 40, generator=g), torch.randint(0, 10, (48 + 40,), generator=g)
    data = Dataset("mnist1d", x[:48], y[:48], x[48:], y[48:], 10)
    specs = [dataclasses.replace(s, eval={**s.eval, "batch_size": 12}) for s in stack_specs("mlp", 48, seeds=(0, 1))[:4]]
    _, whole = stacked(specs, data, tmp_path / "whole")
    stacked(specs, data, tmp_path / "cut", max_steps=23)
    for spec in specs[2:]:
        shutil.rmtree(tmp_path / "cut" / spec.run_id)
    resumed, dirs = stacked(specs, data, tmp_path / "cut")
    assert [s["resumed_from_step"] for s in resumed] == [23, 23, None, None]
    for a, b in zip(whole, dirs):
        pd.testing.assert_frame_equal(pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet"),
                                      check_exact=True)


def assert_bit_identical(a, b):
    """The same final weights (NaN where a diverged run's are) and the same curve, to the last bit."""
    weights = load_weights(b)
    for name, value in load_weights(a).items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0, equal_nan=True, msg=name)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet"),
                                  check_exact=True)


def conv_stack(wild_lr: float | None = None):
    """A conv net's stack of four in float32, where a grouped convolution's last bits depend on how many members
    train together; its second member at `wild_lr` if given."""
    data = signals()
    data = Dataset("mnist1d", data.x_train.float(), data.y_train, data.x_test.float(), data.y_test, 10)
    specs = stack_specs("cnn", data.n_train, seeds=(0, 1))[:4]
    if wild_lr is not None:
        specs[1] = dataclasses.replace(specs[1], base_lr=wild_lr)
    return data, specs


@pytest.mark.slow  # three conv stacks trained: `make test`, not `make check`
def test_a_checkpoint_write_that_fails_for_one_member_rolls_the_stack_back_to_a_common_step(tmp_path, monkeypatch):
    """A full disk while the stack's checkpoints are written: the first members have their newest, the others not.
    The rerun must train all four together from the newest step they share, not as two stacks, so that a conv
    net's curves and weights are the uninterrupted run's to the last bit."""
    data, specs = conv_stack()
    _, whole = stacked(specs, data, tmp_path / "whole")
    saves, save = [], loop.save_member_checkpoint

    def full_disk_on_the_third_members_third_save(path, member, *args, **kwargs):
        saves.append(member.spec.run_id)
        if member.spec.run_id == specs[2].run_id and saves.count(member.spec.run_id) == 3:
            raise OSError(28, "No space left on device")
        return save(path, member, *args, **kwargs)

    monkeypatch.setattr(loop, "save_member_checkpoint", full_disk_on_the_third_members_third_save)
    with pytest.raises(OSError, match="No space"):
        stacked(specs, data, tmp_path / "cut")
    monkeypatch.undo()
    resumed, dirs = stacked(specs, data, tmp_path / "cut")
    assert [s["resumed_from_step"] for s in resumed] == [1] * 4  # the first two had written step 7's
    for a, b in zip(whole, dirs):
        assert_bit_identical(a, b)


@pytest.mark.slow  # three conv stacks trained: `make test`, not `make check`
def test_a_kill_after_a_member_finished_resumes_the_rest_as_they_trained(tmp_path, monkeypatch):
    """One member diverges and leaves the stack between two checkpoints; the job is killed (no SIGTERM: nothing
    saved on the way out) before the next. The members left resume from the step at which it left, so they never
    retrain, as a stack of another size, steps that the uninterrupted run took beside it."""
    data, specs = conv_stack(wild_lr=2.0)
    _, whole = stacked(specs, data, tmp_path / "whole")
    info = io.read_json(whole[1] / "run.json")
    assert info["status"] == "diverged" and info["steps"] == 14  # between the checkpoints at step 7 and the end
    calls, step = itertools.count(1), Stack.step

    def killed_before_the_next_checkpoint(*args):
        if next(calls) == 17:
            raise KeyboardInterrupt
        return step(*args)

    monkeypatch.setattr(Stack, "step", killed_before_the_next_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        stacked(specs, data, tmp_path / "cut")
    monkeypatch.undo()
    resumed, dirs = stacked(specs, data, tmp_path / "cut")
    assert resumed[1]["status"] == "diverged" and resumed[1]["resumed_from_step"] is None
    assert [resumed[k]["resumed_from_step"] for k in (0, 2, 3)] == [14] * 3
    for a, b in zip(whole, dirs):
        assert_bit_identical(a, b)


@pytest.mark.slow  # three conv stacks trained: `make test`, not `make check`
def test_a_resume_write_cut_short_falls_back_to_the_resume_checkpoint_before_it(tmp_path, monkeypatch, caplog):
    """The stack stops at step 23, each member with its resume checkpoint; at step 30 the disk fills while the third
    member's next one is written, after its step-23 one became the previous. Every member still has step 23, one
    resume interval back: the rerun rolls the first two back to it and trains the four as one stack."""
    data, specs = conv_stack()
    _, whole = stacked(specs, data, tmp_path / "whole")
    stacked(specs, data, tmp_path / "cut", max_steps=23)
    save = loop.save_member_checkpoint

    def full_disk_for_the_third(path, member, *args, **kwargs):
        if member.spec.run_id == specs[2].run_id:
            raise OSError(28, "No space left on device")
        return save(path, member, *args, **kwargs)

    monkeypatch.setattr(loop, "save_member_checkpoint", full_disk_for_the_third)
    with pytest.raises(OSError, match="No space"):
        stacked(specs, data, tmp_path / "cut", max_steps=30)
    monkeypatch.undo()
    dirs = [tmp_path / "cut" / spec.run_id for spec in specs]
    steps = [{p.name: io.load_torch(p)["step"] for p in sorted((d / "checkpoints").glob("resume*.pt"))} for d in dirs]
    assert steps == [{"resume.pt": 30, "resume_previous.pt": 23}] * 2 + [{"resume_previous.pt": 23}, {"resume.pt": 23}]
    with caplog.at_level("INFO", logger="batchlab.train.run_files"):
        resumed, dirs = stacked(specs, data, tmp_path / "cut")
    assert [s["resumed_from_step"] for s in resumed] == [23] * 4
    assert sum("rolls back from step 30 to 23" in r.getMessage() for r in caplog.records) == 2
    for a, b in zip(whole, dirs):
        assert_bit_identical(a, b)
        assert not list((b / "checkpoints").glob("resume*.pt"))
