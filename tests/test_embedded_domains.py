"""Golmant's other two domains on the embedded data: no file to download, the real prepared format, the real trainer."""

import math

import pandas as pd
import pytest

from batchlab.data import IGNORE_INDEX, load_prepared
from batchlab.data.prepare import prepare_dataset
from batchlab.health import prior_entropy
from batchlab.train.loop import train_run


def domain_spec(dataset: str, model: str, base_lr: float, epochs: int, datasets: dict, batch_size: int = 16):
    from batchlab.config import build_grid, check_config

    study = {"dataset": dataset, "models": [model], "batch_sizes": [batch_size], "lr_rules": ["constant"],
             "base_lrs": [base_lr], "optimizer": {"name": "sgd", "momentum": 0.9, "max_grad_norm": 1.0},
             "budget": {"epochs": epochs}, "eval": {"regular_points": 4, "log_points": 2}, "checkpoints": {"log_points": 2}}
    grid = build_grid(check_config({"device": "cpu", "datasets": datasets, "studies": {"s": study}}))
    return next(iter(grid.values()))


@pytest.mark.slow  # several seconds: `make test`, not `make check`
def test_the_segmentation_network_learns_the_generated_shapes(tmp_path):
    options = {"n_train": 128, "n_test": 32, "size": 32, "seed": 0}
    prepare_dataset("shapes", tmp_path / "shapes.npz", options)
    data = load_prepared(tmp_path / "shapes.npz")
    assert data.task == "segmentation" and data.y_train.shape == (128, 32, 32)
    spec = domain_spec("shapes", "drn", 0.05, 10, {"shapes": options}, batch_size=8)
    summary = train_run(spec, data, tmp_path / "run", device="cpu", progress=False)
    curve = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    evaluated = curve.dropna(subset=["train_loss"])
    assert summary["status"] == "completed" and summary["task"] == "segmentation"
    # per labelled pixel, below half the initial loss and below the loss of predicting the pixel-class prior
    prior = prior_entropy(data.y_train, data.num_classes, IGNORE_INDEX)
    assert evaluated["train_loss"].iloc[-1] < min(0.5 * evaluated["train_loss"].iloc[0], 0.9 * prior)
    assert 0 < summary["final_test_miou"] <= 1 and evaluated[["train_miou", "test_miou"]].notna().all().all()


@pytest.mark.slow
def test_the_language_model_learns_the_embedded_python_docs(tmp_path):
    options = {"bptt": 12, "max_vocab": 300}
    prepare_dataset("pydoc_text", tmp_path / "pydoc.npz", options)
    data = load_prepared(tmp_path / "pydoc.npz")
    assert data.task == "language_model" and data.num_classes == 300 and data.x_train.dtype.is_floating_point is False
    data = data.train_fraction(0.05)  # about 870 windows: a quick check, not a study
    # 4 epochs: after 2 the loss is still at the unigram prior's entropy (4.08), which health counts as stalled
    spec = domain_spec("pydoc_text", "lstm_lm", 2.0, 4, {"pydoc_text": options}, batch_size=32)
    summary = train_run(spec, data, tmp_path / "run", device="cpu", progress=False)
    assert summary["status"] == "completed" and summary["task"] == "language_model"
    # a uniform guess has perplexity 300; the unigram frequencies alone bring it far below
    assert summary["final_test_perplexity"] == pytest.approx(math.exp(summary["final_test_loss"]))
    assert summary["final_test_perplexity"] < 150
