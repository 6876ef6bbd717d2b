"""Small fake releases of the real data sets, written in their real on-disk formats.

FOR PIPELINE CHECKS ONLY. The data written here are generated, not the real data sets:
they exercise the whole pipeline (the real loaders, preparation, training, analyses,
figures) where the real releases cannot be downloaded, and give GPU throughput runs inputs
of the right shapes. Nothing measured on them (losses, accuracies, critical batch sizes,
sharpness, speed-ups) says anything about the papers this workflow reproduces.

`write_fake_release(name, root, n_train, n_test, seed=0)` writes a release of `name`
(cifar10, cifar100, mnist, svhn, voc, wikitext2, ptb) under `root`, in the layout that
`batchlab.data.prepare.prepare_dataset` reads with `download: false`, and returns the
`datasets.<name>` config options that prepare it. CIFAR and SVHN files cannot carry the
official md5 sums, so their options hold `verify_checksums: false`. The same call writes
the same files (deterministic in `seed`); the train split does not depend on `n_test`.

The data are learnable, so a smoke run trains instead of stalling at chance:

- images (cifar10, cifar100, mnist, svhn): each class has its own mean colour (intensity
  for MNIST) and a stripe pattern of its own orientation, frequency and phase; each image
  adds a colour shift, a phase shift and pixel noise. Labels are balanced and shuffled.
  Stripe orientations lie in [0, pi/2], so a horizontal flip (crop_flip augmentation) never
  turns one class's orientation into another's;
- voc: images of several sizes with 1 to 3 ellipses or rectangles of object classes
  1..20 on a grey background; each class has its own saturated colour and stripe texture, the palette PNG
  masks carry the classes, and a void (255) band runs along every outline, as in the
  release;
- wikitext2, ptb: sentences from a Markov chain over NWORDS generated words (each word
  has a few likely successors, plus a Zipf-distributed random word now and then), so a
  language model beats the unigram loss by far. WikiText-2's files get its " = Heading = "
  lines, blank lines, "," and "." and a few `<unk>`; PTB's one lowercase sentence a line,
  with `N` for numbers and a few `<unk>`. `n_train` and `n_test` count tokens as the
  loader does (the words of a line plus one `<eos>`), exactly; the validation file, which
  the loaders read too, has `n_test` tokens of its own stream.

The format writers below (`write_cifar_release`, `write_mnist_release`, `write_idx_release`
(MNIST or Fashion-MNIST in any folder, plain or gzip-compressed), `write_svhn_release`,
`write_voc_release`, `write_text_release`) write given arrays or text in each release's
format; the loaders' and the catalog's tests use them for their fixtures.

Command line: `python -m batchlab.data.fake_release NAME ROOT --n-train N --n-test N [--seed S]`.
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

NAMES = ("cifar10", "cifar100", "mnist", "svhn", "voc", "wikitext2", "ptb")
# (channels, size, classes) of the image sets
IMAGE_SPECS = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "mnist": (1, 28, 10), "svhn": (3, 32, 10)}
CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_BATCHES = 5
NWORDS = 300  # words of the text generator
VOC_CLASSES = 21

# Streams of np.random.default_rng([seed, stream]): the class patterns (or grammar) and each split draw their own.
_MODEL, _TRAIN, _TEST, _VALID = 0, 1, 2, 3


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


# --- format writers ---------------------------------------------------------------------------


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _cifar_rows(x: np.ndarray) -> np.ndarray:
    """(N, 3, 32, 32) uint8 images as the release's rows of 3072 values (red, green, blue planes)."""
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32):
        raise ValueError(f"CIFAR images must be uint8 (N, 3, 32, 32), got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x.reshape(len(x), 3072))


def write_cifar_release(
    name: str, root: str | os.PathLike, x_train: np.ndarray, y_train: Sequence[int], x_test: np.ndarray, y_test: Sequence[int]
) -> Path:
    """Write images (N, 3, 32, 32) uint8 and labels as CIFAR's python release under `root`; return its folder.

    CIFAR-10 (`cifar-10-batches-py/`): the train split in 5 pickled batches `data_batch_1..5`
    (split as evenly as possible, in order), `test_batch` and `batches.meta`. CIFAR-100
    (`cifar-100-python/`): `train`, `test` and `meta`, with `fine_labels` and, not the real
    mapping, `coarse_labels = fine // 5`. Each batch is a dict with str keys (the official
    Python 2 pickles load so under encoding="latin1") whose "data" are uint8 rows of 3072.
    """
    y_train, y_test = [int(v) for v in y_train], [int(v) for v in y_test]
    if name == "cifar10":
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        rows = _cifar_rows(x_train)
        bounds = np.linspace(0, len(rows), CIFAR10_BATCHES + 1).round().astype(int)
        for i in range(CIFAR10_BATCHES):
            a, b = bounds[i], bounds[i + 1]
            batch = {"batch_label": f"training batch {i + 1} of 5", "labels": y_train[a:b], "data": rows[a:b],
                     "filenames": [f"fake_{k:05d}.png" for k in range(a, b)]}  # fmt: skip
            _pickle(folder / f"data_batch_{i + 1}", batch)
        test = {"batch_label": "testing batch 1 of 1", "labels": y_test, "data": _cifar_rows(x_test),
                "filenames": [f"fake_test_{k:05d}.png" for k in range(len(y_test))]}  # fmt: skip
        _pickle(folder / "test_batch", test)
        meta = {"label_names": list(CIFAR10_LABEL_NAMES), "num_cases_per_batch": int(bounds[1]), "num_vis": 3072}
        _pickle(folder / "batches.meta", meta)
    elif name == "cifar100":
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for fname, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            batch = {"filenames": [f"fake_{fname}_{k:05d}.png" for k in range(len(y))],
                     "batch_label": f"{fname}ing batch 1 of 1", "fine_labels": y,
                     "coarse_labels": [v // 5 for v in y], "data": _cifar_rows(x)}  # fmt: skip
            _pickle(folder / fname, batch)
        meta = {
            "fine_label_names": [f"class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"superclass_{i:02d}" for i in range(20)],
        }
        _pickle(folder / "meta", meta)
    else:
        raise ValueError(f"unknown CIFAR data set {name!r}; choose cifar10 or cifar100")
    return folder


def _write_maybe_gzip(path: str | os.PathLike, data: bytes) -> None:
    """`data` into `path`, gzip-compressed where the name ends in .gz (with no time stamp: the same bytes every time)."""
    Path(path).write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def write_idx_images(path: str | os.PathLike, x: np.ndarray) -> None:
    """IDX image file: big-endian magic 2051, then N, rows, cols, then the uint8 pixels row by row
    (gzip-compressed where `path` ends in .gz)."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"IDX images must be (N, rows, cols), got shape {x.shape}")
    _write_maybe_gzip(path, struct.pack(">IIII", 2051, *x.shape) + x.astype(np.uint8).tobytes())


def write_idx_labels(path: str | os.PathLike, y: np.ndarray) -> None:
    """IDX label file: big-endian magic 2049, then N, then one uint8 a label (gzip-compressed where `path` ends in .gz)."""
    y = np.asarray(y)
    _write_maybe_gzip(path, struct.pack(">II", 2049, len(y)) + y.astype(np.uint8).tobytes())


def write_idx_release(
    folder: str | os.PathLike, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    *, compress: bool = False,
) -> Path:
    """Write images (N, 28, 28) uint8 and labels as the four IDX files of MNIST or Fashion-MNIST in `folder`.

    `compress` gzips each file and adds `.gz` to its name, as the releases and Debian's
    dataset-fashion-mnist ship them. Returns `folder`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx_images(folder / f"train-images-idx3-ubyte{suffix}", x_train)
    write_idx_labels(folder / f"train-labels-idx1-ubyte{suffix}", y_train)
    write_idx_images(folder / f"t10k-images-idx3-ubyte{suffix}", x_test)
    write_idx_labels(folder / f"t10k-labels-idx1-ubyte{suffix}", y_test)
    return folder


def write_mnist_release(
    root: str | os.PathLike, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Path:
    """Write images (N, 28, 28) uint8 and labels as the four uncompressed IDX files under `root/MNIST/raw`
    (torchvision's layout); return that folder."""
    return write_idx_release(Path(root) / "MNIST" / "raw", x_train, y_train, x_test, y_test)


def write_svhn_release(
    root: str | os.PathLike, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Path:
    """Write images (N, 3, 32, 32) uint8 and digits 0..9 as SVHN's `train_32x32.mat`, `test_32x32.mat` under `root`.

    The release's format 2: `X` uint8 of shape (32, 32, 3, N) and `y` of shape (N, 1) in
    1..10, the digit 0 written as 10.
    """
    import scipy.io

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32):
            raise ValueError(f"SVHN images must be uint8 (N, 3, 32, 32), got {x.dtype} {x.shape}")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError("SVHN labels must be digits 0..9")
        labels = np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": labels})
    return root


def voc_palette() -> list[int]:
    """VOC's colour map (the bit-interleaved one of the devkit's labelcolormap.m), 256 RGB triples flat."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_voc_release(
    root: str | os.PathLike,
    examples: Mapping[str, tuple[np.ndarray, np.ndarray]],
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    *,
    year: str = "2012",
    quality: int = 95,
) -> Path:
    """Write `examples` (id -> (RGB image (H, W, 3) uint8, class mask (H, W) uint8)) as a VOC release; return its folder.

    `root/VOCdevkit/VOC<year>/JPEGImages/<id>.jpg`, palette ("P") PNG masks
    `SegmentationClass/<id>.png` (classes 0..20, 255 void) and the id lists
    `ImageSets/Segmentation/{train,val,trainval}.txt`.
    """
    from PIL import Image

    base = Path(root) / "VOCdevkit" / f"VOC{year}"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    for name, (img, mask) in examples.items():
        Image.fromarray(np.asarray(img, dtype=np.uint8), mode="RGB").save(base / "JPEGImages" / f"{name}.jpg", quality=quality)
        png = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
        png.putpalette(palette)
        png.save(base / "SegmentationClass" / f"{name}.png")
    lists = {"train": list(train_ids), "val": list(val_ids)}
    lists["trainval"] = lists["train"] + lists["val"]
    for split, ids in lists.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return base


TEXT_FILES = {
    "wikitext2": {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"},
    "ptb": {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
}


def write_text_release(name: str, root: str | os.PathLike, train: str, test: str, valid: str | None = None) -> Path:
    """Write the text of each split into the release's files in `root` (WikiText-2 `wiki.*.tokens`, PTB `ptb.*.txt`).

    `valid=None` writes no validation file: the loaders then prepare no validation split, which only the
    plateau anneal (`language_model.plateau_anneal`) needs.
    """
    if name not in TEXT_FILES:
        raise ValueError(f"unknown text release {name!r}; choose one of {', '.join(TEXT_FILES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        if text is not None:
            (root / TEXT_FILES[name][split]).write_text(text, encoding="utf-8")
    return root


# --- learnable images ----------------------------------------------------------------------------

_ORIENTATIONS = np.linspace(0.0, np.pi / 2, 5)  # flip-safe: a mirrored stripe never takes another class's angle
_FREQUENCIES = np.array([1.5, 2.5, 3.5])  # cycles per image side
_AMPLITUDE = 45.0
_COLOUR_JITTER = 12.0
_PHASE_JITTER = np.pi / 4
_NOISE = 24.0
_CHUNK = 2048


def _class_patterns(rng: np.random.Generator, num_classes: int, channels: int) -> dict[str, np.ndarray]:
    """Each class's mean colour, stripe orientation, frequency and phase."""
    return {
        "colour": rng.uniform(60.0, 195.0, (num_classes, channels)),
        "angle": rng.choice(_ORIENTATIONS, num_classes),
        "freq": rng.choice(_FREQUENCIES, num_classes),
        "phase": rng.uniform(0.0, 2 * np.pi, num_classes),
    }


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _render(rng: np.random.Generator, labels: np.ndarray, patterns: dict[str, np.ndarray], size: int) -> np.ndarray:
    """uint8 images (N, C, size, size) of the classes `labels`: colour + stripes + per-image shifts + noise."""
    channels = patterns["colour"].shape[1]
    out = np.empty((len(labels), channels, size, size), dtype=np.uint8)
    ii, jj = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    for a in range(0, len(labels), _CHUNK):
        lab = labels[a : a + _CHUNK]
        n = len(lab)
        angle, k = patterns["angle"][lab], 2 * np.pi * patterns["freq"][lab] / size
        phase = patterns["phase"][lab] + rng.uniform(-_PHASE_JITTER, _PHASE_JITTER, n)
        proj = (k * np.cos(angle))[:, None, None] * ii + (k * np.sin(angle))[:, None, None] * jj
        wave = np.sin(proj + phase[:, None, None]).astype(np.float32)  # (n, size, size)
        colour = (patterns["colour"][lab] + rng.normal(0.0, _COLOUR_JITTER, (n, channels))).astype(np.float32)
        x = colour[:, :, None, None] + _AMPLITUDE * wave[:, None]
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(_NOISE)
        out[a : a + n] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


def fake_images(name: str, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The learnable images of an image set: x_train, y_train, x_test, y_test, images (N, C, H, W) uint8."""
    channels, size, num_classes = IMAGE_SPECS[name]
    patterns = _class_patterns(_rng(seed, _MODEL), num_classes, channels)
    out = {}
    for split, n, stream in (("train", n_train, _TRAIN), ("test", n_test, _TEST)):
        rng = _rng(seed, stream)
        y = _balanced_labels(rng, n, num_classes)
        out[f"x_{split}"], out[f"y_{split}"] = _render(rng, y, patterns, size), y
    return out


# --- learnable segmentation (VOC) ----------------------------------------------------------------


def _voc_example(rng: np.random.Generator, patterns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (H, W, 3) with 1..3 class-coloured objects on a grey background, and its mask with void bands."""
    h, w = int(rng.integers(56, 97)), int(rng.integers(72, 113))
    ii, jj = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    grey = rng.uniform(95.0, 160.0) + rng.normal(0.0, 8.0, 3)
    tilt = rng.normal(0.0, 0.15, 2)  # a gentle brightness gradient
    img = grey[None, None, :] + (tilt[0] * (ii - h / 2) + tilt[1] * (jj - w / 2))[:, :, None]
    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, VOC_CLASSES))
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.15, 0.35) * h, rng.uniform(0.15, 0.35) * w
        if rng.random() < 0.5:
            inside = ((ii - cy) / ry) ** 2 + ((jj - cx) / rx) ** 2 <= 1.0
        else:
            inside = (np.abs(ii - cy) <= ry) & (np.abs(jj - cx) <= rx)
        k = 2 * np.pi * patterns["freq"][cls] / 32.0
        angle = patterns["angle"][cls]
        wave = np.sin(k * (np.cos(angle) * ii + np.sin(angle) * jj) + rng.uniform(0, 2 * np.pi))
        texture = patterns["colour"][cls][None, None, :] + 25.0 * wave[:, :, None]
        img[inside] = texture[inside]
        mask[inside] = cls
    img += rng.normal(0.0, 10.0, img.shape)
    # The release's void band: 255 wherever a 3x3 neighbourhood holds two labels (object outlines, both sides).
    padded = np.pad(mask, 1, mode="edge")
    edge = np.zeros_like(mask, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            edge |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != mask
    mask[edge] = 255
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def _saturated_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` RGB colours (0..255) of distinct hues, saturated enough to stand apart from the grey background."""
    hue = (rng.permutation(n) + rng.uniform(-0.2, 0.2, n)) / n
    sat, val = rng.uniform(0.55, 0.95, n), rng.uniform(0.6, 0.9, n)
    k = (np.array([5.0, 3.0, 1.0])[None, :] + hue[:, None] * 6) % 6  # HSV to RGB
    rgb = val[:, None] - (val * sat)[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    return 255.0 * rgb


VocExamples = dict[str, tuple[np.ndarray, np.ndarray]]  # id -> (RGB image (H, W, 3), class mask (H, W)), uint8


def fake_voc_examples(n_train: int, n_test: int, seed: int = 0) -> tuple[VocExamples, list[str], list[str]]:
    """(examples id -> (image, mask), train ids, val ids) of the fake VOC release; ids look like the release's."""
    rng = _rng(seed, _MODEL)
    patterns = _class_patterns(rng, VOC_CLASSES, 3)
    patterns["colour"] = _saturated_colours(rng, VOC_CLASSES)
    examples: VocExamples = {}
    ids = {}
    for split, n, stream, start in (("train", n_train, _TRAIN, 0), ("val", n_test, _TEST, n_train)):
        rng = _rng(seed, stream)
        ids[split] = [f"2012_{start + k:06d}" for k in range(n)]
        for name in ids[split]:
            examples[name] = _voc_example(rng, patterns)
    return examples, ids["train"], ids["val"]


# --- learnable text ------------------------------------------------------------------------------

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_SUCCESSOR_WEIGHTS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
_P_CHAIN = 0.85  # else a Zipf-distributed random word
_P_END = 1 / 12  # sentence end after each word (past the third)
_P_UNK, _P_NUMBER, _P_COMMA = 0.02, 0.02, 0.05
_BLOCK = 8192


def _words(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct lowercase pseudo-words of 2 or 3 syllables."""
    words: list[str] = []
    seen = set()
    while len(words) < n:
        w = "".join(rng.choice(_SYLLABLES, int(rng.integers(2, 4))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class _Grammar:
    """A Markov chain over NWORDS words: each word has 6 likely successors, with a Zipf background."""

    def __init__(self, seed: int):
        rng = _rng(seed, _MODEL)
        self.words = _words(rng, NWORDS)
        zipf = 1.0 / (np.arange(NWORDS) + 2.0)
        self.unigram = zipf / zipf.sum()
        n_successors = len(_SUCCESSOR_WEIGHTS)
        self.successors = [rng.choice(NWORDS, n_successors, replace=False, p=self.unigram).tolist() for _ in range(NWORDS)]
        self.starters = rng.choice(NWORDS, 20, replace=False).tolist()

    def sentences(self, rng: np.random.Generator) -> Iterator[list[int]]:
        """Word ids of one sentence after another, forever."""
        slot, rand, chain, end, start = [], [], [], [], []
        i = _BLOCK
        while True:
            sentence: list[int] = []
            while True:
                if i == _BLOCK:  # draw the next block of random choices at once
                    slot = rng.choice(len(_SUCCESSOR_WEIGHTS), _BLOCK, p=_SUCCESSOR_WEIGHTS).tolist()
                    rand = rng.choice(NWORDS, _BLOCK, p=self.unigram).tolist()
                    chain = (rng.random(_BLOCK) < _P_CHAIN).tolist()
                    end = (rng.random(_BLOCK) < _P_END).tolist()
                    start = rng.choice(self.starters, _BLOCK).tolist()
                    i = 0
                if not sentence:
                    sentence.append(start[i])
                elif len(sentence) >= 3 and end[i]:
                    i += 1
                    break
                else:
                    sentence.append(self.successors[sentence[-1]][slot[i]] if chain[i] else rand[i])
                i += 1
            yield sentence


def _decorations(rng: np.random.Generator) -> Iterator[float]:
    """Uniform draws for the surface choices (unknown words, numbers, commas, layout), a block at a time."""
    while True:
        yield from rng.random(_BLOCK).tolist()


def _ptb_lines(grammar: _Grammar, rng: np.random.Generator) -> Iterator[list[str]]:
    """PTB: one lowercase sentence a line, `N` for numbers, rare words as `<unk>`."""
    u = _decorations(rng)
    for sentence in grammar.sentences(rng):
        line = []
        for w in sentence:
            r = next(u)
            line.append("<unk>" if r < _P_UNK else "N" if r < _P_UNK + _P_NUMBER else grammar.words[w])
        yield line


def _wikitext_lines(grammar: _Grammar, rng: np.random.Generator) -> Iterator[list[str]]:
    """WikiText: " = Heading = " lines, blank lines, paragraphs of sentences ending in "." with "," and `<unk>`."""
    u = _decorations(rng)
    sentences = grammar.sentences(rng)
    while True:
        title = next(sentences)[:3]
        yield []
        yield ["=", *(grammar.words[w].capitalize() for w in title), "="]
        yield []
        for _ in range(2 + int(next(u) * 7)):  # paragraphs under the heading
            para: list[str] = []
            for _ in range(2 + int(next(u) * 5)):
                sentence = next(sentences)
                for k, w in enumerate(sentence):
                    r = next(u)
                    word = grammar.words[w]
                    para.append("<unk>" if r < _P_UNK else word.capitalize() if k == 0 else word)
                    if 0 < k < len(sentence) - 1 and next(u) < _P_COMMA:
                        para.append(",")
                para.append(".")
            yield para
            yield []


def _text(lines: Iterator[list[str]], n_tokens: int) -> str:
    """The first lines of `lines`, the last one cut, so that they hold exactly `n_tokens` tokens (words + <eos>)."""
    if n_tokens < 1:
        raise ValueError(f"a text split needs at least one token, got {n_tokens}")
    out, left = [], n_tokens
    while left > 0:
        line = next(lines)[: left - 1]
        out.append(" " + " ".join(line) + " \n" if line else " \n")
        left -= len(line) + 1
    return "".join(out)


def fake_text(name: str, n_train: int, n_test: int, seed: int = 0) -> dict[str, str]:
    """The train, valid and test text of a fake WikiText-2 or PTB; valid has n_test tokens."""
    grammar = _Grammar(seed)
    lines = _wikitext_lines if name == "wikitext2" else _ptb_lines
    return {
        split: _text(lines(grammar, _rng(seed, stream)), n)
        for split, n, stream in (("train", n_train, _TRAIN), ("valid", n_test, _VALID), ("test", n_test, _TEST))
    }


# --- the releases --------------------------------------------------------------------------------


def write_fake_release(name: str, root: str | os.PathLike, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Write a small learnable release of `name` in its real format under `root`; return its `datasets.<name>` options.

    `n_train`, `n_test`: images (VOC: the ids of `train.txt` and `val.txt`), or tokens for
    wikitext2 and ptb. The options returned (`root`, `download: false`, and
    `verify_checksums: false` for cifar10, cifar100, svhn) prepare it with
    `batchlab.data.prepare.prepare_dataset`. These data only exercise the pipeline.
    """
    if name not in NAMES:
        raise ValueError(f"no fake release of {name!r}; choose one of {', '.join(NAMES)}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    root = Path(root)
    options: dict = {"root": str(root), "download": False}
    if name in IMAGE_SPECS:
        d = fake_images(name, n_train, n_test, seed)
        if name == "mnist":
            write_mnist_release(root, d["x_train"][:, 0], d["y_train"], d["x_test"][:, 0], d["y_test"])
        elif name == "svhn":
            write_svhn_release(root, d["x_train"], d["y_train"], d["x_test"], d["y_test"])
            options["verify_checksums"] = False
        else:
            write_cifar_release(name, root, d["x_train"], d["y_train"], d["x_test"], d["y_test"])
            options["verify_checksums"] = False
    elif name == "voc":
        write_voc_release(root, *fake_voc_examples(n_train, n_test, seed), quality=90)
    else:
        text = fake_text(name, n_train, n_test, seed)
        write_text_release(name, root, text["train"], text["test"], text["valid"])
    return options


# Sizes of a smoke run's fake releases: (train, test) images, VOC ids or text tokens.
SMOKE_SIZES = {"cifar10": (128, 64), "cifar100": (128, 64), "mnist": (128, 64), "svhn": (128, 64),
               "voc": (32, 16), "wikitext2": (6_000, 1_500), "ptb": (6_000, 1_500)}


def write_smoke_releases(datasets: dict, seed: int = 0) -> list[str]:
    """A fake release (SMOKE_SIZES) for every data set of a config's `datasets` whose root does not exist yet.

    A smoke variant of a paper preset points its roots at folders this fills, so
    `make smoke` runs the preset end to end on a machine without the real data. A root that
    exists is left alone: real data are never overwritten. Returns the names written.
    """
    written = []
    for name, options in datasets.items():
        if name in SMOKE_SIZES and "root" in options and not Path(options["root"]).exists():
            write_fake_release(name, options["root"], *SMOKE_SIZES[name], seed=seed)
            written.append(name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchlab.data.fake_release",
        description="Write a small learnable fake release of a data set in its real format (pipeline checks only).",
    )
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("root", help="folder to write the release into (the data set's `root` option)")
    parser.add_argument("--n-train", type=int, required=True, help="train images (VOC: train ids; text: tokens)")
    parser.add_argument("--n-test", type=int, required=True, help="test images (VOC: val ids; text: tokens)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    options = write_fake_release(args.name, args.root, args.n_train, args.n_test, args.seed)
    print(f"fake {args.name} written to {args.root}; prepare it with datasets.{args.name}: {options}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
