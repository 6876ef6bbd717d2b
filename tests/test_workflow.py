"""Rule-level tests: the real snakemake on a tiny config in a temporary directory."""

import copy
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from batchlab.config import build_grid, build_stacks, check_config
from batchlab.plots import FIGURES as FIGURE_NAMES
from tests.browser import render
from tests.conftest import REPO, TINY_CONFIG

pytestmark = pytest.mark.workflow
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def snakemake(workdir: Path, config: dict, *args: str, name: str = "config.yaml") -> subprocess.CompletedProcess:
    (workdir / name).write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", name,
         "--cores", "2", "--scheduler", "greedy", *args],
        capture_output=True, text=True, timeout=600, cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M)}


@pytest.fixture(scope="module")
def workflow_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wf")
    result = snakemake(workdir, TINY_CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    (workdir / "first_run.log").write_text(result.stdout + result.stderr)
    return workdir


@pytest.mark.check  # the one tiny workflow of `make check`
def test_end_to_end_writes_tables_and_figures(workflow_dir):
    runs = pd.read_parquet(workflow_dir / "results/tables/runs.parquet")
    curves = pd.read_parquet(workflow_dir / "results/tables/curves.parquet")
    assert sorted(runs["run_id"]) == [
        "tiny/mlp/bs16/constant/lr0.05/seed0", "tiny/mlp/bs16/linear/lr0.05/seed0",
        "tiny/mlp/bs64/constant/lr0.05/seed0", "tiny/mlp/bs64/linear/lr0.05/seed0",
    ]
    assert set(runs["status"]) == {"completed"}
    assert runs.set_index("run_id").loc["tiny/mlp/bs64/constant/lr0.05/seed0", "steps"] == 2 * (256 // 64)
    for run in runs.itertuples():
        c = curves[curves["run_id"] == run.run_id]
        assert c["step"].tolist() == list(range(run.steps + 1))
        assert c["batch_loss"].iloc[1:].notna().all()  # a batch loss for every step
        assert c["test_acc"].notna().sum() >= 3
        run_dir = workflow_dir / "results/runs" / run.run_id
        assert (run_dir / "final.pt").exists() and (run_dir / "checkpoints/step_0.pt").exists()
        stack_log = workflow_dir / f"results/logs/train/tiny/mlp/bs{run.batch_size}/stack0.log"  # one job per stack
        assert run.run_id in stack_log.read_text()
    for name in ("training_curves", "accuracy_vs_batch", "accuracy_vs_base_lr", "generalization_gap", "sharpness_vs_batch",
                 "sharpness_along_training", "interpolation", "steps_to_target", "speedup", "best_lr"):
        assert (workflow_dir / f"results/figures/{name}.png").stat().st_size > 10_000
        assert (workflow_dir / f"results/figures/{name}.pdf").exists()
    assert (workflow_dir / "results/data/mnist1d.npz").exists()


def test_sharpness_table_has_every_metric_for_every_analysed_checkpoint(workflow_dir):
    runs = pd.read_parquet(workflow_dir / "results/tables/runs.parquet").set_index("run_id")
    sharp = pd.read_parquet(workflow_dir / "results/tables/sharpness.parquet")
    contract = ["run_id", "step", "train_loss", "metric", "epsilon", "value"]
    assert set(contract) <= set(sharp.columns)
    assert set(sharp["metric"]) == {"eps_sharpness_full", "eps_sharpness_subspace", "hessian_lambda_max", "hessian_trace",
                                    "noise_scale", "b_noise"}  # analysis.measures' default: every measure
    assert set(sharp["run_id"]) == set(runs.index) and set(sharp["bn_mode"]) == {"eval"}
    steps = sharp.groupby("run_id")["step"].unique()
    for run_id, run in runs.iterrows():
        assert run["steps"] in steps[run_id]  # the final checkpoint
        assert (len(steps[run_id]) > 1) == (run["batch_size"] == 16)  # along training only where selected
    final = sharp.merge(runs["final_train_loss"], left_on="run_id", right_index=True)
    final = final[final["step"] == final["run_id"].map(runs["steps"])]
    assert (final["train_loss"] == final["final_train_loss"]).all()
    assert sharp["value"].notna().all() and (sharp[sharp["metric"].str.startswith("eps_")]["value"] >= 0).all()


def test_interpolation_table_reproduces_the_endpoints(workflow_dir):
    runs = pd.read_parquet(workflow_dir / "results/tables/runs.parquet").set_index("run_id")
    interp = pd.read_parquet(workflow_dir / "results/tables/interpolation.parquet")
    assert list(interp.columns) == ["pair_id", "run_id_small", "run_id_large", "alpha", "split", "loss", "accuracy", "bn_mode"]
    assert sorted(interp["pair_id"].unique()) == ["tiny/mlp/constant/lr0.05/seed0", "tiny/mlp/linear/lr0.05/seed0"]
    assert set(interp["run_id_small"].str.split("/").str[2]) == {"bs16"} and set(interp["run_id_large"].str.split("/").str[2]) == {"bs64"}
    assert len(interp) == 2 * 31 * 2 and set(interp["bn_mode"]) == {"none"}
    for pair in interp.itertuples():
        if pair.alpha in (0.0, 1.0):
            run = runs.loc[pair.run_id_small if pair.alpha == 0.0 else pair.run_id_large]
            assert pair.loss == pytest.approx(run[f"final_{pair.split}_loss"], rel=1e-6)


def independent_steps_to_target(runs: pd.DataFrame, curves: pd.DataFrame, metric: str, target: float) -> dict:
    """The documented rule, written out plainly: {(lr_rule, batch_size): (steps, best base LR)}."""
    per_run = {}
    for run in runs.itertuples():
        c = curves[curves["run_id"] == run.run_id]
        values = 1 - c["test_acc"] if metric == "test_error" else c[metric]
        hits = c["step"][values.notna() & (values <= target)]
        per_run[run.run_id] = float(hits.min()) if run.status == "completed" and len(hits) else None
    out = {}
    for (rule, b), group in runs.groupby(["lr_rule", "batch_size"]):
        best = (None, None)
        for lr, cell in group.groupby("base_lr"):
            steps = [per_run[r] for r in cell["run_id"]]
            reached = sorted(s for s in steps if s is not None)
            if reached and 2 * (len(steps) - len(reached)) <= len(steps):
                median = float(pd.Series(reached).median())
                if best[0] is None or median < best[0]:
                    best = (median, lr)
        out[(rule, b)] = best
    return out


def test_speedup_table_agrees_with_an_independent_recomputation(workflow_dir):
    runs = pd.read_parquet(workflow_dir / "results/tables/runs.parquet")
    curves = pd.read_parquet(workflow_dir / "results/tables/curves.parquet")
    speed = pd.read_parquet(workflow_dir / "results/tables/speedup.parquet")
    assert {"study", "model", "lr_rule", "target_metric", "target_value", "batch_size", "steps_to_target", "best_lr",
            "speedup", "perfect_speedup", "reached"} <= set(speed.columns)
    checked = 0
    for (metric, target), rows in speed[speed["lr_rule"] != "best"].groupby(["target_metric", "target_value"]):
        expected = independent_steps_to_target(runs, curves, metric, target)
        for row in rows.itertuples():
            steps, lr = expected[(row.lr_rule, row.batch_size)]
            assert row.reached == (steps is not None)
            if steps is not None:
                assert row.steps_to_target == steps and row.best_base_lr == lr
                checked += 1
    assert checked >= 2  # the tiny targets are reached somewhere
    critical = pd.read_parquet(workflow_dir / "results/tables/critical_batch.parquet")
    assert {"b_crit", "s_min", "ci_low", "ci_high", "b_simple", "b_noise", "b_noise_train_loss"} <= set(critical.columns)
    assert len(critical) == 2 * 3  # (train loss, test error) x (constant, linear, best)
    # the noise scales are read where the runs' train loss crossed the target, never far from it
    assert critical["b_simple"].notna().all() and (critical["b_simple_n_runs"] >= 1).all()
    on_train_loss = critical[critical["target_metric"] == "train_loss"]
    assert ((on_train_loss["b_noise_train_loss"] / on_train_loss["target_value"]).between(1 / 1.25, 1.25)).all()
    for measure in ("b_simple", "b_noise"):  # an interval is NaN or has a width, never zero
        low, high = critical[f"{measure}_ci_low"], critical[f"{measure}_ci_high"]
        assert (low.isna() == high.isna()).all() and (low[low.notna()] < high[high.notna()]).all()


def test_report_opens_in_a_browser_with_the_summary_and_every_figure(workflow_dir):
    seen = render(workflow_dir / "results/report.html")
    assert seen["console_errors"] == []
    assert "Summary" in seen["text"] and "train loss ≤ 2.2" in seen["text"] and "Provenance" in seen["text"]
    figures = {img["alt"]: img for img in seen["images"]}
    assert set(figures) == set(FIGURE_NAMES)
    for img in figures.values():
        assert img["complete"] and img["natural_width"] > 0
    summary = pd.read_parquet(workflow_dir / "results/tables/summary.parquet")
    assert len(summary) == 1 and summary.iloc[0]["n_completed"] == 4
    # the last thing it says: where the report is
    assert f"The report: {(workflow_dir / 'results/report.html').resolve()}" in (workflow_dir / "first_run.log").read_text()


def test_a_study_without_speedup_targets_builds_its_report(workflow_dir, tmp_path):
    """The fixture's study with its targets taken away (in a copy: its runs and analyses stay as they are)."""
    copied = Path(shutil.copytree(workflow_dir, tmp_path / "copy", symlinks=True))
    config = copy.deepcopy(TINY_CONFIG)
    config["studies"]["tiny"]["speedup"] = {"targets": {}}
    result = snakemake(copied, config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr)["speedup_tables"] == 1
    assert pd.read_parquet(copied / "results/tables/speedup.parquet").empty
    seen = render(copied / "results/report.html")
    assert seen["console_errors"] == [] and "none configured" in seen["text"]
    assert {img["alt"] for img in seen["images"]} == set(FIGURE_NAMES)
    assert all(img["natural_width"] > 0 for img in seen["images"])


def test_rerun_with_nothing_changed_does_no_work(workflow_dir):
    result = snakemake(workflow_dir, TINY_CONFIG)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr



def test_a_setting_that_cannot_change_results_reruns_nothing(workflow_dir):
    config = copy.deepcopy(TINY_CONFIG)
    config["studies"]["tiny"]["checkpoints"] = {**config["studies"]["tiny"]["checkpoints"], "resume_every_s": 77}
    result = snakemake(workflow_dir, config, "-n")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]

def test_a_copied_checkout_finds_the_results_up_to_date(workflow_dir, tmp_path):
    """Nothing a job depends on names where the checkout lies (the report's captions are read as text)."""
    checkout = tmp_path / "elsewhere"
    outside = {".venv", ".git", "results", "data", ".pytest_cache", ".snakemake"}  # at the top (batchlab/data stays)
    shutil.copytree(REPO, checkout, ignore=lambda folder, names: [
        name for name in names if name == "__pycache__" or (Path(folder) == REPO and name in outside)])
    (workflow_dir / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    result = subprocess.run([str(SNAKEMAKE), "-s", str(checkout / "Snakefile"), "--directory", str(workflow_dir),
                             "--configfile", "config.yaml", "-n", "--cores", "1"],
                            capture_output=True, text=True, timeout=300, cwd=workflow_dir)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_a_forgotten_run_trains_again_in_its_stack_and_what_reads_it_follows(workflow_dir, tmp_path):
    copied = Path(shutil.copytree(workflow_dir, tmp_path / "copy", symlinks=True))  # the fixture's runs stay as they are
    run_id = "tiny/mlp/bs16/constant/lr0.05/seed0"
    forgot = subprocess.run([sys.executable, "-m", "batchlab", "forget", run_id], capture_output=True, text=True,
                            cwd=copied, timeout=60)
    assert forgot.returncode == 0, forgot.stderr
    dry = snakemake(copied, TINY_CONFIG, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts["train_stack"] == 1 and counts["gather_tables"] == 1 and counts["report"] == 1
    assert "results/stacks/tiny/mlp/bs16/stack0.json" in dry.stdout + dry.stderr

def test_snakemakes_own_report_holds_every_figure(workflow_dir):
    result = snakemake(workflow_dir, TINY_CONFIG, "--report", "snakemake_report.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(workflow_dir / "snakemake_report.zip") as archive:
        names = archive.namelist()
    assert {name for name in FIGURE_NAMES if any(n.endswith(f"/{name}.png") for n in names)} == set(FIGURE_NAMES)

def test_adding_a_batch_size_plans_only_its_new_stack(workflow_dir):
    config = copy.deepcopy(TINY_CONFIG)
    config["studies"]["tiny"]["batch_sizes"] = [16, 32, 64]
    dry = snakemake(workflow_dir, config, "-n")
    assert dry.returncode == 0, dry.stderr[-2000:]
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts["train_stack"] == 1 and counts["analyse_stack"] == 1 and counts["gather_tables"] == 1  # one new stack
    # the pairs read every candidate's status, so the study's interpolation runs again, between the same ends
    assert "prepare_data" not in counts and counts["interpolate_study"] == 1
    assert "results/stacks/tiny/mlp/bs32/stack0.json" in dry.stdout + dry.stderr


def test_adding_a_batch_size_and_a_seed_trains_only_the_new_runs(workflow_dir):
    """A new batch size is a new stack; a new seed joins the old stacks, whose finished runs are kept. One
    rerun asks both (the dry run above planned the batch size alone), for the two tables it reads: the
    analyses, figures and report that follow have had their reruns planned by that dry run, and drawn
    in the tests before."""
    config = copy.deepcopy(TINY_CONFIG)
    config["studies"]["tiny"].update(batch_sizes=[16, 32, 64], seeds=[0, 1])
    old = {p: p.stat().st_mtime_ns for p in (workflow_dir / "results/runs").rglob("*") if p.is_file()}
    result = snakemake(workflow_dir, config, "results/tables/runs.parquet", "results/tables/interpolation.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr)["train_stack"] == 3  # bs32's new stack; the old two gain a seed
    assert {p: p.stat().st_mtime_ns for p in old} == old  # the finished runs were kept, file for file
    runs = pd.read_parquet(workflow_dir / "results/tables/runs.parquet")
    assert len(runs) == 12 and set(runs["status"]) == {"completed"}
    assert sorted(runs["batch_size"].unique()) == [16, 32, 64] and sorted(runs["seed"].unique()) == [0, 1]
    for batch_size in (16, 64):  # the fixture's stacks
        log = workflow_dir / f"results/logs/train/tiny/mlp/bs{batch_size}/stack0.log"
        assert "finished before with this config and code; kept" in log.read_text()
    assert "finished before" not in (workflow_dir / "results/logs/train/tiny/mlp/bs32/stack0.log").read_text()
    interp = pd.read_parquet(workflow_dir / "results/tables/interpolation.parquet")
    assert set(interp["run_id_small"].str.split("/").str[2]) == {"bs16"} and set(interp["run_id_large"].str.split("/").str[2]) == {"bs64"}


def test_max_stack_one_gives_one_job_per_run(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["studies"]["tiny"]["max_stack"] = 1
    result = snakemake(tmp_path, config, "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert job_counts(result.stdout + result.stderr)["train_stack"] == 4


def test_bad_config_stops_before_any_job_naming_the_key(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["studies"]["tiny"]["optimizer"]["learning_rate"] = 0.1
    result = snakemake(tmp_path, config)
    assert result.returncode != 0
    assert "studies.tiny.optimizer" in result.stderr and "'learning_rate' was unexpected" in result.stderr
    assert not (tmp_path / "results").exists()


def test_another_configfile_replaces_the_default_rather_than_merging(tmp_path):
    # The default config.yaml's demo study must not leak into a run given --configfile.
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    result = snakemake(tmp_path, TINY_CONFIG, "-n", name="tiny.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    assert job_counts(result.stdout + result.stderr)["train_stack"] == 2  # bs16 and bs64, two runs each
    demo = check_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    demo_stacks = len(build_stacks(demo, build_grid(demo)))
    # without --configfile: the demo, also when --config overrides (as profiles give) are set
    for extra in ([], ["--config", "gpus_per_run=1"]):
        default = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n", *extra],
                                 capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert default.returncode == 0, default.stderr[-2000:]
        assert job_counts(default.stdout + default.stderr)["train_stack"] == demo_stacks
