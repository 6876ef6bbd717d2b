"""The cost estimate (batchlab.estimate, `python -m batchlab estimate`) and the throughput benchmark behind it."""

from __future__ import annotations

import copy
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from batchlab.__main__ import main as cli_main
from batchlab.config import analysed_runs, build_grid, build_stacks, check_config
from batchlab.estimate import TAIL_JOBS, Throughput, choose_device, estimate, format_estimate
from batchlab.train.plan import make_plan
from tests.conftest import REPO, TINY_CONFIG

CPU = "cpu Test CPU (2 threads)"
GPU = "NVIDIA Test GPU"


def rows(*cases, device=CPU, eval_rate=10_000.0, dataset="mnist1d") -> list[dict]:
    """Throughput rows from (model, batch_size, k, examples_per_s) cases."""
    return [{"device": device, "torch": "2.x", "model": m, "dataset": dataset, "batch_size": b, "k": k,
             "examples_per_s": e, "run_steps_per_s": e / b, "eval_examples_per_s": eval_rate,
             "measured_at": "2026-01-01T00:00:00+00:00"} for m, b, k, e in cases]


def table(*cases, **kw) -> pd.DataFrame:
    return pd.DataFrame(rows(*cases, **kw))


def tiny(**study) -> dict:
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["studies"]["tiny"].update(study)
    if 16 not in cfg["studies"]["tiny"]["batch_sizes"]:
        del cfg["studies"]["tiny"]["analysis"]["along_training"]  # it selects batch 16
    return check_config(cfg)


# --- counts ------------------------------------------------------------------------------------

def test_counts_equal_the_grid_the_stacks_and_the_plans():
    cfg = tiny(models=["mlp", "cnn"], seeds=[0, 1], max_stack=3)
    est = estimate(cfg, table(("mlp", 16, 3, 5000.0), ("mlp", 64, 3, 9000.0), ("cnn", 32, 3, 2000.0)))
    grid = build_grid(cfg)
    stacks = build_stacks(cfg, grid)
    analysed = analysed_runs(cfg, grid)
    total = est.total
    assert total["runs"] == len(grid) == 16
    assert total["train_jobs"] == len(stacks) == 8  # 4 runs per (model, batch size), cut at max_stack 3
    assert total["analysis_jobs"] == sum(any(r in analysed for r in s.runs) for s in stacks.values())
    plans = {run_id: make_plan(spec, 256) for run_id, spec in grid.items()}
    assert total["run_steps"] == sum(p.total_steps for p in plans.values())
    assert total["train_examples"] == sum(p.total_steps * grid[r].batch_size for r, p in plans.items())
    assert total["eval_examples"] == sum(len(p.eval_steps) * (256 + 128) for p in plans.values())
    mlp = est.by_model.set_index("model").loc["mlp"]
    assert mlp["runs"] == 8 and mlp["train_jobs"] == 4
    assert mlp["run_steps"] == sum(p.total_steps for r, p in plans.items() if grid[r].model == "mlp")
    assert est.jobs["train_stack"] == 8 and est.jobs["interpolate_study"] == 1 and est.jobs["prepare_data"] == 1


@pytest.mark.slow
def test_job_counts_equal_snakemake_dry_run_of_the_demo(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    est = estimate(check_config(copy.deepcopy(config)))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", "config.yaml", "-n", "--cores", "1"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    stats = (dry.stdout + dry.stderr).split("Job stats:")[1]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, flags=re.M)}
    for kind in ("prepare_data", "train_stack", "analyse_stack", "interpolate_study"):
        assert est.jobs[kind] == counts.pop(kind)
    assert est.jobs["total"] == counts.pop("total")
    assert sorted(counts) == sorted(TAIL_JOBS)


# --- hours -------------------------------------------------------------------------------------

def test_hours_of_a_one_stack_config_by_hand():
    # 3 runs of mlp at batch 32 on 256 examples, 2 epochs: 16 steps of a K = 3 stack; evaluations at 0, 8, 16.
    cfg = tiny(batch_sizes=[32], lr_rules=["constant"], base_lrs=[0.01, 0.02, 0.05],
               eval={"regular_points": 2, "log_points": 0}, checkpoints={"log_points": 0})
    est = estimate(cfg, table(("mlp", 32, 3, 960.0), eval_rate=3456.0))
    row = est.by_model.iloc[0]
    assert (row["runs"], row["train_jobs"], row["run_steps"]) == (3, 1, 48)
    train_s = 16 * (3 * 32 / 960.0)  # steps x seconds per stacked step: 1.6 s
    eval_s = 3 * (256 + 128) * 3 / 3456.0  # evaluations x examples x members / examples per second: 1.0 s
    assert row["eval_examples"] == 3 * 3 * (256 + 128)
    assert row["train_hours"] == pytest.approx(train_s / 3600)
    assert row["eval_hours"] == pytest.approx(eval_s / 3600)
    assert est.total["hours"] == pytest.approx(2.6 / 3600)
    assert est.total["longest_job_hours"] == pytest.approx(2.6 / 3600)  # the one stack is the whole job


def test_eval_subsets_count_at_the_points_between_full_evaluations():
    # As above, with evaluations at 0, 8 and 16: step 8 (no checkpoint) evaluates 100 + 50 examples, 0 and 16 all.
    cfg = tiny(batch_sizes=[32], lr_rules=["constant"], base_lrs=[0.01, 0.02, 0.05], checkpoints={"log_points": 0},
               eval={"regular_points": 2, "log_points": 0, "train_subset": 100, "test_subset": 50})
    est = estimate(cfg, table(("mlp", 32, 3, 960.0), eval_rate=3456.0))
    row = est.by_model.iloc[0]
    assert row["eval_examples"] == 3 * (2 * (256 + 128) + (100 + 50))
    assert row["eval_hours"] == pytest.approx(3 * (2 * (256 + 128) + 150) / 3456.0 / 3600)
    assert est.notes == []  # measured at exactly this batch size and K: nothing extrapolated


def test_the_longest_job_is_the_slowest_stack_not_the_sum():
    # Two stacks of one run: batch 16 (32 steps at 1 s each) and batch 64 (8 steps at 2 s each).
    cfg = tiny(batch_sizes=[16, 64], lr_rules=["constant"], eval={"regular_points": 2, "log_points": 0},
               checkpoints={"log_points": 0})
    est = estimate(cfg, table(("mlp", 16, 1, 16.0), ("mlp", 64, 1, 32.0), eval_rate=1e12))
    row = est.by_model.iloc[0]
    assert row["train_jobs"] == 2
    assert row["train_hours"] == pytest.approx((32 + 16) / 3600)
    assert row["longest_job_hours"] == pytest.approx(32 / 3600, rel=1e-6)
    assert est.total["longest_job_hours"] == pytest.approx(32 / 3600, rel=1e-6)
    assert "longest job hours" in format_estimate(est)


def test_batch_sizes_interpolate_in_log_log_and_hold_flat_outside():
    tp = Throughput(table(("mlp", 16, 1, 1000.0), ("mlp", 64, 1, 4000.0)), CPU)
    flags = set()
    assert tp.step_seconds("mlp", 32, 1, flags) == pytest.approx(32 / 2000.0)  # sqrt(1000 * 4000) examples/s
    assert tp.step_seconds("mlp", 16, 1, flags) == pytest.approx(16 / 1000.0)
    assert flags == set()
    assert tp.step_seconds("mlp", 256, 1, flags) == pytest.approx(256 / 4000.0)  # held at batch 64's rate
    assert tp.step_seconds("mlp", 4, 1, flags) == pytest.approx(4 / 1000.0)
    assert flags == {("b", "mlp", 256, 16, 64), ("b", "mlp", 4, 16, 64)}


def test_stack_sizes_interpolate_linearly_and_scale_outside_with_a_note():
    # K = 1: 10 ms a step; K = 12: 32 ms a step (batch 32)
    tp = Throughput(table(("mlp", 32, 1, 32 / 0.010), ("mlp", 32, 12, 12 * 32 / 0.032)), CPU)
    flags = set()
    assert tp.step_seconds("mlp", 32, 12, flags) == pytest.approx(0.032)
    assert tp.step_seconds("mlp", 32, 6, flags) == pytest.approx(0.010 + 5 / 11 * 0.022)
    assert flags == set()
    assert tp.step_seconds("mlp", 32, 24, flags) == pytest.approx(0.064)
    assert flags == {("k", "mlp", 24, 12)}
    cfg = tiny(batch_sizes=[32], base_lrs=[0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08], seeds=[0, 1], max_stack=16)
    est = estimate(cfg, table(("mlp", 32, 12, 12 * 32 / 0.032)))
    assert any("K=16 from K=12" in note for note in est.notes)  # one 16-run stack, measured at 12


def test_a_model_without_throughput_is_flagged_counted_and_not_timed():
    cfg = tiny(models=["mlp", "cnn"])
    est = estimate(cfg, table(("mlp", 16, 2, 5000.0), ("mlp", 64, 2, 9000.0)))
    by_model = est.by_model.set_index("model")
    assert math.isnan(by_model.loc["cnn", "hours"]) and by_model.loc["cnn", "run_steps"] > 0
    assert by_model.loc["mlp", "hours"] > 0
    assert est.total["hours"] == pytest.approx(by_model.loc["mlp", "hours"])
    assert est.total["run_steps"] == by_model["run_steps"].sum()
    message = f"no throughput measured for cnn on {CPU}: run benchmarks/throughput.py --models cnn"
    assert message in est.notes
    text = format_estimate(est)
    assert message in text and "plus the untimed cnn" in text


def test_device_choice_most_rows_by_default_else_by_substring():
    both = pd.concat([table(("mlp", 16, 1, 1.0), ("mlp", 32, 1, 1.0), ("cnn", 16, 1, 1.0)),
                      table(("mlp", 16, 1, 1.0), ("mlp", 32, 1, 1.0), device=GPU)])
    assert choose_device(both) == CPU
    assert choose_device(both, "nvidia") == GPU
    assert choose_device(both, "Test CPU") == CPU
    with pytest.raises(ValueError, match="no device .* matches 'tpu'"):
        choose_device(both, "tpu")
    with pytest.raises(ValueError, match="matches several devices"):
        choose_device(both, "test")
    # the hours follow the chosen device's rows only
    cfg = tiny(batch_sizes=[16], lr_rules=["constant"])
    fast = pd.concat([table(("mlp", 16, 1, 1000.0)), table(("mlp", 16, 1, 4000.0), device=GPU)])
    cpu, gpu = estimate(cfg, fast), estimate(cfg, fast, "NVIDIA")
    assert cpu.device == CPU and gpu.device == GPU
    assert cpu.total["train_hours"] == pytest.approx(4 * gpu.total["train_hours"])


def test_a_convergence_budget_counts_the_cap_as_an_upper_bound():
    cfg = tiny(budget={"epochs": 3, "stop": {"train_loss": 0.1}})
    est = estimate(cfg, table(("mlp", 16, 2, 5000.0), ("mlp", 64, 2, 9000.0)))
    assert est.total["run_steps"] == 2 * 3 * (256 // 16) + 2 * 3 * (256 // 64)
    assert any("upper bound" in note for note in est.notes)
    assert "at most" in format_estimate(est)


# --- the command line ---------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchlab", "estimate", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_prints_the_device_and_a_total_for_the_demo(tmp_path):
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    models = {m for study in demo["studies"].values() for m in study["models"]}
    csv = tmp_path / "throughput.csv"
    table(*[(m, b, 12, 3000.0) for m in models for b in (16, 512)]).to_csv(csv, index=False)
    result = cli("config.yaml", "--throughput", str(csv))
    assert result.returncode == 0, result.stderr
    assert CPU in result.stdout
    jobs = estimate(check_config(demo)).jobs["total"]
    total = next(line for line in result.stdout.splitlines() if line.startswith("total:"))
    assert re.search(rf"total: [\d,]+ runs, {jobs} jobs, [\d,]+ run-steps, (at most )?[\d.]+ device-hours .*on "
                     + re.escape(CPU), total), total


def test_cli_errors_exit_2_with_the_reason(tmp_path, capsys):
    def run(*args: str) -> tuple[int, str]:
        code = cli_main(["estimate", *args])
        return code, capsys.readouterr().err

    code, err = run(str(tmp_path / "nope.yaml"))
    assert code == 2 and "does not exist" in err
    bad = copy.deepcopy(TINY_CONFIG)
    bad["studies"]["tiny"]["optimizer"]["learning_rate"] = 0.1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    code, err = run(str(tmp_path / "bad.yaml"))
    assert code == 2 and "invalid config at 'studies.tiny.optimizer'" in err
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    code, err = run(str(tmp_path / "ok.yaml"), "--throughput", str(tmp_path / "none.csv"))
    assert code == 2 and "benchmarks/throughput.py" in err
    table(("mlp", 16, 1, 1.0)).to_csv(tmp_path / "t.csv", index=False)
    code, err = run(str(tmp_path / "ok.yaml"), "--throughput", str(tmp_path / "t.csv"), "--device-name", "tpu")
    assert code == 2 and "no device" in err


# --- the benchmark ------------------------------------------------------------------------------

def load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput_benchmark", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_measures_and_merges(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "throughput.csv"
    pd.DataFrame(rows(("mlp", 8, 2, 123.0), device=GPU)).to_csv(out, index=False)  # another device's row: kept
    args = ["--models", "mlp", "--batch-sizes", "8", "--k", "2", "--steps", "2", "--warmup", "1", "--eval-examples", "64",
            "--device", "cpu", "--out", str(out)]
    bench.main(args)
    got = pd.read_csv(out)
    assert len(got) == 2 and set(got["device"]) == {GPU, bench.device_label(bench.torch.device("cpu"))}
    assert got.loc[got["device"] == GPU, "examples_per_s"].item() == 123.0
    ours = got[got["device"] != GPU].iloc[0]
    assert (ours["model"], ours["batch_size"], ours["k"], ours["dataset"]) == ("mlp", 8, 2, "mnist1d")
    assert ours["examples_per_s"] == pytest.approx(ours["run_steps_per_s"] * 8, rel=1e-5)  # 6 significant digits
    assert ours["eval_examples_per_s"] > 0 and ours["step_ms"] > 0
    bench.main(args)  # measured again: replaces its own row
    again = pd.read_csv(out)
    assert len(again) == 2 and again.loc[again["device"] != GPU, "measured_at"].item() >= ours["measured_at"]
    # the estimate reads what the benchmark wrote
    est = estimate(tiny(batch_sizes=[8]), again, "cpu")
    assert est.total["hours"] > 0


def test_cli_lays_a_smoke_variant_over_its_preset(capsys):
    assert cli_main(["estimate", str(REPO / "config/keskar.yaml"), str(REPO / "config/smoke/keskar.yaml")]) == 0
    out = capsys.readouterr().out
    assert "config/keskar.yaml + " in out and "total: 8 runs" in out  # 2 studies x 2 batch sizes x 2 seeds


def test_smoke_data_writes_fake_releases_only_into_missing_roots(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/fake/mnist").mkdir(parents=True)  # an existing root is never written into
    assert cli_main(["smoke-data", str(REPO / "config/keskar.yaml"), str(REPO / "config/smoke/keskar.yaml")]) == 0
    assert "cifar10 in data/fake/cifar10" in capsys.readouterr().out
    assert (tmp_path / "data/fake/cifar10/cifar-10-batches-py/data_batch_1").is_file()
    assert not any((tmp_path / "data/fake/mnist").iterdir())
    assert cli_main(["smoke-data", str(tmp_path / "missing.yaml")]) == 2
