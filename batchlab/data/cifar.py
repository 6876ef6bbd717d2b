"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009), read through `torchvision.datasets`, prepared once.

Masters & Luschi 2018 train their ResNets on both sets with the standard crop-and-flip
augmentation. This module reads the official python release (the pickled batches under
`cifar-10-batches-py/` or `cifar-100-python/`) with torchvision's own `CIFAR10`/`CIFAR100`
classes, so the on-disk format is torchvision's business, and writes the prepared `.npz`
of `batchlab.data` through `batchlab.data.images.save_images`: uint8 images
(N, 3, 32, 32), int64 labels, by default `augment="crop_flip"` and `normalize="standardize"`
(the per-channel mean and std of the *train* split, which `load_prepared` uses to
normalise both splits). Keskar et al. 2017's code trains on pixels / 255 with neither:
`augment="none"`, `normalize="scale"`.

torchvision checks every file's md5 against the official release. Keep that check
(`verify_checksums=True`) for real data; tests write tiny fake files in the real format,
whose md5 cannot match, and pass `verify_checksums=False`, which only checks that the
files exist.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from batchlab.data.images import channel_stats, save_images  # noqa: F401  (channel_stats: read here before)
from batchlab.data.release import check_release

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


class _ExistenceOnlyMixin:
    """Replace torchvision's md5 checks with existence checks (for fixtures, not real data)."""

    def _file(self, filename: str) -> str:
        return os.path.join(self.root, self.base_folder, filename)

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(self._file(f)) for f, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        # torchvision's _load_meta also checks the md5 of the meta file; load it without.
        with open(self._file(self.meta["filename"]), "rb") as fh:
            self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _CIFAR10NoChecksum(_ExistenceOnlyMixin, CIFAR10):
    pass


class _CIFAR100NoChecksum(_ExistenceOnlyMixin, CIFAR100):
    pass


def _dataset_class(name: str, verify_checksums: bool) -> type[CIFAR10]:
    if name not in NUM_CLASSES:
        raise ValueError(f"unknown CIFAR data set {name!r}; choose one of {', '.join(NUM_CLASSES)}")
    if name == "cifar10":
        return CIFAR10 if verify_checksums else _CIFAR10NoChecksum
    return CIFAR100 if verify_checksums else _CIFAR100NoChecksum


def _expected_files(cls: type[CIFAR10], root: Path) -> list[tuple[Path, str]]:
    """(path, md5) of every file torchvision reads for `cls`: train, test and meta."""
    entries = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    return [(root / cls.base_folder / f, md5) for f, md5 in entries]


def _check_files(cls: type[CIFAR10], root: Path, verify_checksums: bool) -> None:
    check_release("CIFAR", root, _expected_files(cls, root),
                  f"place the python release's '{cls.base_folder}/' folder under {root}", verify_checksums)


def _split_arrays(ds: CIFAR10) -> tuple[np.ndarray, np.ndarray]:
    """torchvision keeps images as (N, H, W, C) uint8; the prepared format is (N, C, H, W)."""
    x = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
    y = np.asarray(ds.targets, dtype=np.int64)
    return x, y


def prepare_cifar(
    name: str,
    root: str | os.PathLike,
    out_path: str | os.PathLike,
    download: bool = False,
    *,
    verify_checksums: bool = True,
    augment: str = "crop_flip",
    normalize: str = "standardize",
) -> None:
    """Read CIFAR-10/100 from `root` (downloading first if `download`) and write the prepared `.npz`.

    `name` is "cifar10" or "cifar100". `verify_checksums=False` skips torchvision's md5
    checks and only requires the files to exist: meant for test fixtures, not real data.
    `augment` and `normalize`: see batchlab.data.images.
    """
    cls = _dataset_class(name, verify_checksums)
    root = Path(root)
    if not download:
        _check_files(cls, root, verify_checksums)
    # The train split downloads if asked; the test split then finds the files in place.
    x_train, y_train = _split_arrays(cls(str(root), train=True, download=download))
    x_test, y_test = _split_arrays(cls(str(root), train=False, download=False))
    save_images(out_path, x_train, y_train, x_test, y_test, name=name, num_classes=NUM_CLASSES[name],
                augment=augment, normalize=normalize)
