"""What each configured data set looks like, known before any file is read or downloaded.

`dataset_info(name, options)` gives the task, the kind of input a model must take, the
input shape, the number of classes (the vocabulary size for text) and the train/test
sizes, from the config options of `datasets.<name>` alone. The config check and cost
estimates use it before the data exist, so the real releases' sizes are written here:

- MNIST (LeCun et al. 1998): 60000 / 10000 images (1, 28, 28), 10 classes;
- CIFAR-10 / CIFAR-100 (Krizhevsky 2009): 50000 / 10000 images (3, 32, 32);
- SVHN cropped digits (Netzer et al. 2011): 73257 / 26032 images (3, 32, 32), the train set
  capped at `n_train` (Golmant et al. 2018 keep 50000);
- Pascal VOC 2012 segmentation: 1464 `train` / 1449 `val` images, resized to (3, size, size);
- WikiText-2 (Merity et al. 2016): 33278 words in the vocabulary (with `<eos>`), 2,088,628
  train and 245,569 test tokens counted as PyTorch's word_language_model example does
  (`<eos>` at each line end);
- Penn Treebank (Mikolov's release): 10000 words (with `<eos>` and `<unk>`), 929,589 train
  and 82,430 test tokens with `<eos>` (887,521 and 78,669 without);
- a language model's examples are the non-overlapping windows of `bptt` tokens whose
  next-token targets fit in the stream: (tokens - 1) // bptt (batchlab.data.text.n_windows);
- mnist1d and shapes are generated, so their sizes are their options; the embedded text
  corpus `pydoc_text` ships with Python and is measured (once per process, 1 to 3 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchlab.data import TASKS  # noqa: F401  (re-exported: the tasks a data set can serve)
from batchlab.data.text import PYDOC_MAX_VOCAB, n_windows, pydoc_text_counts

INPUTS = ("signal", "image", "segmentation", "tokens")

MNIST_SIZES = (60_000, 10_000)
CIFAR_SIZES = (50_000, 10_000)
SVHN_SIZES = (73_257, 26_032)
VOC_SIZES = {"2012": (1_464, 1_449)}  # ImageSets/Segmentation/{train,val}.txt
VOC_CLASSES = 21  # background + 20 object classes
# (vocabulary with <eos>, train tokens, test tokens), every line ending in <eos>.
TEXT_SIZES = {"wikitext2": (33_278, 2_088_628, 245_569), "ptb": (10_000, 929_589, 82_430)}

NAMES = ("mnist1d", "cifar10", "cifar100", "mnist", "svhn", "voc", "shapes", "wikitext2", "ptb", "pydoc_text")


@dataclass(frozen=True)
class DatasetInfo:
    """The shape of a prepared data set; `input_shape` has no batch dimension."""

    task: str  # one of TASKS
    inputs: str  # one of INPUTS: the kind of data a model must take
    input_shape: tuple[int, ...]
    num_classes: int  # vocabulary size for a language model
    n_train: int
    n_test: int


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


def _text(name: str, options: dict) -> DatasetInfo:
    bptt = _positive(options, "bptt", 35)
    if name == "pydoc_text":
        vocab, n_train_tokens, n_test_tokens = pydoc_text_counts(options.get("max_vocab", PYDOC_MAX_VOCAB))
    else:
        full, n_train_tokens, n_test_tokens = TEXT_SIZES[name]
        vocab = capped_vocab(full, options.get("max_vocab"))
    return DatasetInfo(
        task="language_model",
        inputs="tokens",
        input_shape=(bptt,),
        num_classes=vocab,
        n_train=n_windows(n_train_tokens, bptt),
        n_test=n_windows(n_test_tokens, bptt),
    )


def dataset_info(name: str, options: dict | None = None) -> DatasetInfo:
    """The DatasetInfo of data set `name` prepared with its config options (`datasets.<name>`)."""
    options = options or {}
    if name == "mnist1d":
        n_train, n_test = _positive(options, "n_train", 4000), _positive(options, "n_test", 1000)
        return DatasetInfo("classification", "signal", (40,), 10, n_train, n_test)  # the package's signal length
    if name in ("cifar10", "cifar100"):
        return DatasetInfo("classification", "image", (3, 32, 32), 10 if name == "cifar10" else 100, *CIFAR_SIZES)
    if name == "mnist":
        return DatasetInfo("classification", "image", (1, 28, 28), 10, *MNIST_SIZES)
    if name == "svhn":
        n_train = SVHN_SIZES[0]
        if options.get("n_train") is not None:
            n_train = min(n_train, _positive(options, "n_train", None))
        return DatasetInfo("classification", "image", (3, 32, 32), 10, n_train, SVHN_SIZES[1])
    if name == "voc":
        year = str(options.get("year", "2012"))
        if year not in VOC_SIZES:
            raise ValueError(f"VOC segmentation sizes are known for year {', '.join(VOC_SIZES)} only, got {year!r}")
        size = _positive(options, "size", 64)
        return DatasetInfo("segmentation", "segmentation", (3, size, size), VOC_CLASSES, *VOC_SIZES[year])
    if name == "shapes":
        size = _positive(options, "size", 32)
        n_train, n_test = _positive(options, "n_train", 2000), _positive(options, "n_test", 500)
        return DatasetInfo("segmentation", "segmentation", (3, size, size), 4, n_train, n_test)
    if name in ("wikitext2", "ptb", "pydoc_text"):
        return _text(name, options)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
