"""prepare_cifar on tiny fake CIFAR folders written in the real python-release format.

The fixtures follow what torchvision's CIFAR10/CIFAR100 read (written by
`batchlab.data.fake_release.write_cifar_release`): pickles of dicts whose "data" is a uint8
array of rows of 3072 values (1024 red, then green, then blue, each a row-major 32x32
plane) with "labels" (CIFAR-10) or "fine_labels" (CIFAR-100), plus a meta pickle with
"label_names" / "fine_label_names". The train rows of CIFAR-10 are split evenly over
data_batch_1..5, in order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from batchlab.data import load_prepared
from batchlab.data.cifar import channel_stats, prepare_cifar
from batchlab.data.fake_release import write_cifar_release

PER_BATCH = 3  # images per fake train batch
N_TEST = 4
MARK = (1, 5, 7)  # (channel, row, col) of the marked pixel in the first train image


def _rows(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    return rng.integers(low, high, size=(n, 3072), dtype=np.uint8)


def _write_cifar10(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Five train batches and a test batch; returns the rows and labels written, in order."""
    rng = np.random.default_rng(seed)
    train = _rows(rng, 5 * PER_BATCH, 0, 256)
    labels = rng.integers(0, 10, 5 * PER_BATCH)
    train[0] = 0
    c, y, x = MARK
    train[0, c * 1024 + y * 32 + x] = 255
    # A test split from a different distribution: bright images only, so train and test statistics differ.
    test_rows = _rows(rng, N_TEST, 200, 256)
    test_labels = [9, 0, 3, 7]
    write_cifar_release("cifar10", root, _chw(train), labels, _chw(test_rows), test_labels)
    return dict(train=train, y_train=labels, test=test_rows, y_test=np.array(test_labels))


def _write_cifar100(root: Path, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = _rows(rng, 5, 0, 256), _rows(rng, 2, 0, 256)
    y_train, y_test = [0, 99, 42, 7, 99], [13, 98]
    write_cifar_release("cifar100", root, _chw(train), y_train, _chw(test), y_test)
    return dict(train=train, y_train=np.array(y_train), test=test, y_test=np.array(y_test))


def _raw(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _chw(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, 32, 32)


def test_cifar10_shapes_labels_and_raw_images(tmp_path):
    fake = _write_cifar10(tmp_path / "data")
    out = tmp_path / "prepared" / "cifar10.npz"
    prepare_cifar("cifar10", tmp_path / "data", out, verify_checksums=False)

    raw = _raw(out)
    assert raw["x_train"].dtype == np.uint8 and raw["x_train"].shape == (5 * PER_BATCH, 3, 32, 32)
    assert raw["x_test"].dtype == np.uint8 and raw["x_test"].shape == (N_TEST, 3, 32, 32)
    np.testing.assert_array_equal(raw["x_train"], _chw(fake["train"]))  # batches 1..5 in order
    np.testing.assert_array_equal(raw["x_test"], _chw(fake["test"]))
    meta = json.loads(str(raw["meta"]))
    assert meta["name"] == "cifar10" and meta["num_classes"] == 10 and meta["augment"] == "crop_flip"

    ds = load_prepared(out)
    assert ds.x_train.dtype == torch.float32 and ds.input_shape == (3, 32, 32)
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 10 and ds.augment == "crop_flip"
    assert ds.y_train.tolist() == fake["y_train"].tolist()
    assert ds.y_test.tolist() == [9, 0, 3, 7]


def test_marked_pixel_lands_at_channel_row_col(tmp_path):
    _write_cifar10(tmp_path)
    out = tmp_path / "c10.npz"
    prepare_cifar("cifar10", tmp_path, out, verify_checksums=False)
    raw = _raw(out)
    img = raw["x_train"][0]
    c, y, x = MARK
    assert img[c, y, x] == 255
    assert np.count_nonzero(img) == 1
    # After normalisation the marked pixel is still the unique maximum of its channel.
    meta = json.loads(str(raw["meta"]))
    mean, std = meta["mean"], meta["std"]
    norm = load_prepared(out).x_train[0]
    assert norm[c, y, x].item() == pytest.approx((1.0 - mean[c]) / std[c], rel=1e-5)
    assert norm[c].argmax().item() == y * 32 + x


def test_normalisation_uses_train_statistics(tmp_path):
    fake = _write_cifar10(tmp_path)
    out = tmp_path / "c10.npz"
    prepare_cifar("cifar10", tmp_path, out, verify_checksums=False)
    meta = json.loads(str(_raw(out)["meta"]))
    train01 = _chw(fake["train"]).astype(np.float64) / 255.0
    np.testing.assert_allclose(meta["mean"], train01.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(meta["std"], train01.std(axis=(0, 2, 3)), rtol=1e-12)

    ds = load_prepared(out)
    torch.testing.assert_close(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.x_train.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    # The bright test split is shifted by the train statistics, not re-centred with its own.
    assert (ds.x_test.mean(dim=(0, 2, 3)) > 1.0).all()
    mean, std = (torch.tensor(meta[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected_test = (torch.from_numpy(_chw(fake["test"])).float() / 255 - mean) / std
    torch.testing.assert_close(ds.x_test, expected_test)


def test_cifar100_fine_labels(tmp_path):
    fake = _write_cifar100(tmp_path)
    out = tmp_path / "c100.npz"
    prepare_cifar("cifar100", tmp_path, out, verify_checksums=False)
    raw = _raw(out)
    np.testing.assert_array_equal(raw["x_train"], _chw(fake["train"]))
    np.testing.assert_array_equal(raw["x_test"], _chw(fake["test"]))
    ds = load_prepared(out)
    assert ds.num_classes == 100 and ds.name == "cifar100"
    assert ds.y_train.tolist() == [0, 99, 42, 7, 99] and ds.y_test.tolist() == [13, 98]


def test_download_flag_with_files_present_reads_them_without_network(tmp_path):
    _write_cifar100(tmp_path)
    out = tmp_path / "c100.npz"
    prepare_cifar("cifar100", tmp_path, out, download=True, verify_checksums=False)
    assert load_prepared(out).n_train == 5


def test_missing_folder_says_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download: true.*cifar-10-batches-py"):
        prepare_cifar("cifar10", tmp_path / "nothing", tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


def test_one_missing_batch_is_named(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        prepare_cifar("cifar10", tmp_path, tmp_path / "out.npz", verify_checksums=False)


def test_checksums_are_verified_by_default(tmp_path):
    # The fake files are in the right format but are not the official release.
    _write_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="md5 mismatch"):
        prepare_cifar("cifar10", tmp_path, tmp_path / "out.npz")


def test_bad_name(tmp_path):
    with pytest.raises(ValueError, match="choose one of cifar10, cifar100"):
        prepare_cifar("cifar1000", tmp_path, tmp_path / "out.npz")


def test_channel_stats_is_exact():
    x = np.zeros((2, 3, 1, 2), dtype=np.uint8)
    x[:, 0] = 255  # constant 1.0
    x[0, 1] = [[0, 255]]  # half 0, half 1
    x[1, 1] = [[255, 0]]  # channel 2 stays 0
    mean, std = channel_stats(x)
    assert mean == pytest.approx([1.0, 0.5, 0.0], abs=1e-15)
    assert std == pytest.approx([0.0, 0.5, 0.0], abs=1e-15)
