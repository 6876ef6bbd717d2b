"""What each configured data set looks like, known before it is prepared.

`dataset_info(name, options)` gives the task, the kind of input a model must take, the
input shape, the number of classes (the vocabulary size for text) and the train/test
sizes of data set `name` under its config options (`datasets.<name>`). The config check
and the cost estimates call it before anything is prepared, so the sizes come from

- the files under the configured `root`, where the release is there: measured cheaply
  (headers, label counts, token counts; batchlab.data.measure), so a smoke run's fake
  release or a cut-down copy is checked and estimated at its real size;
- else the official releases' sizes, written here (the files may be downloaded later):
  - MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017): 60000 / 10000
    images (1, 28, 28), 10 classes;
  - CIFAR-10 / CIFAR-100 (Krizhevsky 2009): 50000 / 10000 images (3, 32, 32);
  - SVHN cropped digits (Netzer et al. 2011): 73257 / 26032 images (3, 32, 32);
  - Pascal VOC 2012 segmentation: 1464 `train` / 1449 `val` images;
  - WikiText-2 (Merity et al. 2016): 33278 words in the vocabulary (with `<eos>`),
    2,088,628 train, 217,646 validation and 245,569 test tokens counted as PyTorch's
    word_language_model example does (`<eos>` at each line end);
  - Penn Treebank (Mikolov's release): 10000 words (with `<eos>` and `<unk>`), 929,589
    train, 73,760 validation and 82,430 test tokens with `<eos>` (887,521, 70,390 and
    78,669 without);
- the options themselves for the generated sets mnist1d and shapes; the embedded text
  corpus `pydoc_text` ships with Python and is measured (once per process, 1 to 3 s).

`DatasetInfo.source` says which ("measured", "official" or "options") and `sizes_note`
says it in words. Options then shape the sizes: SVHN's train set is capped at `n_train`
(Golmant et al. 2018 keep 50000), VOC images are resized to (3, size, size), a corpus's
vocabulary is capped at `max_vocab`, and a language model's examples are the
non-overlapping windows of `bptt` tokens whose next-token targets fit in the stream:
(tokens - 1) // bptt (batchlab.data.text.n_windows). A relative root is read from the
current directory, snakemake's working directory. No torch: the Snakefile calls this.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from typing import Any

from batchlab.data import TASKS  # noqa: F401  (re-exported: the tasks a data set can serve)
from batchlab.data.measure import image_sizes, text_counts, text_valid_tokens, voc_sizes
from batchlab.data.mnist import FASHION_MNIST_ROOT
from batchlab.data.text import PYDOC_MAX_VOCAB, n_windows, pydoc_text_counts

INPUTS = ("signal", "image", "segmentation", "tokens")
SOURCES = ("measured", "official", "options")  # where a DatasetInfo's sizes come from

MNIST_SIZES = (60_000, 10_000)
CIFAR_SIZES = (50_000, 10_000)
SVHN_SIZES = (73_257, 26_032)
VOC_SIZES = {"2012": (1_464, 1_449)}  # ImageSets/Segmentation/{train,val}.txt
VOC_CLASSES = 21  # background + 20 object classes
# (vocabulary with <eos>, train tokens, test tokens), every line ending in <eos>.
TEXT_SIZES = {"wikitext2": (33_278, 2_088_628, 245_569), "ptb": (10_000, 929_589, 82_430)}
TEXT_VALID_TOKENS = {"wikitext2": 217_646, "ptb": 73_760}  # the releases' validation files, <eos> counted
# image classification releases: (input shape, classes, official train/test sizes)
IMAGE_SETS = {
    "cifar10": ((3, 32, 32), 10, CIFAR_SIZES),
    "cifar100": ((3, 32, 32), 100, CIFAR_SIZES),
    "mnist": ((1, 28, 28), 10, MNIST_SIZES),
    "fashion_mnist": ((1, 28, 28), 10, MNIST_SIZES),
    "svhn": ((3, 32, 32), 10, SVHN_SIZES),
}
DEFAULT_ROOTS = {"fashion_mnist": FASHION_MNIST_ROOT}  # where a data set is read when its options name no root

NAMES = ("mnist1d", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "voc", "shapes", "wikitext2", "ptb",
         "pydoc_text")


@dataclass(frozen=True)
class DatasetInfo:
    """The shape of a prepared data set; `input_shape` has no batch dimension."""

    task: str  # one of TASKS
    inputs: str  # one of INPUTS: the kind of data a model must take
    input_shape: tuple[int, ...]
    num_classes: int  # vocabulary size for a language model
    n_train: int
    n_test: int
    source: str = "options"  # one of SOURCES: where the sizes (and a corpus's vocabulary) come from
    root: str | None = None  # the folder measured, or looked in for the files
    n_valid: int | None = None  # validation examples; None: the data set (as found) has no validation split

    @property
    def measured(self) -> bool:
        return self.source == "measured"

    @property
    def sizes_note(self) -> str:
        """Where the sizes come from, in words, for a config check or an estimate to print."""
        if self.source == "measured":
            return f"sizes measured from the files under {self.root}"
        if self.source == "official":
            where = f"files not found under {self.root}" if self.root is not None else "no root configured"
            return f"official sizes ({where})"
        return "sizes set by the options"


def capped_vocab(full: int, max_vocab: int | None) -> int:
    """Vocabulary size once `max_vocab` keeps the most frequent words (and `<unk>`)."""
    if max_vocab is None:
        return full
    if max_vocab < 2:
        raise ValueError(f"max_vocab must be at least 2 (a word and <unk>), got {max_vocab}")
    return min(full, max_vocab)


def _positive(options: dict, key: str, default: Any) -> int:
    value = options.get(key, default)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"option {key!r} must be a positive integer, got {value!r}")
    return value


def _root(name: str, options: dict) -> str | None:
    root = options.get("root", DEFAULT_ROOTS.get(name))
    return None if root is None else str(root)


def _found(root: str | None, measure, official: tuple) -> tuple[tuple, str]:
    """(sizes, source): `measure(root)` where the files are there, else the official sizes."""
    measured = measure(root) if root is not None else None
    return (measured, "measured") if measured is not None else (official, "official")


def _text(name: str, options: dict) -> DatasetInfo:
    bptt = _positive(options, "bptt", 35)
    n_valid_tokens = None  # the embedded corpus has no validation split (batchlab.data.text)
    if name == "pydoc_text":
        vocab, n_train_tokens, n_test_tokens = pydoc_text_counts(options.get("max_vocab", PYDOC_MAX_VOCAB))
        source, root = "measured", sysconfig.get_paths()["stdlib"]
    else:
        root = _root(name, options)
        (full, n_train_tokens, n_test_tokens), source = _found(root, lambda r: text_counts(name, r), TEXT_SIZES[name])
        vocab = capped_vocab(full, options.get("max_vocab"))
        n_valid_tokens = text_valid_tokens(name, root) if source == "measured" else TEXT_VALID_TOKENS[name]
    return DatasetInfo(
        task="language_model",
        inputs="tokens",
        input_shape=(bptt,),
        num_classes=vocab,
        n_train=n_windows(n_train_tokens, bptt),
        n_test=n_windows(n_test_tokens, bptt),
        source=source,
        root=root,
        n_valid=(n_windows(n_valid_tokens, bptt) or None) if n_valid_tokens is not None else None,  # as prepared
    )


def _images(name: str, options: dict) -> DatasetInfo:
    shape, num_classes, official = IMAGE_SETS[name]
    root = _root(name, options)
    (n_train, n_test), source = _found(root, lambda r: image_sizes(name, r), official)
    if name == "svhn" and options.get("n_train") is not None:
        n_train = min(n_train, _positive(options, "n_train", None))
    return DatasetInfo("classification", "image", shape, num_classes, n_train, n_test, source, root)


def dataset_info(name: str, options: dict | None = None) -> DatasetInfo:
    """The DatasetInfo of data set `name` prepared with its config options (`datasets.<name>`)."""
    options = options or {}
    if name == "mnist1d":
        n_train, n_test = _positive(options, "n_train", 4000), _positive(options, "n_test", 1000)
        return DatasetInfo("classification", "signal", (40,), 10, n_train, n_test)  # the package's signal length
    if name in IMAGE_SETS:
        return _images(name, options)
    if name == "voc":
        year = str(options.get("year", "2012"))
        if year not in VOC_SIZES:
            raise ValueError(f"VOC segmentation sizes are known for year {', '.join(VOC_SIZES)} only, got {year!r}")
        size = _positive(options, "size", 64)
        root = _root(name, options)
        sizes, source = _found(root, lambda r: voc_sizes(r, year), VOC_SIZES[year])
        return DatasetInfo("segmentation", "segmentation", (3, size, size), VOC_CLASSES, *sizes, source, root)
    if name == "shapes":
        size = _positive(options, "size", 32)
        n_train, n_test = _positive(options, "n_train", 2000), _positive(options, "n_test", 500)
        return DatasetInfo("segmentation", "segmentation", (3, size, size), 4, n_train, n_test)
    if name in ("wikitext2", "ptb", "pydoc_text"):
        return _text(name, options)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
