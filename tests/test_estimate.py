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
from batchlab.config import analysed_runs, build_grid, build_stacks, check_config, load_configs
from batchlab.estimate import (SLURM_PROFILE, TAIL_JOBS, UPPER_BOUND, Estimate, Throughput, analysis_methods, options_text,
                               analysis_work, choose_device, estimate, format_estimate, profile_runtimes,
                               runtime_minutes, slurm_fit)
from batchlab.data.catalog import dataset_info
from batchlab.data.fake_release import write_fake_release
from batchlab.train.plan import make_plan
from tests.conftest import REPO, TINY_CONFIG

CPU = "cpu Test CPU (2 threads)"
GPU = "NVIDIA Test GPU"
SHAPE = "40:10"  # MNIST-1D's signal length and classes


def rows(*cases, device=CPU, eval_rate=10_000.0, dataset="mnist1d", optimizer="sgd", checkpoint_ms=0.0) -> list[dict]:
    """Training rows from (model, batch_size, k, examples_per_s) cases."""
    return [{"device": device, "torch": "2.x", "model": m, "dataset": dataset, "shape": SHAPE, "optimizer": optimizer,
             "batch_size": b, "k": k, "examples_per_s": e, "run_steps_per_s": e / b, "eval_examples_per_s": eval_rate,
             "checkpoint_ms": checkpoint_ms, "measure": "train", "measured_at": "2026-01-01T00:00:00+00:00"}
            for m, b, k, e in cases]


def analysis_rows(model: str, seconds: dict[str, float], work: dict[str, float], device=CPU, method=None) -> list[dict]:
    """Analysis rows: `seconds` of each measure at `work`."""
    method = method or {}
    return [{"device": device, "torch": "2.x", "model": model, "dataset": "mnist1d", "shape": SHAPE, "measure": m,
             "method": method.get(m, ""), "work": work[m], "seconds": s, "measured_at": "2026-01-01T00:00:00+00:00"}
            for m, s in seconds.items()]


def table(*cases, **kw) -> pd.DataFrame:
    return pd.DataFrame(rows(*cases, **kw))


def tiny(analyses: bool = False, **study) -> dict:
    """The tiny config with `study` merged into its study; without `analyses`, neither analyses nor interpolation."""
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["studies"]["tiny"].update(study)
    if 16 not in cfg["studies"]["tiny"]["batch_sizes"]:
        del cfg["studies"]["tiny"]["analysis"]["along_training"]  # it selects batch 16
    if not analyses:
        cfg["studies"]["tiny"]["analysis"]["enabled"] = False
        cfg["studies"]["tiny"]["interpolation"] = {"enabled": False}
    return check_config(cfg)


# --- counts ------------------------------------------------------------------------------------

def test_counts_equal_the_grid_the_stacks_and_the_plans():
    cfg = tiny(analyses=True, models=["mlp", "cnn"], seeds=[0, 1], max_stack=3)
    est = estimate(cfg, table(("mlp", 16, 3, 5000.0), ("mlp", 64, 3, 9000.0), ("cnn", 32, 3, 2000.0)))
    grid = build_grid(cfg)
    stacks = build_stacks(cfg, grid)
    analysed = analysed_runs(cfg, grid)
    total = est.total
    assert total["runs"] == len(grid) == 16
    assert total["train_jobs"] == len(stacks) == 8  # 4 runs per (model, batch size), cut at max_stack 3
    assert total["analysis_jobs"] == sum(any(r in analysed for r in s.runs) for s in stacks.values()) > 0
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


def test_checkpoint_saves_count_every_member_at_every_checkpoint_and_its_final_weights():
    # 3 runs of mlp at batch 32, 16 steps (1.6 s); checkpoints at step 0 only, plus final.pt: 2 saves of each member.
    cfg = tiny(batch_sizes=[32], lr_rules=["constant"], base_lrs=[0.01, 0.02, 0.05],
               eval={"regular_points": 2, "log_points": 0}, checkpoints={"log_points": 0})
    est = estimate(cfg, table(("mlp", 32, 3, 960.0), eval_rate=1e12, checkpoint_ms=100.0))
    assert est.by_model.iloc[0]["train_hours"] == pytest.approx((1.6 + 3 * 2 * 0.1) / 3600)
    assert est.notes == []
    older = table(("mlp", 32, 3, 960.0), eval_rate=1e12).drop(columns=["checkpoint_ms"])  # a table from before them
    est = estimate(cfg, older)
    assert est.by_model.iloc[0]["train_hours"] == pytest.approx(1.6 / 3600)
    assert any("no checkpoint saves timed for mlp" in note for note in est.notes)


def test_the_rows_of_the_studys_optimizer_and_data_are_used_else_a_note_says_whose():
    cfg = tiny(batch_sizes=[32], lr_rules=["constant"], optimizer={"name": "adam"})
    both = pd.concat([table(("mlp", 32, 1, 960.0)), table(("mlp", 32, 1, 320.0), optimizer="adam")])
    adam = estimate(cfg, both)
    assert adam.total["train_hours"] == pytest.approx(3 * estimate(cfg, table(("mlp", 32, 1, 960.0)))
                                                      .total["train_hours"])
    assert adam.notes == []
    sgd_only = estimate(cfg, table(("mlp", 32, 1, 960.0)))
    assert any("measured with the optimizer sgd; tiny trains it with adam" in note for note in sgd_only.notes)
    other_data = estimate(cfg, table(("mlp", 32, 1, 960.0), optimizer="adam", dataset="mnist"))
    assert any("mlp was measured on mnist data; tiny trains it on mnist1d" in note for note in other_data.notes)


def test_the_rows_of_the_studys_model_options_are_used_else_a_note_says_which():
    """F1 narrowed to 128 units costs a sixteenth of the default 512's matmuls: a row measured at the default does
    not time it, and where only such a row exists the estimate says so."""
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["datasets"]["mnist"] = {"root": "data/mnist", "download": False}
    cfg["studies"]["tiny"].update(dataset="mnist", models=["keskar_f1"], batch_sizes=[32], lr_rules=["constant"],
                                  model_options={"keskar_f1": {"hidden": 128}}, analysis={"enabled": False},
                                  interpolation={"enabled": False})
    cfg = check_config(cfg)
    default = table(("keskar_f1", 32, 1, 100.0), dataset="mnist").assign(shape="1x28x28:10")
    narrow = default.assign(examples_per_s=1600.0, model_options=options_text({"hidden": 128}))
    assert options_text({"hidden": 128, "depth": 2}) == "depth=2;hidden=128" and options_text({}) == ""
    both = estimate(cfg, pd.concat([default, narrow]))
    assert not [note for note in both.notes if "model options" in note or "default options" in note], both.notes
    assert both.total["train_hours"] == pytest.approx(estimate(cfg, narrow).total["train_hours"])
    only_default = estimate(cfg, default)
    assert only_default.total["train_hours"] > 10 * both.total["train_hours"]
    assert any("keskar_f1 was measured at its default options; tiny sets hidden=128" in note
               for note in only_default.notes), only_default.notes
    other = estimate(cfg, default.assign(model_options=options_text({"hidden": 64})))
    assert any("keskar_f1 was measured with the model options hidden=64; tiny sets hidden=128" in note
               for note in other.notes), other.notes


ANALYSED = {"runs": {}, "along_training": {"batch_sizes": [16]}, "n_examples": 64,
            "sharpness": {"epsilons": [1e-3], "subspace_dim": 10, "converged": True},
            "hessian": {"max_hvp": 30, "n_probes": 4}, "b_noise": {"method": "probes", "n_probes": 2, "max_probes": 4}}


def analysed_case(**analysis):
    """A two-run config whose analyses and interpolation are all on: batch 16 analysed along training, 64 at its
    final checkpoint, one pair; with its plans, methods and works."""
    cfg = tiny(analyses=True, batch_sizes=[16, 64], lr_rules=["constant"], analysis={**ANALYSED, **analysis})
    study = cfg["studies"]["tiny"]
    methods = analysis_methods("mlp", dataset_info("mnist1d", cfg["datasets"]["mnist1d"]), 256, study["analysis"])
    final, along = (analysis_work(study["analysis"], methods, 256, f) for f in (True, False))
    plans = {spec.batch_size: make_plan(spec, 256) for spec in build_grid(cfg).values()}
    return cfg, methods, final, along, plans


def test_analysis_hours_by_hand():
    cfg, methods, final, along, plans = analysed_case()
    assert set(final) == {"sharpness", "sharpness_converged", "hessian", "noise_scale", "b_noise"}
    assert set(along) == set(final) - {"sharpness_converged"}  # the converged search at the final weights only
    seconds = {"sharpness": 1.0, "sharpness_converged": 20.0, "hessian": 2.0, "noise_scale": 3.0, "b_noise": 4.0}
    work = {**final, "interpolation": 8 * (256 + 128)}
    timing = pd.concat([table(("mlp", 16, 1, 1e9), ("mlp", 64, 1, 1e9), eval_rate=1e12),
                        pd.DataFrame(analysis_rows("mlp", {**seconds, "interpolation": 5.0}, work, method=methods))])
    study = cfg["studies"]["tiny"]
    study["interpolation"]["alphas"] = 8
    est = estimate(cfg, timing)
    one_final, one_along = 30.0, 10.0  # seconds of a final checkpoint and of any other
    bs16_job = one_final + one_along * len(plans[16].checkpoint_steps)  # step_<k>.pt files, step 0 among them
    assert est.by_model.iloc[0]["analysis_hours"] == pytest.approx((bs16_job + one_final + 5.0) / 3600)
    assert est.longest["analyse_stack"] == ("tiny/mlp/bs16/stack0", pytest.approx(bs16_job))
    assert est.longest["interpolate_study"] == ("tiny", pytest.approx(5.0))
    assert est.by_model.iloc[0]["hours"] == pytest.approx(est.by_model.iloc[0][["train_hours", "eval_hours",
                                                                               "analysis_hours"]].sum())
    assert est.notes == [UPPER_BOUND] and est.untimed == []  # nothing scaled, nothing missing


def test_analysis_work_grows_with_the_settings_that_drive_each_measure():
    _, methods, _, small, _ = analysed_case()
    _, _, _, large, _ = analysed_case(n_examples=128, hessian={"max_hvp": 60, "n_probes": 8},
                                      sharpness={"epsilons": [1e-3, 5e-4], "subspace_dim": 10, "converged": True},
                                      b_noise={"method": "probes", "n_probes": 2, "max_probes": 9})
    assert large["sharpness"] == 2 * 2 * small["sharpness"]  # twice the examples, twice the searches
    assert large["hessian"] == 2 * 2 * small["hessian"]
    assert large["noise_scale"] == small["noise_scale"] == 256  # exact: one gradient per training example
    assert (small["b_noise"], large["b_noise"]) == (256 * 5, 256 * 10)  # probes at their cap, and G^T H G
    assert methods["noise_scale"] == "exact" and methods["b_noise"] == "probes"
    _, two_batch, _, drawn, _ = analysed_case(noise_scale={"method": "two_batch", "b_small": 8, "b_big": 64,
                                                           "max_draws": 30})
    assert two_batch["noise_scale"] == "two_batch" and drawn["noise_scale"] == 30 * (8 + 64)


def test_analyses_timed_at_other_settings_are_scaled_by_their_work_and_said_so():
    cfg, methods, final, along, plans = analysed_case()
    cfg["studies"]["tiny"]["interpolation"]["enabled"] = False
    seconds = {m: 1.0 for m in final}
    halved = pd.concat([table(("mlp", 16, 1, 1e9), ("mlp", 64, 1, 1e9), eval_rate=1e12),
                        pd.DataFrame(analysis_rows("mlp", seconds, {m: w / 2 for m, w in final.items()},
                                                   method=methods))])
    est = estimate(cfg, halved)
    checkpoints = 2 + len(plans[16].checkpoint_steps)  # two final checkpoints and batch 16's others
    assert est.by_model.iloc[0]["analysis_hours"] == pytest.approx((2 * 2 * 5.0 + 2 * 4 * (checkpoints - 2)) / 3600)
    assert any("analyses timed at other settings, scaled in proportion to their work" in n and "sharpness x2" in n
               for n in est.notes)


def test_analyses_without_rows_are_untimed_and_said_so_not_guessed():
    cfg, *_ = analysed_case()
    est = estimate(cfg, table(("mlp", 16, 1, 1e4), ("mlp", 64, 1, 1e4)))
    row = est.by_model.iloc[0]
    assert math.isnan(row["analysis_hours"]) and row["analysis_jobs"] == 2
    assert row["hours"] == pytest.approx(row["train_hours"] + row["eval_hours"])
    assert est.untimed == ["analyses of mlp"]
    assert any(note.startswith("no sharpness timing for mlp") for note in est.notes)
    assert "plus the untimed analyses of mlp" in format_estimate(est)


def test_the_first_lines_say_whether_data_sizes_are_measured_or_official(tmp_path):
    def cifar(root: Path, download: bool) -> dict:
        cfg = copy.deepcopy(TINY_CONFIG)
        cfg["datasets"] = {"cifar10": {"root": str(root), "download": download, "verify_checksums": False}}
        cfg["studies"]["tiny"].update(dataset="cifar10", models=["resnet8"], batch_sizes=[8], lr_rules=["constant"],
                                      analysis={"enabled": False}, interpolation={"enabled": False})
        return check_config(cfg)

    official = format_estimate(estimate(cifar(tmp_path / "absent", True))).splitlines()
    assert official[0].startswith("OFFICIAL SIZES, not measured: cifar10 (50,000 train / 10,000 test")
    assert str(tmp_path / "absent") in official[0]
    write_fake_release("cifar10", tmp_path / "cifar10", 32, 16)
    measured = estimate(cifar(tmp_path / "cifar10", False))
    assert measured.total["run_steps"] == 2 * (32 // 8)  # the files' 32 images, 2 epochs
    first = format_estimate(measured).splitlines()[0]
    assert first.startswith("data sizes (train/test): cifar10 32/16 (sizes measured from the files under")
    assert "OFFICIAL" not in format_estimate(measured)


# --- the SLURM profile -------------------------------------------------------------------------

def test_runtime_minutes_reads_what_a_snakemake_profile_writes():
    assert runtime_minutes(30, attempt=3) == 30
    assert runtime_minutes("240 * attempt", attempt=2) == 480
    assert runtime_minutes("60 + 30 * (attempt - 1)", attempt=3) == 120
    assert runtime_minutes("2h30m", attempt=1) == 150
    with pytest.raises(ValueError, match="only numbers, `attempt` and arithmetic"):
        runtime_minutes("__import__('os').getpid()", attempt=1)


def test_the_slurm_profiles_runtimes_come_from_its_yaml(tmp_path):
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    limits, attempts = profile_runtimes(SLURM_PROFILE)
    assert attempts == profile["retries"] + 1
    for rule in ("train_stack", "analyse_stack", "interpolate_study"):
        runtime = profile["set-resources"][rule]["runtime"]
        assert limits[rule] == [runtime_minutes(runtime, a) for a in range(1, attempts + 1)]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"default-resources": {"runtime": 45},
                                                      "set-resources": {"train_stack": {"runtime": "10 * attempt"}}}))
    limits, attempts = profile_runtimes(tmp_path / "p.yaml")
    assert attempts == 1 and limits == {"train_stack": [10], "analyse_stack": [45], "interpolate_study": [45]}


def slow_estimate(step_seconds: float) -> Estimate:
    """One stack of one run, 32 steps at batch 16 of `step_seconds` each, nothing else timed as taking time."""
    cfg = tiny(batch_sizes=[16], lr_rules=["constant"], eval={"regular_points": 2, "log_points": 0},
               checkpoints={"log_points": 0})
    return estimate(cfg, table(("mlp", 16, 1, 16 / step_seconds), eval_rate=1e12))


def test_a_training_stack_too_long_for_the_profile_is_said_first_with_what_to_change(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"retries": 1, "set-resources": {"train_stack": {"runtime": "10 * attempt"}}}))
    est = slow_estimate(75.0)  # 32 x 75 s = 40 min, against 10 + 20 over two attempts
    lines = format_estimate(est, profile).splitlines()
    first = lines[1]  # after the data sizes
    assert first.startswith("DOES NOT FIT: train_stack tiny/mlp/bs16/stack0 needs about 40 min on " + CPU)
    assert "gives train_stack 30 min over its 2 attempts (10 + 20 min)" in first
    assert "max_stack" in first and "checkpoints.resume_every_s" in first
    assert lines.index(first) < next(i for i, line in enumerate(lines) if line.startswith("throughput from"))
    across = format_estimate(slow_estimate(30.0), profile).splitlines()[1]  # 16 min: resumes into attempt 2
    assert across.startswith("fits only across attempts: train_stack tiny/mlp/bs16/stack0 needs about 16 min")
    assert "ends in attempt 2 of 2" in across
    fits = slow_estimate(15.0)  # 8 min
    assert slurm_fit(fits, profile) == [f"within the SLURM profile {profile}'s first attempt: the longest train_stack "
                                        f"8 min of 10 min"]


def test_an_analysis_job_must_fit_one_attempt_since_it_starts_again(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"retries": 2, "set-resources": {"analyse_stack": {"runtime": "10 * attempt"}}}))
    est = slow_estimate(1.0)
    est.longest = {"analyse_stack": ("tiny/mlp/bs16/stack0", 40 * 60.0)}  # 40 min: more than any one attempt's 30
    bad = slurm_fit(est, profile)
    assert bad[0].startswith("DOES NOT FIT: analyse_stack tiny/mlp/bs16/stack0 needs about 40 min")
    assert "at most 30 min in one attempt" in bad[0] and "analysis.along_training" in bad[0]
    est.longest = {"analyse_stack": ("tiny/mlp/bs16/stack0", 25 * 60.0)}
    assert slurm_fit(est, profile)[0].startswith("fits only in a later attempt: analyse_stack")


# --- the command line ---------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchlab", "estimate", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.mark.slow  # several seconds: `make test`, not `make check`
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
    code, err = run(str(tmp_path / "ok.yaml"), "--throughput", str(tmp_path / "t.csv"), "--slurm-profile",
                    str(tmp_path / "nope.yaml"))
    assert code == 2 and "SLURM profile" in err and "--slurm-profile none" in err


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


def test_throughput_benchmark_times_a_configs_training_and_analyses(tmp_path, capsys):
    bench = load_benchmark()
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["studies"]["tiny"]["analysis"] = {**ANALYSED, "n_examples": 32, "hessian": {"max_hvp": 5, "n_probes": 2},
                                          "sharpness": {"epsilons": [1e-3], "subspace_dim": 5, "max_iter": 2,
                                                        "converged": False}}
    cfg["studies"]["tiny"]["interpolation"] = {"alphas": 3}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "throughput.csv"
    bench.main(["--config", str(tmp_path / "tiny.yaml"), "--steps", "1", "--warmup", "1", "--device", "cpu",
                "--out", str(out)])
    got = pd.read_csv(out)
    train = got[got["measure"] == "train"]
    grid = build_grid(check_config(copy.deepcopy(cfg)))
    assert sorted(zip(train["batch_size"], train["k"])) == [(16, 2), (64, 2)]  # the config's stacks: 2 LR rules each
    assert set(train["optimizer"]) == {"sgd"} and set(train["shape"]) == {SHAPE} and (train["checkpoint_ms"] > 0).all()
    analyses = got[got["measure"] != "train"].set_index("measure")
    assert set(analyses.index) == {"sharpness", "hessian", "noise_scale", "b_noise", "interpolation"}
    assert (analyses["seconds"] > 0).all() and analyses.loc["b_noise", "method"] == "probes"
    assert analyses.loc["interpolation", "work"] == 3 * (256 + 128)
    assert analyses["settings"].str.endswith("tiny.yaml: tiny").all()
    est = estimate(check_config(copy.deepcopy(cfg)), got, "cpu")
    assert est.untimed == [] and est.notes == [UPPER_BOUND] and est.total["analysis_hours"] > 0
    assert est.total["runs"] == len(grid)


def test_check_config_prints_the_estimated_device_hours_after_valid(tmp_path, capsys):
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    table(("mlp", 16, 2, 5000.0), ("mlp", 64, 2, 9000.0)).to_csv(tmp_path / "t.csv", index=False)
    assert cli_main(["check-config", str(tmp_path / "ok.yaml"), "--throughput", str(tmp_path / "t.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path / 'ok.yaml'}: valid, 4 runs in 2 training jobs"
    est = estimate(check_config(copy.deepcopy(TINY_CONFIG)), table(("mlp", 16, 2, 5000.0), ("mlp", 64, 2, 9000.0)))
    assert lines[1].startswith(f"estimated {est.total['hours']:.2g} device-hours on {CPU}, one job at a time")
    assert "plus the untimed analyses of mlp" in lines[1] and len(lines) == 2
    assert cli_main(["check-config", str(tmp_path / "ok.yaml"), "--throughput", str(tmp_path / "none.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("estimated device-hours: unknown (no ")


def test_make_demo_runs_check_config_before_snakemake():
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ndemo run:", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip() for line in recipe.splitlines()[1:]]
    assert "-m batchlab check-config $(CONFIG)" in commands[0] and "snakemake" in commands[1]


def test_cli_lays_a_smoke_variant_over_its_preset(capsys):
    files = [str(REPO / "config/keskar.yaml"), str(REPO / "config/smoke/keskar.yaml")]
    assert cli_main(["estimate", *files]) == 0
    out = capsys.readouterr().out
    runs = len(build_grid(load_configs(files)))
    assert runs < len(build_grid(load_configs(files[:1])))  # the smoke grid, not the preset's
    assert "config/keskar.yaml + " in out and f"total: {runs} runs" in out


def test_smoke_data_writes_fake_releases_only_into_missing_roots(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/fake/mnist").mkdir(parents=True)  # an existing root is never written into
    assert cli_main(["smoke-data", str(REPO / "config/keskar.yaml"), str(REPO / "config/smoke/keskar.yaml")]) == 0
    assert "cifar10 in data/fake/cifar10" in capsys.readouterr().out
    assert (tmp_path / "data/fake/cifar10/cifar-10-batches-py/data_batch_1").is_file()
    assert not any((tmp_path / "data/fake/mnist").iterdir())
    assert cli_main(["smoke-data", str(tmp_path / "missing.yaml")]) == 2
