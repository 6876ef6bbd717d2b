"""A preset's smoke variant (config/smoke/<preset>.yaml laid over config/<preset>.yaml) through every rule
of the real snakemake, on small generated files in the real formats: the fixture and the tests that
tests/test_smoke_<preset>.py run. One file per preset, so that pytest-xdist (which keeps a file on one
worker) can run the three smoke runs, a third of the suite, on different workers. pytest does not
collect this module; each of those files imports the tests and names its own `smoke_run`."""

import pandas as pd
import pytest

from batchlab.config import build_grid
from batchlab.data.fake_release import write_smoke_releases
from batchlab.plots import FIGURES
from tests.test_estimate_smoke import within_2x_of_the_smoke_training
from tests.test_presets import merged_config, run_snakemake


def smoke_run_fixture(preset: str):
    """The module fixture of one preset's smoke run: (preset, workdir, merged config), once the workflow is done."""

    @pytest.fixture(scope="module")
    def smoke_run(tmp_path_factory):
        return run_smoke(preset, tmp_path_factory)

    return smoke_run


def run_smoke(preset: str, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"smoke_{preset}")
    config = merged_config(preset, smoke=True)
    written = write_smoke_releases({name: {**opts, "root": str(workdir / opts["root"])} if "root" in opts else opts
                                    for name, opts in config["datasets"].items()})
    assert written  # every smoke variant reads at least one release in its real format
    result = run_snakemake(workdir, preset, smoke=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return preset, workdir, config


def test_a_smoke_variant_runs_every_rule_on_the_presets_models(smoke_run):
    preset, workdir, config = smoke_run
    tables = workdir / "results" / "tables"
    runs = pd.read_parquet(tables / "runs.parquet")
    grid = build_grid(config)
    assert sorted(runs["run_id"]) == sorted(grid)
    assert set(runs["model"]) == {r.model for r in grid.values()}  # the preset's own models
    # a diverged run is an outcome the papers predict (ResNet-32 without BN, He-initialised), not a broken rule
    assert runs["status"].isin(["completed", "diverged"]).mean() >= 0.75, runs[["run_id", "status"]]
    speedup = pd.read_parquet(tables / "speedup.parquet")
    studies_with_targets = {s for s, st in config["studies"].items() if st["speedup"]["targets"]}
    assert set(speedup["study"]) == studies_with_targets
    sharpness = pd.read_parquet(tables / "sharpness.parquet")
    analysed = {s for s, st in config["studies"].items() if st["analysis"]["enabled"]}
    assert {run_id.split("/")[0] for run_id in sharpness["run_id"]} == analysed
    assert sharpness["value"].notna().mean() > 0.9
    interpolation = pd.read_parquet(tables / "interpolation.parquet")
    interpolated = {s for s, st in config["studies"].items() if st["interpolation"]["enabled"]}
    assert {pair.split("/")[0] for pair in interpolation["pair_id"]} == interpolated
    drawn = {name: (workdir / "results" / "figures" / f"{name}.png").stat().st_size for name in FIGURES}
    assert sum(size > 10_000 for size in drawn.values()) >= len(FIGURES) - 1, drawn  # one may say "nothing to show"
    report = (workdir / "results" / "report.html").read_text()
    assert all(study in report for study in config["studies"])


def test_smoke_runs_record_the_task_metric(smoke_run):
    preset, workdir, config = smoke_run
    runs = pd.read_parquet(workdir / "results" / "tables" / "runs.parquet")
    for task, column in (("language_model", "final_test_perplexity"), ("segmentation", "final_test_miou")):
        rows = runs[runs["task"] == task]
        assert rows[column].notna().all() and (rows[column] > 0).all()
        other = runs[runs["task"] != task]
        assert other[column].isna().all()
    if preset == "golmant":
        assert set(runs["task"]) == {"classification", "segmentation", "language_model"}
        assert sorted(runs.loc[runs["study"] == "golmant_cifar10", "train_fraction"].unique()) == [0.5, 1.0]
        # its eval subset (64 of 128 images): the points between the full evaluations, said so
        curves = pd.read_parquet(workdir / "results" / "tables" / "curves.parquet")
        evaluated = curves[curves["run_id"].str.startswith("golmant_cifar10/") & curves["test_loss"].notna()]
        assert set(evaluated["eval_set"]) == {"full", "subset"}
        speedup = pd.read_parquet(workdir / "results" / "tables" / "speedup.parquet")
        assert speedup.loc[speedup["reached"], "steps_eval_set"].isin(["full", "subset", "mixed"]).all()


def test_the_estimate_is_within_2x_of_the_smoke_runs_training_time(smoke_run, tmp_path):
    within_2x_of_the_smoke_training(*smoke_run, tmp_path)
