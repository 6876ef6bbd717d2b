"""The paper presets: their full grids plan as the papers' setups, and their smoke variants run end to end.

A smoke variant (config/smoke/<paper>.yaml) is laid over its preset with a second
--configfile, on small generated files in the real formats (batchlab.data.fake_release)
that the real loaders read: the preset's own studies, models, optimizers and schedules, on a
tiny grid, through training, analyses, speed-up, interpolation, figures and the report.
"""

import subprocess
from pathlib import Path

import pytest
from snakemake.utils import update_config

from batchlab.config import build_grid, build_stacks, check_config, load_config_file
from tests.conftest import REPO
from tests.test_workflow import SNAKEMAKE, job_counts

pytestmark = pytest.mark.workflow
PRESETS = ("masters_luschi", "keskar", "golmant")


def merged_config(preset: str, smoke: bool) -> dict:
    config = load_config_file(REPO / "config" / f"{preset}.yaml")
    if smoke:
        update_config(config, load_config_file(REPO / "config" / "smoke" / f"{preset}.yaml"))
    return check_config(config)


def run_snakemake(workdir, preset: str, *args: str, smoke: bool) -> subprocess.CompletedProcess:
    configfiles = [str(REPO / "config" / f"{preset}.yaml")]
    if smoke:
        configfiles.append(str(REPO / "config" / "smoke" / f"{preset}.yaml"))
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", *configfiles,
         "--cores", "2", "--scheduler", "greedy", *args],
        capture_output=True, text=True, timeout=900, cwd=workdir,
    )


# The papers' grids, from docs/papers.md: (study, models, batch sizes, runs).
FULL_GRIDS = {
    "masters_luschi": [
        ("ml_resnet", {"resnet8", "resnet20_nobn", "resnet32_nobn", "resnet8_bn", "resnet20", "resnet32"},
         [2 ** i for i in range(1, 12)], 6 * 11 * 13),
        ("ml_resnet_cifar100", {"resnet8", "resnet20_nobn", "resnet32_nobn", "resnet8_bn", "resnet20", "resnet32"},
         [2 ** i for i in range(1, 12)], 6 * 11 * 13),
        ("ml_alexnet", {"alexnet_reduced"}, [2 ** i for i in range(1, 12)], 11 * 13),
        ("ml_alexnet_cifar100", {"alexnet_reduced"}, [2 ** i for i in range(1, 12)], 11 * 13),
        ("ml_warmup", {"resnet8_bn", "resnet20", "resnet32"}, [2 ** i for i in range(1, 12)], 3 * 11 * 13),
        ("ml_ghost_bn", {"resnet32"}, [16, 32, 64, 128, 256], None),
    ],
    "keskar": [
        ("keskar_f1", {"keskar_f1"}, [256, 6000], 2 * 5),
        ("keskar_c1", {"keskar_c1"}, [256, 5000], 2 * 5),
        ("keskar_c2", {"keskar_c2"}, [256, 5000], 2 * 5),
        ("keskar_c3", {"keskar_c3"}, [256, 5000], 2 * 5),
        ("keskar_c4", {"keskar_c4"}, [256, 5000], 2 * 5),
    ],
    "golmant": [
        ("golmant_cifar10", {"resnet20", "resnet32"}, [2 ** i for i in range(4, 14)], 3 * 2 * 10 * 3 * 4 * 2),
        ("golmant_architectures", {"alexnet", "vgg11_bn", "mobilenetv2"}, [2 ** i for i in range(4, 14)], 3 * 10 * 3 * 4 * 2),
        ("golmant_cifar100", {"resnet20"}, [2 ** i for i in range(4, 14)], 10 * 3 * 4 * 2),
        ("golmant_svhn", {"resnet20"}, [2 ** i for i in range(4, 14)], 3 * 10 * 3 * 4 * 2),
        ("golmant_mnist", {"resnet20"}, [2 ** i for i in range(4, 14)], 10 * 3 * 4 * 2),
        ("golmant_segmentation", {"drn"}, [2 ** i for i in range(1, 9)], 8 * 3 * 3 * 2),
        ("golmant_language", {"lstm_lm"}, [2 ** i for i in range(2, 10)], 8 * 3 * 3 * 2),
    ],
}


@pytest.mark.parametrize("preset", PRESETS)
def test_the_full_preset_plans_the_papers_grid(preset, tmp_path):
    config = merged_config(preset, smoke=False)
    grid = build_grid(config)
    for study, models, batch_sizes, n_runs in FULL_GRIDS[preset]:
        runs = [r for r in grid.values() if r.study == study]
        assert {r.model for r in runs} == models and sorted({r.batch_size for r in runs}) == batch_sizes
        if n_runs is not None:
            assert len(runs) == n_runs, study
    for options in config["datasets"].values():  # a corpus cannot be downloaded: there must be a folder to plan from
        if "root" in options and "download" not in options and not Path(options["root"]).is_absolute():
            (tmp_path / options["root"]).mkdir(parents=True, exist_ok=True)
    result = run_snakemake(tmp_path, preset, "--dry-run", smoke=False)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["train_stack"] == len(build_stacks(config, grid))
    assert counts["report"] == 1


def test_masters_luschi_preset_is_the_published_setup():
    study = merged_config("masters_luschi", smoke=False)["studies"]["ml_resnet"]
    opt = study["optimizer"]
    assert (opt["name"], opt["momentum"], opt["nesterov"], opt["weight_decay"]) == ("sgd", 0.0, False, 1e-4)
    assert study["lr_rules"] == ["linear"] and study["ref_batch_size"] == 1  # eta = eta_tilde * m
    assert study["base_lrs"] == [2.0 ** -i for i in range(12, -1, -1)]  # 2^-12 ... 2^0
    assert study["budget"] == {"epochs": 82}
    assert study["schedule"]["decay"] == "step" and study["schedule"]["decay_milestones"] == [0.5, 0.75]


def test_a_file_laid_over_a_preset_changes_only_the_study_it_names(tmp_path):
    """YAML anchors share nested mappings between studies; laying a smoke file over one must not reach the other."""
    (tmp_path / "base.yaml").write_text("studies:\n  a: &a\n    analysis: {runs: {seeds: [0]}}\n  b:\n    <<: *a\n")
    (tmp_path / "over.yaml").write_text("studies:\n  a:\n    analysis: {runs: {seeds: [1]}}\n")
    config = load_config_file(tmp_path / "base.yaml")
    update_config(config, load_config_file(tmp_path / "over.yaml"))
    assert config["studies"]["a"]["analysis"]["runs"] == {"seeds": [1]}
    assert config["studies"]["b"]["analysis"]["runs"] == {"seeds": [0]}
