"""Shapes: a generated semantic-segmentation data set, the offline default for segmentation.

No paper uses it; it stands in for Cityscapes (Golmant et al. 2018) and Pascal VOC when no
release is on disk, so that the segmentation pipeline (the `drn` model, pixel losses, mean
IoU) runs anywhere. Each image is `size` x `size` RGB (uint8, (3, size, size)):

- a background of a random colour with a linear brightness gradient in a random direction;
- 1 to 4 filled shapes, each a disc, a square or an equilateral triangle (class 1, 2, 3)
  with a random centre, radius (size/8 .. size/3), rotation and colour (at least
  MIN_CONTRAST away from the background's in some channel), drawn in order so
  that later shapes occlude earlier ones (and may leave them partly or wholly hidden);
- Gaussian pixel noise (std NOISE_STD on the 0..255 scale).

The mask (int64, (size, size)) gives 0 for the background and, elsewhere, the class of the
topmost shape at that pixel (pixel centres decide). A class is its geometry only, never its
colour. Train and test are drawn from two disjoint random streams,
`numpy.random.default_rng([seed, 0])` and `default_rng([seed, 1])`, so the data are the same
for a given seed on every machine. The prepared `.npz` has `task="segmentation"`,
4 classes, `augment="none"` and the train split's per-channel mean and std.
"""

from __future__ import annotations

import os

import numpy as np

from batchlab.data import save_prepared
from batchlab.data.images import channel_stats

CLASSES = ("background", "disc", "square", "triangle")
NUM_CLASSES = len(CLASSES)
MAX_SHAPES = 4
NOISE_STD = 8.0
MIN_SIZE = 8
MIN_CONTRAST = 48.0  # a shape's colour differs from the background's by this much in some channel


def _inside(kind: int, u: np.ndarray, v: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Pixels (offsets u, v from the centre) inside a shape of class `kind` with radius r."""
    if kind == 1:  # disc
        return u**2 + v**2 <= r**2
    c, s = np.cos(angle), np.sin(angle)
    ru, rv = c * u + s * v, -s * u + c * v  # rotate into the shape's frame
    if kind == 2:  # square of half-side r / sqrt(2): r is its circumradius
        h = r / np.sqrt(2.0)
        return (np.abs(ru) <= h) & (np.abs(rv) <= h)
    # equilateral triangle with circumradius r: inside all three edges, each at distance r/2 from the centre
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = 2 * np.pi * k / 3
        inside &= np.cos(a) * ru + np.sin(a) * rv <= r / 2
    return inside


def _draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size) + 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * (xx - size / 2) + np.sin(theta) * (yy - size / 2)) / size  # in [-0.71, 0.71]
    background = rng.uniform(0, 255, size=3)
    img = background[:, None, None] + rng.uniform(20, 60) * ramp[None]
    mask = np.zeros((size, size), dtype=np.int64)
    for _ in range(rng.integers(1, MAX_SHAPES + 1)):
        kind = int(rng.integers(1, NUM_CLASSES))
        r = rng.uniform(size / 8, size / 3)
        cx, cy = rng.uniform(0, size, size=2)
        inside = _inside(kind, xx - cx, yy - cy, r, rng.uniform(0, 2 * np.pi))
        colour = rng.uniform(0, 255, size=3)
        while np.abs(colour - background).max() < MIN_CONTRAST:  # keep every shape visible on the background
            colour = rng.uniform(0, 255, size=3)
        img[:, inside] = colour[:, None]
        mask[inside] = kind
    img += rng.normal(0, NOISE_STD, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def _split(n: int, size: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, stream])
    x = np.empty((n, 3, size, size), dtype=np.uint8)
    y = np.empty((n, size, size), dtype=np.int64)
    for i in range(n):
        x[i], y[i] = _draw(rng, size)
    return x, y


def generate_shapes(n_train: int, n_test: int, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Images (N, 3, size, size) uint8 and masks (N, size, size) int64 for train and test."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    x_train, y_train = _split(n_train, size, seed, 0)
    x_test, y_test = _split(n_test, size, seed, 1)
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def prepare_shapes(out_path: str | os.PathLike, n_train: int = 2000, n_test: int = 500, size: int = 32, seed: int = 0) -> None:
    """Generate the shapes data set and write it in the prepared format."""
    d = generate_shapes(n_train, n_test, size, seed)
    mean, std = channel_stats(d["x_train"])
    save_prepared(
        out_path, **d, name="shapes", num_classes=NUM_CLASSES, augment="none", mean=mean, std=std, task="segmentation"
    )
