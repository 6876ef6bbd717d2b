"""Data sets as device tensors, in one prepared on-disk format.

A data rule prepares each data set once into an `.npz` file (see `save_prepared`); every
training job then loads it straight onto its device with `load_prepared`. The training
loop draws batches by index from these tensors; there is no DataLoader.

Prepared format (numpy `.npz`):
- `x_train`, `x_test` (and optionally `x_valid`): float32 features; uint8 images (N, C, H, W) that are scaled to
  [0, 1] and normalised with `meta["mean"]`/`meta["std"]` per channel on load; or integer
  token ids (N, T), loaded as int64 and never scaled;
- `y_train`, `y_test` (and `y_valid` with `x_valid`): int64 targets, one per example (N,) for classification, or dense,
  one per position: (N, T) next tokens for language modelling, (N, H, W) pixel classes for
  segmentation. IGNORE_INDEX marks a position without a target (a VOC boundary pixel);
  losses and accuracies skip it;
- `meta`: a JSON string with `name`, `num_classes` (the vocabulary size for a language
  model), `task` (one of TASKS), `augment` ("none" or "crop_flip"), optional `mean`, `std`,
  and for images `normalize` (one of NORMALIZATIONS): "standardize" with the train split's
  `mean` and `std`, "scale" (pixels in [0, 1]) without them (batchlab.data.images).

The validation split is only written where a release has one and a study reads it: the
language-model corpora WikiText-2 and PTB (batchlab.data.text), whose validation loss drives
the plateau anneal of PyTorch's word_language_model example (`language_model.plateau_anneal`).
Every other data set has none, and a file without it loads with `x_valid = y_valid = None`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from batchlab.io import atomic_path

if TYPE_CHECKING:
    import torch

AUGMENTATIONS = ("none", "crop_flip")
NORMALIZATIONS = ("standardize", "scale")
TASKS = ("classification", "segmentation", "language_model")
IGNORE_INDEX = -100  # torch's own default for F.cross_entropy(ignore_index=...)
TRAIN_SUBSET_SEED = 20181130  # fixed: the subsets of a training fraction must not depend on a run's seed


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
    task: str = "classification"
    x_valid: torch.Tensor | None = None  # the validation split, where the release has one
    y_valid: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype models train in: the features' own, or torch's default for token ids."""
        import torch

        return self.x_train.dtype if self.x_train.is_floating_point() else torch.get_default_dtype()

    def train_fraction(self, fraction: float) -> "Dataset":
        """This data set with only `fraction` of its training examples; the test split unchanged.

        The kept examples are a prefix of one fixed permutation, so every run at a fraction
        trains on the same examples and a smaller fraction is a subset of a larger one
        (Golmant et al. 2018 compare 100%, 50% and 25% of CIFAR-10 and SVHN).
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"a training fraction must lie in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        import torch

        n = max(1, round(fraction * self.n_train))
        order = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(TRAIN_SUBSET_SEED))
        keep = order[:n].to(self.x_train.device)
        return replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep])


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
    task: str = "classification",
    normalize: str | None = None,
    x_valid: np.ndarray | None = None,
    y_valid: np.ndarray | None = None,
) -> None:
    """Write a prepared data set atomically (see the module docstring for the format)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if normalize is not None and normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if normalize is not None and (normalize == "standardize") != (mean is not None):
        raise ValueError(f"normalize={normalize!r} goes with {'a' if normalize == 'standardize' else 'no'} mean and std")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if (x_valid is None) != (y_valid is None):
        raise ValueError("a validation split needs both x_valid and y_valid")
    splits = [("train", x_train, y_train), ("test", x_test, y_test)]
    valid = {} if x_valid is None else {"x_valid": x_valid, "y_valid": np.asarray(y_valid, dtype=np.int64)}
    if valid:
        splits.append(("valid", x_valid, y_valid))
    for split, x, y in splits:
        if len(x) != len(y):
            raise ValueError(f"{split}: {len(x)} inputs but {len(y)} labels")
        if task != "classification" and np.ndim(y) < 2:
            raise ValueError(f"{split}: a {task} data set needs a target per position, got labels of shape {np.shape(y)}")
    meta = dict(name=name, num_classes=int(num_classes), augment=augment, mean=mean, std=std, task=task)
    if normalize is not None:
        meta["normalize"] = normalize
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file handle stops numpy from appending ".npz"
            np.savez(
                fh,
                x_train=x_train,
                y_train=np.asarray(y_train, dtype=np.int64),
                x_test=x_test,
                y_test=np.asarray(y_test, dtype=np.int64),
                **valid,
                meta=np.array(json.dumps(meta)),
            )


def _features(x: np.ndarray, meta: dict, device: torch.device) -> torch.Tensor:
    import torch

    t = torch.from_numpy(x).to(device)
    if meta.get("task") == "language_model":
        return t.long()  # token ids
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
    import torch  # here, not at the top: the Snakefile reads this package's constants

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
            task=meta.get("task", "classification"),
            **({"x_valid": _features(z["x_valid"], meta, device), "y_valid": torch.from_numpy(z["y_valid"]).to(device)}
               if "x_valid" in z.files else {}),
        )
