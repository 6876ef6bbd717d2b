"""Data sets as device tensors, in one prepared on-disk format.

A data rule prepares each data set once into an `.npz` file (see `save_prepared`); every
training job then loads it straight onto its device with `load_prepared`. The training
loop draws batches by index from these tensors; there is no DataLoader.

Prepared format (numpy `.npz`):
- `x_train`, `x_test`: float32 features, or uint8 images (N, C, H, W) that are scaled to
  [0, 1] and normalised with `meta["mean"]`/`meta["std"]` per channel on load;
- `y_train`, `y_test`: int64 labels;
- `meta`: a JSON string with `name`, `num_classes`, `augment` ("none" or "crop_flip"),
  and optional `mean`, `std`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from batchlab.io import atomic_path

AUGMENTATIONS = ("none", "crop_flip")


@dataclass
class Dataset:
    """Train and test tensors already on their device."""

    name: str
    x_train: torch.Tensor  # (N, ...) float32
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: str = "none"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])


def save_prepared(
    path: str | os.PathLike,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    name: str,
    num_classes: int,
    augment: str = "none",
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> None:
    """Write a prepared data set atomically (see the module docstring for the format)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise ValueError(f"{split}: {len(x)} inputs but {len(y)} labels")
    meta = dict(name=name, num_classes=int(num_classes), augment=augment, mean=mean, std=std)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file handle stops numpy from appending ".npz"
            np.savez(
                fh,
                x_train=x_train,
                y_train=np.asarray(y_train, dtype=np.int64),
                x_test=x_test,
                y_test=np.asarray(y_test, dtype=np.int64),
                meta=np.array(json.dumps(meta)),
            )


def _features(x: np.ndarray, meta: dict, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(x).to(device)
    if t.dtype == torch.uint8:
        t = t.float().div_(255.0)
    t = t.float()
    if meta.get("mean") is not None:
        shape = (1, -1) + (1,) * (t.dim() - 2)
        mean = torch.tensor(meta["mean"], device=device).view(shape)
        std = torch.tensor(meta["std"], device=device).view(shape)
        t = (t - mean) / std
    return t


def load_prepared(path: str | os.PathLike, device: str | torch.device = "cpu") -> Dataset:
    """Load a prepared `.npz` onto `device` as float32 features and int64 labels."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prepared data set {path} does not exist")
    device = torch.device(device)
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        return Dataset(
            name=meta["name"],
            x_train=_features(z["x_train"], meta, device),
            y_train=torch.from_numpy(z["y_train"]).to(device),
            x_test=_features(z["x_test"], meta, device),
            y_test=torch.from_numpy(z["y_test"]).to(device),
            num_classes=int(meta["num_classes"]),
            augment=meta.get("augment", "none"),
        )
