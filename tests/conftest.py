"""Shared fixtures: tiny configs and a tiny prepared MNIST-1D."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from batchlab.config import build_grid, check_config
from batchlab.data import load_prepared
from batchlab.data.mnist1d import prepare_mnist1d

REPO = Path(__file__).resolve().parents[1]

TINY_STUDY = {
    "dataset": "mnist1d",
    "models": ["mlp"],
    "batch_sizes": [16, 64],
    "lr_rules": ["constant", "linear"],
    "base_lrs": [0.05],
    "seeds": [0],
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "budget": {"epochs": 2},
    "eval": {"regular_points": 5, "log_points": 3},
    "checkpoints": {"log_points": 3},
    "analysis": {
        "along_training": {"batch_sizes": [16]},
        "sharpness": {"epsilons": [1e-3], "subspace_dim": 10, "converged": False},  # 13 s a run; test_measure has it
        "hessian": {"max_hvp": 30, "n_probes": 4},
        "noise_scale": {"b_small": 8, "b_big": 64, "n_draws": 3},
    },
    "speedup": {"targets": {"train_loss": [2.2], "test_error": [0.85]}, "n_bootstrap": 50},
}
TINY_CONFIG = {"device": "cpu", "datasets": {"mnist1d": {"n_train": 256, "n_test": 128}}, "studies": {"tiny": TINY_STUDY}}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # CI has 2 cores; results must not depend on the thread count


@pytest.fixture
def tiny_config() -> dict:
    return copy.deepcopy(TINY_CONFIG)


def make_spec(study_overrides: dict | None = None, run: str | None = None):
    """A checked RunSpec from the tiny config with `study_overrides` merged into its study."""
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["studies"]["tiny"].update(copy.deepcopy(study_overrides or {}))
    grid = build_grid(check_config(cfg))
    return grid[run] if run else next(iter(grid.values()))


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mnist1d.npz"
    prepare_mnist1d(path, n_train=256, n_test=128)
    return path


@pytest.fixture
def tiny_data(tiny_data_path):
    return load_prepared(tiny_data_path, "cpu")


# --- sharing the suite among workers (pytest-xdist, `make test`) -----------------------------
# `--dist loadfile` runs each test file whole on one worker, so the module fixtures it shares (a
# trained workflow, a SLURM cluster, a preset's smoke run) are built once; each preset's smoke run
# has a file of its own for that reason. The longest files go first (measured on 2 cores), so that
# no worker is left with one of them at the end (`--no-loadscope-reorder`: xdist hands out the files
# in the order collected, rather than those of most tests first). The files of 10 s and more are
# ranked, by their seconds in a whole run on 2 cores: with only the longest six ranked,
# test_stacked_train (80 s) came last and one worker ended 55 s after the other.
LONGEST_FIRST = ("test_smoke_golmant", "test_slurm", "test_workflow", "test_smoke_keskar",
                 "test_smoke_masters_luschi", "test_plots", "test_stacked_train", "test_readme", "test_stacked_models",
                 "test_sharpness", "test_library_changes", "test_fashion_mnist", "test_speedup", "test_lm_protocol",
                 "test_config", "test_estimate", "test_embedded_domains", "test_gpus", "test_measure")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # stable: the order within a file stays
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank)))
