"""SVHN cropped digits (Netzer et al. 2011), read through `torchvision.datasets.SVHN`, prepared once.

Golmant et al. 2018 ("On the computational inefficiency of large batch sizes for SGD")
train on SVHN cut to 50k training images. This module reads the format-2 release that
torchvision expects, `root/train_32x32.mat` and `root/test_32x32.mat` (MATLAB files with
`X` of shape (32, 32, 3, N) uint8 and `y` of shape (N, 1) in 1..10, where 10 is the
digit 0; torchvision maps 10 to 0), and writes the prepared `.npz` of `batchlab.data`:
uint8 images (N, 3, 32, 32), int64 labels 0..9, `augment="none"`, and the per-channel mean
and std of the (capped) *train* split. The `extra_32x32.mat` set is not used.

`augment` and `normalize` (batchlab.data.images) default to "none" and "standardize".

`n_train` caps the training set at a random subset of that many images, the same on every
machine: the indices are the first `n_train` of a permutation drawn by
`numpy.random.default_rng(SUBSET_SEED)`, kept in their original order. With `n_train` at
or above the 73257 images, or None, every image is kept. The test set is never cut.

torchvision checks each file's md5 against the official release. Keep that check
(`verify_checksums=True`) for real data; tests write tiny fake files in the real format and
pass `verify_checksums=False`, which only checks that the files exist.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torchvision.datasets import SVHN

from batchlab.data.images import save_images
from batchlab.data.release import check_release

SUBSET_SEED = 0


class _SVHNNoChecksum(SVHN):
    """Existence check instead of md5 (for fixtures, not real data)."""

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


def _check_files(root: Path, verify_checksums: bool) -> None:
    files = [(root / SVHN.split_list[s][1], SVHN.split_list[s][2]) for s in ("train", "test")]
    check_release("SVHN", root, files, f"place train_32x32.mat and test_32x32.mat (the cropped-digits format 2 "
                  f"release) in {root}", verify_checksums)


def subset_indices(n: int, n_train: int | None, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of the `n_train` images kept out of `n` (all of them if n_train is None or >= n)."""
    if n_train is None or n_train >= n:
        return np.arange(n)
    if n_train < 1:
        raise ValueError(f"n_train must be positive, got {n_train}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:n_train])


def _split_arrays(ds: SVHN) -> tuple[np.ndarray, np.ndarray]:
    """torchvision already transposes X to (N, 3, 32, 32) and maps label 10 to 0."""
    return np.ascontiguousarray(ds.data, dtype=np.uint8), np.asarray(ds.labels, dtype=np.int64)


def prepare_svhn(
    root: str | os.PathLike,
    out_path: str | os.PathLike,
    download: bool = False,
    n_train: int | None = None,
    *,
    verify_checksums: bool = True,
    augment: str = "none",
    normalize: str = "standardize",
) -> None:
    """Read SVHN from `root` (downloading first if `download`), cap the train split, write the prepared `.npz`."""
    root = Path(root)
    if not download:
        _check_files(root, verify_checksums)
    cls = SVHN if verify_checksums else _SVHNNoChecksum
    x_train, y_train = _split_arrays(cls(str(root), split="train", download=download))
    x_test, y_test = _split_arrays(cls(str(root), split="test", download=download))
    keep = subset_indices(len(x_train), n_train)
    x_train, y_train = x_train[keep], y_train[keep]
    save_images(out_path, x_train, y_train, x_test, y_test, name="svhn", num_classes=10, augment=augment, normalize=normalize)
