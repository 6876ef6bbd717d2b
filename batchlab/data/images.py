"""Image classification sets in the prepared format, with the two switches the papers differ on.

Masters & Luschi 2018 train their CIFAR ResNets on crops and flips of per-channel
standardised pixels; the code of Keskar et al. 2017 feeds the pixels divided by 255, with
no augmentation and no standardisation. Every image set (CIFAR-10/100, MNIST,
Fashion-MNIST, SVHN) is written through `save_images`, which takes both as options, set
per data set in the config (`datasets.<name>.augment`, `datasets.<name>.normalize`):

- `augment` (batchlab.data.AUGMENTATIONS): "none", or "crop_flip", the random 4-pixel
  crop and horizontal flip of batchlab.data.augment, drawn afresh for every batch;
- `normalize` (batchlab.data.NORMALIZATIONS): "standardize" keeps the per-channel mean
  and std of the *train* split (on the [0, 1] scale) in the meta, and `load_prepared`
  gives both splits (x / 255 - mean) / std; "scale" keeps neither, and the pixels load as
  x / 255 in [0, 1]. The test split never feeds the statistics.

The images stay uint8 (N, C, H, W) on disk either way; the meta records both switches.
This module needs numpy only.
"""

from __future__ import annotations

import os

import numpy as np

from batchlab.data import save_prepared


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W), on the [0, 1] scale.

    Counts the 256 possible values per channel instead of converting to float, so the full
    CIFAR train set costs a few MB and the result is exact.
    """
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {x.dtype} of shape {x.shape}")
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        p = counts / counts.sum()
        mean = float(p @ levels)
        means.append(mean)
        stds.append(float(np.sqrt(p @ (levels - mean) ** 2)))
    return means, stds


def save_images(out_path: str | os.PathLike, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, *, name: str, num_classes: int, augment: str, normalize: str) -> None:
    """Write uint8 images (N, C, H, W) and their labels as a prepared classification set."""
    mean, std = channel_stats(x_train) if normalize == "standardize" else (None, None)
    save_prepared(out_path, x_train, y_train, x_test, y_test, name=name, num_classes=num_classes,
                  augment=augment, mean=mean, std=std, normalize=normalize)
