"""MNIST (LeCun et al. 1998), read through `torchvision.datasets.MNIST`, prepared once.

Keskar et al. 2017 train their fully connected network F1 on MNIST with small and large
batches (`keskar_f1` in batchlab.models). This module reads the four IDX files of the official release
that torchvision keeps under `root/MNIST/raw/` (`train-images-idx3-ubyte`,
`train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
uncompressed) and writes the prepared `.npz` of `batchlab.data`: uint8 images
(N, 1, 28, 28), int64 labels 0..9, `augment="none"`, and the mean and std of the *train*
split on the [0, 1] scale (`load_prepared` normalises both splits with them).

torchvision checks md5 sums only of the downloaded archives, not of the raw files it reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torchvision.datasets import MNIST

from batchlab.data import save_prepared
from batchlab.data.cifar import channel_stats
from batchlab.data.release import check_release

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _check_files(root: Path) -> None:
    raw = root / "MNIST" / "raw"
    check_release("MNIST", root, [(raw / f, None) for f in RAW_FILES],
                  f"place the four uncompressed IDX files of the release in {raw}")


def _split_arrays(ds: MNIST) -> tuple[np.ndarray, np.ndarray]:
    """torchvision keeps (N, 28, 28) uint8 tensors; the prepared format has a channel axis."""
    x = np.ascontiguousarray(ds.data.numpy().astype(np.uint8)[:, None])
    return x, ds.targets.numpy().astype(np.int64)


def prepare_mnist(root: str | os.PathLike, out_path: str | os.PathLike, download: bool = False) -> None:
    """Read MNIST from `root` (downloading first if `download`) and write the prepared `.npz`."""
    root = Path(root)
    if not download:
        _check_files(root)
    x_train, y_train = _split_arrays(MNIST(str(root), train=True, download=download))
    x_test, y_test = _split_arrays(MNIST(str(root), train=False, download=False))
    mean, std = channel_stats(x_train)
    save_prepared(out_path, x_train, y_train, x_test, y_test, name="mnist", num_classes=10, augment="none", mean=mean, std=std)
