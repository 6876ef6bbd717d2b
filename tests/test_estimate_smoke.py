"""The estimate against the training times a preset's smoke run measured.

`within_2x_of_the_smoke_training` is the check; tests/smoke_preset.py runs it on each preset's
smoke run (the module fixture of tests/test_smoke_<preset>.py), so the preset is not trained
again. The estimate is of one job at a time on an otherwise idle device; the smoke run trained
two jobs at once on two cores, beside the other tests, so its wall times say how busy the machine
was as much as what the runs cost. Each run's job records its process's CPU seconds too
(`cpu_time_s` in run.json): with torch on one thread, the wall time it would take alone, whatever
shared the cores. The estimate is compared with those. The tests here check how the measured
times are read."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from pathlib import Path

import pandas as pd
import torch

from batchlab import io
from batchlab.config import build_grid, build_stacks, check_config
from batchlab.estimate import estimate, read_throughput
from tests.conftest import REPO, TINY_CONFIG


def load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput_benchmark", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured_training_seconds(workdir: Path, config: dict) -> dict[str, float]:
    """stack -> its training's CPU seconds: the longest `cpu_time_s` of its members' run.json (they train together
    in one process; a member that stops early leaves the stack)."""
    grid = build_grid(config)
    seconds: dict[str, float] = {}
    for stack in build_stacks(config, grid).values():
        runs = workdir / "results" / "runs"
        seconds[stack.stack_id] = max(io.read_json(runs / run_id / "run.json")["cpu_time_s"] for run_id in stack.runs)
    return seconds


def rooted(config: dict, workdir: Path) -> dict:
    """The config with its data sets' relative roots read from `workdir`, as snakemake's jobs read them."""
    config = copy.deepcopy(config)
    for options in config["datasets"].values():
        if "root" in options and not Path(options["root"]).is_absolute():
            options["root"] = str(workdir / options["root"])
    return config


def shapes_unmeasured(notes: list[str]) -> bool:
    """Whether the estimate lacked rows at the runs' own shapes (a model measured at another input or vocabulary,
    or not at all), from the notes it gives."""
    return any(note.startswith("no throughput measured") or " was measured at input shape" in note for note in notes)


def smoke_estimate(config_files: list[Path], config: dict, workdir: Path, tmp_path: Path):
    """The estimate of a rooted smoke config on this machine's one-thread CPU rows (the jobs' one thread each), and
    the device. Rows are measured here, briefly, on the smoke run's own data, where benchmarks/throughput.csv has
    none of this CPU at the runs' shapes: another machine, or the preset's full-size data (the official WikiText-2
    vocabulary costs the LSTM 100 times the fake corpus's)."""
    bench = load_benchmark()
    device = bench.device_label(torch.device("cpu"))  # tests/conftest.py runs torch on one thread
    table = read_throughput(REPO / "benchmarks" / "throughput.csv")
    if (table["device"] == device).any():
        est = estimate(config, table, device)
        if not shapes_unmeasured(est.notes):
            return est, device
    out = tmp_path / "throughput.csv"
    with contextlib.chdir(workdir):  # the smoke config's data roots are relative to its run
        bench.main(["--config", *map(str, config_files), "--no-analyses", "--steps", "3", "--warmup", "2",
                    "--repeats", "2", "--device", "cpu", "--out", str(out)])
    return estimate(config, read_throughput(out), device), device


def within_2x_of_the_smoke_training(preset: str, workdir: Path, config: dict, tmp_path: Path) -> None:
    """The estimated training (steps, evaluations and checkpoints) of a finished smoke run is within 2x of what its
    runs' jobs measured in CPU seconds, on data sizes measured from its fake releases (the module docstring)."""
    files = [REPO / "config" / f"{preset}.yaml", REPO / "config" / "smoke" / f"{preset}.yaml"]
    config = rooted(config, workdir)
    est, device = smoke_estimate(files, config, workdir, tmp_path)
    assert {name: info.source for name, info in est.data_sizes.items()} == dict.fromkeys(est.data_sizes, "measured")
    assert not shapes_unmeasured(est.notes), est.notes
    estimated = 3600 * float(est.total["train_hours"] + est.total["eval_hours"])
    measured = measured_training_seconds(workdir, config)
    off = sorted(((est.stacks.get(stack, 0.0) / seconds, stack) for stack, seconds in measured.items() if seconds > 0))
    worst = ", ".join(f"{stack} {ratio:.2f}" for ratio, stack in [*off[:2], *off[-2:]])
    assert 0.5 <= estimated / sum(measured.values()) <= 2, (
        f"{preset}: estimated {estimated:.1f} s of training on {device}; the smoke run's jobs took "
        f"{sum(measured.values()):.1f} CPU seconds (estimated/measured, the furthest stacks: {worst})")


def test_measured_training_seconds_take_each_stacks_longest_member(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["studies"]["tiny"]["seeds"] = [0, 1]  # stacks of 4: 2 LR rules x 2 seeds at each batch size
    config = check_config(config)
    grid = build_grid(config)
    walls = {}
    for i, run_id in enumerate(grid):
        walls[run_id] = 10.0 + i
        path = tmp_path / "results" / "runs" / run_id / "run.json"
        io.write_json({"run_id": run_id, "wall_time_s": walls[run_id] + 1, "cpu_time_s": walls[run_id]}, path)
    got = measured_training_seconds(tmp_path, config)
    stacks = build_stacks(config, grid)
    assert len(got) == len(stacks) == 2
    assert got == {s.stack_id: max(walls[r] for r in s.runs) for s in stacks.values()}
    assert rooted(config, tmp_path) == config  # the tiny config's data set has no root to read
    smoke = {"datasets": {"cifar10": {"root": "data/fake/cifar10"}, "mnist1d": {}}}
    assert rooted(smoke, tmp_path)["datasets"]["cifar10"]["root"] == str(tmp_path / "data/fake/cifar10")


