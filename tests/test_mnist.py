"""prepare_mnist on tiny IDX files written in the release's format.

IDX (LeCun's format, as torchvision reads it): a big-endian header, magic 2051 then the
counts N, rows, cols for images (uint8 pixels row by row), magic 2049 then N for labels;
written by `batchlab.data.fake_release.write_mnist_release` into root/MNIST/raw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from batchlab.data import load_prepared
from batchlab.data.fake_release import write_mnist_release
from batchlab.data.mnist import prepare_mnist
from batchlab.data.prepare import prepare_dataset


def _write_mnist(root: Path, n_train: int = 7, n_test: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = dict(
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, n_train),
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=np.array([9, 0, 4][:n_test]),
    )
    d["x_train"][0] = 0
    d["x_train"][0, 3, 20] = 255  # row 3, column 20
    write_mnist_release(root, d["x_train"], d["y_train"], d["x_test"], d["y_test"])
    return d


def test_mnist_reads_idx_files(tmp_path):
    fake = _write_mnist(tmp_path / "data")
    out = tmp_path / "prepared" / "mnist.npz"
    prepare_mnist(tmp_path / "data", out)
    with np.load(out) as z:
        assert z["x_train"].dtype == np.uint8 and z["x_train"].shape == (7, 1, 28, 28)
        np.testing.assert_array_equal(z["x_train"][:, 0], fake["x_train"])
        np.testing.assert_array_equal(z["x_test"][:, 0], fake["x_test"])
        meta = json.loads(str(z["meta"]))
    assert meta["name"] == "mnist" and meta["num_classes"] == 10 and meta["augment"] == "none"
    x01 = fake["x_train"].astype(np.float64) / 255
    assert meta["mean"] == pytest.approx([x01.mean()], rel=1e-12) and meta["std"] == pytest.approx([x01.std()], rel=1e-12)

    ds = load_prepared(out)
    assert ds.input_shape == (1, 28, 28) and ds.task == "classification"
    assert ds.y_train.dtype == torch.int64 and ds.y_train.tolist() == fake["y_train"].tolist()
    assert ds.y_test.tolist() == [9, 0, 4]
    assert ds.x_train[0, 0].argmax().item() == 3 * 28 + 20  # row-major, channel axis added in front
    torch.testing.assert_close(ds.x_train.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)


def test_download_flag_with_files_present_reads_them_without_network(tmp_path):
    _write_mnist(tmp_path)
    prepare_mnist(tmp_path, tmp_path / "m.npz", download=True)
    assert load_prepared(tmp_path / "m.npz").n_train == 7


def test_missing_files_are_named_with_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*download: true.*IDX files"):
        prepare_mnist(tmp_path, tmp_path / "out.npz")
    _write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as err:
        prepare_mnist(tmp_path, tmp_path / "out.npz")
    assert "train-images" not in str(err.value)
    assert not (tmp_path / "out.npz").exists()


def test_dispatcher_passes_the_config_options(tmp_path):
    fake = _write_mnist(tmp_path / "data", n_train=4)
    prepare_dataset("mnist", tmp_path / "m.npz", {"root": str(tmp_path / "data"), "download": False})
    ds = load_prepared(tmp_path / "m.npz")
    assert ds.name == "mnist" and ds.y_train.tolist() == fake["y_train"].tolist()
