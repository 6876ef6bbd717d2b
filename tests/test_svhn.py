"""prepare_svhn on tiny `.mat` files written in the release's format (cropped digits, format 2).

The release's `train_32x32.mat` / `test_32x32.mat` hold `X`, uint8 of shape (32, 32, 3, N)
(height, width, channel, image), and `y`, shape (N, 1), in 1..10 where 10 is the digit 0;
written by `batchlab.data.fake_release.write_svhn_release`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from batchlab.data import load_prepared
from batchlab.data.fake_release import write_svhn_release
from batchlab.data.prepare import prepare_dataset
from batchlab.data.svhn import prepare_svhn, subset_indices


def _write_svhn(root: Path, n_train: int = 9, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[f"x_{split}"] = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)  # (N, C, H, W), what the prepared file must hold
        out[f"y_{split}"] = (np.arange(n) % 10 + 1) % 10  # the release's 1..10, written with 10 for the digit 0
    write_svhn_release(root, out["x_train"], out["y_train"], out["x_test"], out["y_test"])
    return out


def test_writer_uses_the_release_labels(tmp_path):
    _write_svhn(tmp_path, n_train=11)
    mat = scipy.io.loadmat(tmp_path / "train_32x32.mat")
    assert mat["X"].shape == (32, 32, 3, 11) and mat["X"].dtype == np.uint8
    assert mat["y"].ravel().tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1]


def _raw(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_svhn_images_and_label_ten_as_zero(tmp_path):
    fake = _write_svhn(tmp_path / "svhn")
    out = tmp_path / "svhn.npz"
    prepare_svhn(tmp_path / "svhn", out, verify_checksums=False)
    raw = _raw(out)
    assert raw["x_train"].dtype == np.uint8 and raw["x_train"].shape == (9, 3, 32, 32)
    np.testing.assert_array_equal(raw["x_train"], fake["x_train"])
    np.testing.assert_array_equal(raw["x_test"], fake["x_test"])
    assert raw["y_train"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert raw["y_test"].tolist() == [1, 2, 3, 4]
    meta = json.loads(str(raw["meta"]))
    assert meta["name"] == "svhn" and meta["num_classes"] == 10 and meta["augment"] == "none"
    np.testing.assert_allclose(meta["mean"], (fake["x_train"] / 255).mean(axis=(0, 2, 3)), rtol=1e-12)


def test_label_ten_becomes_zero(tmp_path):
    _write_svhn(tmp_path, n_train=12, n_test=10)
    prepare_svhn(tmp_path, tmp_path / "s.npz", verify_checksums=False)
    ds = load_prepared(tmp_path / "s.npz")
    assert ds.y_test.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert ds.y_train.tolist()[9:] == [0, 1, 2] and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10


def test_n_train_keeps_a_fixed_subset_in_order(tmp_path):
    fake = _write_svhn(tmp_path, n_train=20)
    prepare_svhn(tmp_path, tmp_path / "a.npz", n_train=6, verify_checksums=False)
    prepare_svhn(tmp_path, tmp_path / "b.npz", n_train=6, verify_checksums=False)
    a, b = _raw(tmp_path / "a.npz"), _raw(tmp_path / "b.npz")
    keep = subset_indices(20, 6)
    assert len(set(keep.tolist())) == 6 and keep.tolist() == sorted(keep.tolist())
    assert keep.tolist() != list(range(6))  # a random subset, not the first images
    np.testing.assert_array_equal(a["x_train"], fake["x_train"][keep])
    np.testing.assert_array_equal(a["y_train"], fake["y_train"][keep])
    np.testing.assert_array_equal(a["x_train"], b["x_train"])
    assert len(a["x_test"]) == 4  # the test split is never cut
    meta = json.loads(str(a["meta"]))
    np.testing.assert_allclose(meta["mean"], (fake["x_train"][keep] / 255).mean(axis=(0, 2, 3)), rtol=1e-12)
    prepare_svhn(tmp_path, tmp_path / "c.npz", n_train=100, verify_checksums=False)
    assert load_prepared(tmp_path / "c.npz").n_train == 20


def test_missing_files_and_checksums(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train_32x32\.mat.*download: true"):
        prepare_svhn(tmp_path, tmp_path / "out.npz")
    _write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(FileNotFoundError, match="test_32x32.mat") as err:
        prepare_svhn(tmp_path, tmp_path / "out.npz", verify_checksums=False)
    assert "train_32x32" not in str(err.value).split(".")[0]
    _write_svhn(tmp_path / "again")
    with pytest.raises(RuntimeError, match="md5 mismatch"):  # fake files are not the official release
        prepare_svhn(tmp_path / "again", tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


def test_dispatcher_passes_the_config_options(tmp_path, monkeypatch):
    _write_svhn(tmp_path)
    with pytest.raises(RuntimeError, match="md5 mismatch"):  # real data are always checked
        prepare_dataset("svhn", tmp_path / "s.npz", {"root": str(tmp_path), "download": False, "n_train": 5})
    calls = []
    monkeypatch.setattr("batchlab.data.svhn.prepare_svhn", lambda *a, **k: calls.append((a, k)))
    prepare_dataset("svhn", tmp_path / "s.npz", {"root": "r", "download": True, "n_train": 50000})
    assert calls == [(("r", tmp_path / "s.npz"), {"download": True, "n_train": 50000})]
