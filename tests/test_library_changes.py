"""What reruns a trained stack: a change to the library code it runs does, a change to other
library code (a figure's) does not, nor does `device: auto` where it means the device asked before.

The real snakemake runs a copy of the workflow (Snakefile, rules, scripts and the batchlab package),
whose library the tests edit: the checkout itself, and the editable install pointing at it, are never
touched."""

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from batchlab import provenance
from batchlab.train.loop import train_run
from tests.conftest import REPO, TINY_CONFIG, make_spec

SNAKEMAKE = Path(sys.executable).parent / "snakemake"
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "scripts", "batchlab")
STACK = "results/stacks/tiny/mlp/bs64/stack0.json"  # the one training job of the config below
RUN = "results/runs/tiny/mlp/bs64/constant/lr0.05/seed0"
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="auto means cuda here, not the cpu the runs trained on")


def small_config(**top) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    study = config["studies"]["tiny"]
    study.update(batch_sizes=[64], lr_rules=["constant"], budget={"epochs": 1},
                 analysis={**study["analysis"], "along_training": {}})
    return {**config, **top}


def snakemake(root: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    """The copy of the workflow under root/repo, working in root/work, on `config`, for the stack's marker."""
    (root / "work").mkdir(exist_ok=True)
    (root / "work" / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(root / "repo" / "Snakefile"), "--directory", str(root / "work"),
         "--configfile", "config.yaml", "--cores", "1", *args, STACK],
        capture_output=True, text=True, timeout=300, cwd=root / "work",
    )


def scheduled(result: subprocess.CompletedProcess) -> bool:
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert ("Nothing to be done" in output) != ("train_stack" in output), output[-3000:]
    return "train_stack" in output


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """root/repo: a copy of the workflow; root/work: its one stack trained with device cpu."""
    root = tmp_path_factory.mktemp("library")
    for name in WORKFLOW_FILES:
        source, target = REPO / name, root / "repo" / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    result = snakemake(root, small_config(device="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture
def workflow(trained, tmp_path) -> Path:
    """A copy of the trained workflow and its results, modification times kept, for a test to edit."""
    return Path(shutil.copytree(trained, tmp_path / "copy", symlinks=True))


@pytest.mark.workflow
def test_the_copy_trained_with_its_own_library(trained):
    summary = yaml.safe_load((trained / "work" / RUN / "run.json").read_text())
    assert summary["code_hash"] == provenance.code_hash(trained / "repo" / "batchlab")
    assert not scheduled(snakemake(trained, small_config(device="cpu"), "-n"))


@pytest.mark.workflow
def test_a_change_to_the_training_code_retrains_with_the_changed_code(workflow):
    edit(workflow / "repo" / "batchlab" / "metrics.py")  # the training loss lives here
    assert scheduled(snakemake(workflow, small_config(device="cpu"), "-n"))
    result = snakemake(workflow, small_config(device="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = yaml.safe_load((workflow / "work" / RUN / "run.json").read_text())
    # the job ran the copy's changed library, not the checkout the virtualenv's install points at
    assert summary["code_hash"] == provenance.code_hash(workflow / "repo" / "batchlab")
    assert summary["code_hash"] != provenance.code_hash(REPO / "batchlab")
    log = workflow / "work" / "results/logs/train/tiny/mlp/bs64/stack0.log"
    assert "finished before with this config and code; kept" not in log.read_text()


@pytest.mark.workflow
def test_a_change_to_the_trainer_reruns_training(workflow):
    edit(workflow / "repo" / "batchlab" / "train" / "loop.py")
    assert scheduled(snakemake(workflow, small_config(device="cpu"), "-n"))


@pytest.mark.workflow
def test_a_change_to_the_figures_code_does_not_rerun_training(workflow):
    edit(workflow / "repo" / "batchlab" / "plots" / "common.py")
    assert not scheduled(snakemake(workflow, small_config(device="cpu"), "-n"))


@pytest.mark.workflow
@no_gpu
def test_device_auto_on_a_cpu_machine_does_not_rerun_runs_trained_with_device_cpu(trained):
    assert not scheduled(snakemake(trained, small_config(device="auto"), "-n"))


@pytest.mark.workflow
def test_asking_for_another_device_reruns_the_stack_job(trained):
    assert scheduled(snakemake(trained, small_config(device="cuda"), "-n"))  # a dry run: no GPU is needed


@no_gpu
def test_device_auto_on_a_cpu_machine_keeps_a_run_finished_with_device_cpu(tmp_path, tiny_data_path):
    spec = make_spec()
    first = train_run(spec, tiny_data_path, tmp_path / "run", device="cpu", progress=False)
    again = train_run(spec, tiny_data_path, tmp_path / "run", device="auto", progress=False)
    assert again == first  # kept as it was (a retrained run has another wall time and finish time)

