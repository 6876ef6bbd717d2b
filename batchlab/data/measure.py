"""What the files under a data set's root hold: the sizes of the release actually there.

The catalog (batchlab.data.catalog) knows the official releases' sizes, but a root may hold
something else: a fake release for a smoke run, a cut-down or a newer version. These
functions read the sizes from the files, where the loaders look for them, cheaply:

- MNIST, Fashion-MNIST: the IDX headers (batchlab.data.mnist.idx_sizes);
- CIFAR-10 / CIFAR-100: the labels of each pickled batch (its images are not built);
- SVHN: the shape of `y` in each .mat file's header (`scipy.io.whosmat`: the images are not read);
- Pascal VOC: the ids (lines) of `ImageSets/Segmentation/{train,val}.txt`;
- WikiText-2, PTB: the tokens of the train and test files as the loader counts them (the
  words of each line, then `<eos>`), and the distinct words of the train file: its
  vocabulary before any `max_vocab` cap. The validation file is not read.

Each gives None when the release's files are not all there. A file is read once per
process and version (its path, modification time and size). No torch, no pandas: the
Snakefile calls this at parse time.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from batchlab.data.mnist import idx_sizes
from batchlab.data.text import EOS, UNK, find_release_files

T = TypeVar("T")

# folder under root, train files, test files, the key of the labels in a batch
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels"),
}
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
VOC_SPLITS = ("train", "val")  # the train and test splits of the segmentation task


def per_file_version(function: Callable[..., T]) -> Callable[..., T]:
    """`function(path, *args)`, computed once per process for each version of the file at `path`."""

    @functools.lru_cache(maxsize=None)
    def cached(path: Path, version: tuple[int, int], *args) -> T:
        return function(path, *args)

    @functools.wraps(function)
    def wrapper(path: str | os.PathLike, *args) -> T:
        stat = Path(path).stat()
        return cached(Path(path).resolve(), (stat.st_mtime_ns, stat.st_size), *args)

    wrapper.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return wrapper


def _all_files(paths: list[Path]) -> bool:
    return all(p.is_file() for p in paths)


class _Inert:
    """Whatever a pickle's classes and functions would build: counting labels needs none of it."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _LabelsOnly(pickle.Unpickler):
    """Unpickles a batch without building its image array (numpy's reconstruction, a copy of 30 MB):
    every class or function the pickle names becomes _Inert, so nothing is imported or run."""

    def find_class(self, module: str, name: str) -> type:
        return _Inert


@per_file_version
def _pickled_labels(path: Path, key: str) -> int:
    with open(path, "rb") as fh:
        return len(_LabelsOnly(fh, encoding="latin1").load()[key])  # latin1: as torchvision reads the Python 2 pickles


def cifar_sizes(name: str, root: str | os.PathLike) -> tuple[int, int] | None:
    """(train, test) images of CIFAR-10 or CIFAR-100 under `root`, from the labels of its batches."""
    folder, train, test, key = CIFAR_FILES[name]
    paths = [[Path(root) / folder / f for f in files] for files in (train, test)]
    if not _all_files(paths[0] + paths[1]):
        return None
    n_train, n_test = (sum(_pickled_labels(p, key) for p in split) for split in paths)
    return n_train, n_test


@per_file_version
def _mat_rows(path: Path, variable: str) -> int:
    import scipy.io  # 0.2 s: only where an SVHN release is there

    try:
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(path)}
    except (ValueError, TypeError, OSError) as exc:
        raise ValueError(f"{path} is not a MATLAB file SVHN's loader can read: {exc}") from None
    if variable not in shapes:
        raise ValueError(f"{path} holds no variable {variable!r} (it has {', '.join(shapes) or 'none'})")
    return shapes[variable][0]


def svhn_sizes(root: str | os.PathLike) -> tuple[int, int] | None:
    """(train, test) images of SVHN's cropped digits under `root`, from the shape of each file's labels `y` (N, 1)."""
    paths = [Path(root) / f for f in SVHN_FILES]
    if not _all_files(paths):
        return None
    n_train, n_test = (_mat_rows(p, "y") for p in paths)
    return n_train, n_test


@per_file_version
def _lines(path: Path) -> int:
    with open(path, encoding="utf-8") as fh:
        return len(fh.readlines())  # torchvision's VOCSegmentation reads one id per line so


def voc_sizes(root: str | os.PathLike, year: str = "2012") -> tuple[int, int] | None:
    """(train, val) ids of the VOC segmentation lists under `root`."""
    lists = Path(root) / "VOCdevkit" / f"VOC{year}" / "ImageSets" / "Segmentation"
    paths = [lists / f"{split}.txt" for split in VOC_SPLITS]
    if not _all_files(paths):
        return None
    n_train, n_test = (_lines(p) for p in paths)
    return n_train, n_test


@per_file_version
def _tokens(path: Path, vocabulary: bool) -> tuple[int, int]:
    """(tokens as batchlab.data.text.read_tokens gives them, distinct tokens but `<unk>` or 0 unless `vocabulary`)."""
    tokens, words = 0, set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            split = line.split()
            tokens += len(split) + 1  # + <eos>
            if vocabulary:
                words.update(split)
    if not vocabulary:
        return tokens, 0
    if tokens:
        words.add(EOS)
    words.discard(UNK)
    return tokens, len(words)


def text_counts(name: str, root: str | os.PathLike) -> tuple[int, int, int] | None:
    """(vocabulary with `<unk>` and no cap, train tokens, test tokens) of WikiText-2 or PTB under `root`."""
    paths = find_release_files(name, root)
    if paths is None:
        return None
    n_train, words = _tokens(paths["train"], True)
    n_test, _ = _tokens(paths["test"], False)
    return words + 1, n_train, n_test


def text_valid_tokens(name: str, root: str | os.PathLike) -> int | None:
    """Tokens of the validation file of WikiText-2 or PTB under `root`; None where the release there has none."""
    paths = find_release_files(name, root)
    return None if paths is None or "valid" not in paths else _tokens(paths["valid"], False)[0]


def image_sizes(name: str, root: str | os.PathLike) -> tuple[int, int] | None:
    """(train, test) images of the image classification release `name` under `root`."""
    if name in CIFAR_FILES:
        return cifar_sizes(name, root)
    if name == "svhn":
        return svhn_sizes(root)
    return idx_sizes(name, root)
