"""MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017): four IDX files each, prepared once.

Keskar et al. 2017 train their fully connected network F1 on MNIST with small and large
batches (`keskar_f1` in batchlab.models). Fashion-MNIST has MNIST's format and sizes
(60000 train and 10000 test grey 28x28 images in 10 classes, clothing articles instead of
digits), is harder to learn, and Debian ships it (package `dataset-fashion-mnist`, which
`make datasets` installs), so it runs where nothing can be downloaded.

Both releases are the same four files, `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
`t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each plain or gzip-compressed (its
name then ends in `.gz`), read from the first of two folders that holds all four:

- `root` itself: the release's own layout, and Debian's, whose folder
  `/usr/share/datasets/fashion-mnist` (FASHION_MNIST_ROOT) is fashion_mnist's default root;
- `root/MNIST/raw` or `root/FashionMNIST/raw`: torchvision's layout, into which
  `download=True` has torchvision fetch the release when neither folder holds it.

IDX (LeCun's format) is a big-endian header, the magic number (2051 for images, 2049 for
labels: two zero bytes, the type 0x08 for unsigned bytes, the number of dimensions), one
int32 per dimension (N, rows, cols; or N), then the values row by row. The reader checks the
magic numbers, the 28x28 image size, that the values fill the declared shape exactly, that
images and labels agree in number and that the labels lie in 0..9, and names the file that
fails. `idx_sizes` reads the headers alone, for the catalog; this module needs numpy only
(torchvision is imported to download).

The prepared `.npz` of `batchlab.data` (through `batchlab.data.images.save_images`) holds
uint8 images (N, 1, 28, 28) and int64 labels, by default with `augment="none"` and
`normalize="standardize"` (the train split's mean and std).

No checksum is checked: torchvision knows the md5 sums of the official archives only, and
Debian's recompressed files do not match them.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from batchlab.data.images import save_images

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # (images, labels)
RAW_FILES = (*SPLIT_FILES["train"], *SPLIT_FILES["test"])
TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # each keeps its files in root/<class>/raw
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
GZIP_MAGIC = b"\x1f\x8b"


# --- IDX files ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed when it is gzip (told by its first bytes, not by its name)."""
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) if compressed else contextlib.nullcontext(raw) as fh:
                yield fh
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path} is a damaged gzip file ({exc}); replace it with the release's") from None


def _header(fh: BinaryIO, path: Path, magic: int) -> tuple[int, ...]:
    kind = "image" if magic == IMAGES_MAGIC else "label"
    head = fh.read(4)
    found = struct.unpack(">I", head)[0] if len(head) == 4 else None
    if found != magic:
        raise ValueError(f"{path} is not an IDX {kind} file: its magic number is {found}, expected {magic}")
    ndim = magic & 0xFF
    dims = fh.read(4 * ndim)
    if len(dims) != 4 * ndim:
        raise ValueError(f"{path} is a damaged IDX {kind} file: its header ends after {4 + len(dims)} bytes")
    return struct.unpack(f">{ndim}I", dims)


def idx_shape(path: str | os.PathLike, magic: int) -> tuple[int, ...]:
    """The shape an IDX file's header declares (magic IMAGES_MAGIC or LABELS_MAGIC), reading the header only."""
    with _reading(Path(path)) as fh:
        return _header(fh, Path(path), magic)


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file, checked to fill exactly the shape its header declares."""
    path = Path(path)
    with _reading(path) as fh:
        shape = _header(fh, path, magic)
        data = fh.read()
    if len(data) != math.prod(shape):
        raise ValueError(f"{path} is a damaged IDX file: its header declares shape {shape} ({math.prod(shape)} "
                         f"bytes of values), but {len(data)} bytes follow")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


# --- the releases ------------------------------------------------------------------------------


def release_folders(name: str, root: str | os.PathLike) -> list[Path]:
    """Where a release's files may lie: root itself (Debian's layout), then torchvision's root/<class>/raw."""
    if name not in TITLES:
        raise ValueError(f"unknown IDX release {name!r}; choose one of {', '.join(TITLES)}")
    root = Path(root)
    return [root, root / TORCHVISION_CLASSES[name] / "raw"]


def _file_in(folder: Path, base: str) -> Path | None:
    """`base` or `base.gz` in `folder`, the plain one first (nothing to decompress)."""
    return next((p for p in (folder / base, folder / f"{base}.gz") if p.is_file()), None)


def find_release(name: str, root: str | os.PathLike) -> dict[str, Path] | None:
    """The four files (base name -> path) of the first folder that holds them all; None when none does."""
    for folder in release_folders(name, root):
        found = {base: _file_in(folder, base) for base in RAW_FILES}
        if all(found.values()):
            return found
    return None


def release_files(name: str, root: str | os.PathLike) -> dict[str, Path]:
    """`find_release`, or a FileNotFoundError that names the missing files and the layouts read."""
    found = find_release(name, root)
    if found is not None:
        return found
    folders = release_folders(name, root)
    # The folder that holds the most files is the one being filled: name what it lacks.
    folder = max(folders, key=lambda f: sum(_file_in(f, base) is not None for base in RAW_FILES))
    missing = [base for base in RAW_FILES if _file_in(folder, base) is None]
    where = f"under {root}" if len(missing) == len(RAW_FILES) else f"in {folder}"
    debian = (f" Debian's dataset-fashion-mnist puts them in {FASHION_MNIST_ROOT} (`make datasets` installs it)."
              if name == "fashion_mnist" else "")
    raise FileNotFoundError(
        f"{TITLES[name]} files missing {where}: {', '.join(missing)} (each plain or gzip-compressed, .gz). "
        f"Set `download: true` in the config to fetch them, or place the four IDX files directly in {folders[0]} "
        f"or in {folders[1]} (torchvision's layout).{debian}"
    )


def _split_sizes(files: dict[str, Path], split: str, images: tuple[int, ...], labels: tuple[int, ...]) -> int:
    """The examples of a split whose image and label arrays have these shapes, once they agree."""
    images_file, labels_file = (files[base] for base in SPLIT_FILES[split])
    if images[1:] != IMAGE_SIZE:
        raise ValueError(f"{images_file} holds images of {images[1]}x{images[2]} pixels, expected 28x28")
    if images[0] != labels[0]:
        raise ValueError(f"{images_file} holds {images[0]} images but {labels_file} holds {labels[0]} labels")
    return images[0]


def idx_sizes(name: str, root: str | os.PathLike) -> tuple[int, int] | None:
    """(train, test) examples of the release under `root`, from its files' headers; None when they are not there."""
    files = find_release(name, root)
    if files is None:
        return None
    train, test = (
        _split_sizes(files, split, idx_shape(files[images], IMAGES_MAGIC), idx_shape(files[labels], LABELS_MAGIC))
        for split, (images, labels) in SPLIT_FILES.items()
    )
    return train, test


def _read_split(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of a split."""
    images_file, labels_file = (files[base] for base in SPLIT_FILES[split])
    x, y = read_idx(images_file, IMAGES_MAGIC), read_idx(labels_file, LABELS_MAGIC)
    _split_sizes(files, split, x.shape, y.shape)
    if y.size and y.max() >= NUM_CLASSES:
        raise ValueError(f"{labels_file} holds label {y.max()}; the classes are 0..{NUM_CLASSES - 1}")
    return np.ascontiguousarray(x[:, None]), y.astype(np.int64)


def _download(name: str, root: Path) -> None:
    """Have torchvision fetch the release into root/<class>/raw (it checks the archives' md5)."""
    import torchvision.datasets

    getattr(torchvision.datasets, TORCHVISION_CLASSES[name])(str(root), train=True, download=True)


def prepare_mnist(
    root: str | os.PathLike,
    out_path: str | os.PathLike,
    download: bool = False,
    *,
    name: str = "mnist",
    augment: str = "none",
    normalize: str = "standardize",
) -> None:
    """Read the IDX release `name` ("mnist" or "fashion_mnist") from `root` and write the prepared `.npz`.

    With `download`, torchvision fetches the release first, unless `root` already holds it.
    `augment` and `normalize`: see batchlab.data.images.
    """
    root = Path(root)
    if download and find_release(name, root) is None:
        _download(name, root)
    files = release_files(name, root)
    x_train, y_train = _read_split(files, "train")
    x_test, y_test = _read_split(files, "test")
    save_images(out_path, x_train, y_train, x_test, y_test, name=name, num_classes=NUM_CLASSES,
                augment=augment, normalize=normalize)
