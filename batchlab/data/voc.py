"""Pascal VOC 2012 semantic segmentation (Everingham et al. 2010), read through torchvision, prepared once.

Golmant et al. 2018 study batch size for semantic segmentation with DRN-D-22 on Cityscapes,
whose download needs a registered account; VOC 2012 is the public segmentation benchmark
used here in its place (and `shapes` the offline one). This module reads
the release's layout with `torchvision.datasets.VOCSegmentation`:
`root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg`, the palette ("P" mode) PNG masks
`SegmentationClass/<id>.png` and the id lists `ImageSets/Segmentation/{train,val}.txt`.
The train split is `train` (1464 images), the test split is `val` (1449 images), since
the test masks were never released. Every image is resized to `size` x `size`, ignoring
its aspect ratio: the image with PIL's bilinear filter (antialiased when shrinking), the
mask with nearest neighbour, so every pixel keeps a class of the original mask.

Prepared `.npz` of `batchlab.data`: uint8 images (N, 3, size, size) normalised on load
with the per-channel mean and std of the *train* split, int64 masks (N, size, size) with
classes 0 (background) .. 20 and the 255 "void" boundary label mapped to IGNORE_INDEX,
`task="segmentation"`, 21 classes, `augment="none"`.

With `download=True` torchvision fetches and unpacks the 2 GB trainval archive, only if
the folder is not already there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import VOCSegmentation
from torchvision.datasets.voc import DATASET_YEAR_DICT

from batchlab.data import IGNORE_INDEX, save_prepared
from batchlab.data.images import channel_stats
from batchlab.data.release import check_release

NUM_CLASSES = 21
VOID = 255  # the release's label for object boundaries and unclear pixels


def voc_folder(root: str | os.PathLike, year: str = "2012") -> Path:
    """The release folder torchvision reads, e.g. root/VOCdevkit/VOC2012."""
    if year not in DATASET_YEAR_DICT or year == "2007-test":
        raise ValueError(f"unknown VOC year {year!r}; choose one of {', '.join(y for y in DATASET_YEAR_DICT if y != '2007-test')}")
    return Path(root) / DATASET_YEAR_DICT[year]["base_dir"]


def _check_files(root: Path, year: str) -> None:
    folder = voc_folder(root, year)
    needed = [folder / "JPEGImages", folder / "SegmentationClass"]
    needed += [folder / "ImageSets" / "Segmentation" / f"{s}.txt" for s in ("train", "val")]
    check_release(f"Pascal VOC {year}", root, [(p, None) for p in needed],
                  f"unpack the VOC{year} trainval archive in {root} so that {folder} exists")


def mask_labels(mask: Image.Image, source: str = "mask") -> np.ndarray:
    """Class ids (int64) of a palette mask, the void label 255 as IGNORE_INDEX."""
    if mask.mode not in ("P", "L"):
        raise ValueError(f"{source}: expected a palette ('P') segmentation mask, got mode {mask.mode!r}")
    labels = np.asarray(mask, dtype=np.int64).copy()
    bad = np.unique(labels[(labels >= NUM_CLASSES) & (labels != VOID)])
    if bad.size:
        raise ValueError(f"{source}: labels {bad.tolist()} are neither a class 0..{NUM_CLASSES - 1} nor void {VOID}")
    labels[labels == VOID] = IGNORE_INDEX
    return labels


def _split_arrays(ds: VOCSegmentation, size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(ds), 3, size, size), dtype=np.uint8)
    y = np.empty((len(ds), size, size), dtype=np.int64)
    for i in range(len(ds)):
        img, mask = ds[i]  # RGB image, palette mask
        x[i] = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8).transpose(2, 0, 1)
        y[i] = mask_labels(mask.resize((size, size), Image.NEAREST), ds.masks[i])
    return x, y


def prepare_voc(
    root: str | os.PathLike, out_path: str | os.PathLike, size: int = 64, year: str = "2012", download: bool = False
) -> None:
    """Read VOC segmentation `train` and `val` from `root`, resize to `size`, write the prepared `.npz`."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    root, year = Path(root), str(year)
    fetch = download and not voc_folder(root, year).is_dir()
    if not fetch:
        _check_files(root, year)
    x_train, y_train = _split_arrays(VOCSegmentation(str(root), year=year, image_set="train", download=fetch), size)
    x_test, y_test = _split_arrays(VOCSegmentation(str(root), year=year, image_set="val", download=False), size)
    mean, std = channel_stats(x_train)
    save_prepared(
        out_path, x_train, y_train, x_test, y_test,
        name="voc", num_classes=NUM_CLASSES, augment="none", mean=mean, std=std, task="segmentation",
    )  # fmt: skip
