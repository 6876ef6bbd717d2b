"""Prepare a configured data set into the npz format, by name.

`prepare_dataset(name, out_path, options)` passes the config's `datasets.<name>` options
to the data set's own `prepare_*` function. The options of each name:

- mnist1d: n_train, n_test, seed            - shapes: n_train, n_test, size, seed
- cifar10, cifar100: root, download, verify_checksums, augment, normalize
- mnist, fashion_mnist: root, download, augment, normalize
- svhn: root, download, n_train, verify_checksums, augment, normalize
- voc: root, year, size, download           - wikitext2, ptb: root, bptt, max_vocab
- pydoc_text (the embedded corpus): bptt, max_vocab

`verify_checksums` (default true) checks the files' md5 against the official release;
`false` only checks that they exist, for the fake releases of `batchlab.data.fake_release`
(smoke runs), never for real data. The IDX files of MNIST and Fashion-MNIST have no md5 to
check. `augment` ("none", "crop_flip") and `normalize` ("standardize", "scale") of the image
sets: see batchlab.data.images; each data set's own defaults apply where they are not set
(crop_flip for CIFAR, none for the others; standardize for all). fashion_mnist's `root`
defaults to Debian's folder, batchlab.data.mnist.FASHION_MNIST_ROOT.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

DATASETS = ("mnist1d", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "voc", "shapes", "wikitext2", "ptb",
            "pydoc_text")
IMAGE_SWITCHES = ("augment", "normalize")  # options of every image classification set (batchlab.data.images)


def _pick(options: dict, *keys: str) -> dict[str, Any]:
    """The options among `keys` that the config sets; the prepare function's defaults fill the rest."""
    return {k: options[k] for k in keys if options.get(k) is not None}


def prepare_dataset(name: str, out_path: str | os.PathLike, options: dict) -> None:
    """Prepare data set `name` with its config options (`datasets.<name>`) into `out_path`."""
    options = options or {}
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name in ("cifar10", "cifar100", "mnist", "svhn", "voc", "wikitext2", "ptb") and "root" not in options:
        raise ValueError(f"dataset {name} needs a 'root' option: the folder that holds (or receives) its files")
    if name == "mnist1d":
        from batchlab.data.mnist1d import prepare_mnist1d

        log.info("generating MNIST-1D with %s", options)
        prepare_mnist1d(out_path, **_pick(options, "n_train", "n_test", "seed"))
    elif name in ("cifar10", "cifar100"):
        from batchlab.data.cifar import prepare_cifar

        log.info("reading %s from %s", name, options["root"])
        prepare_cifar(
            name, options["root"], out_path, download=options.get("download", False),
            **_pick(options, "verify_checksums", *IMAGE_SWITCHES),
        )
    elif name in ("mnist", "fashion_mnist"):
        from batchlab.data.mnist import FASHION_MNIST_ROOT, prepare_mnist

        root = options.get("root", FASHION_MNIST_ROOT)  # mnist has a root: checked above
        log.info("reading %s from %s", name, root)
        prepare_mnist(root, out_path, download=options.get("download", False), name=name, **_pick(options, *IMAGE_SWITCHES))
    elif name == "svhn":
        from batchlab.data.svhn import prepare_svhn

        log.info("reading SVHN from %s", options["root"])
        prepare_svhn(
            options["root"],
            out_path,
            download=options.get("download", False),
            n_train=options.get("n_train"),
            **_pick(options, "verify_checksums", *IMAGE_SWITCHES),
        )
    elif name == "voc":
        from batchlab.data.voc import prepare_voc

        log.info("reading Pascal VOC from %s", options["root"])
        prepare_voc(options["root"], out_path, download=options.get("download", False), **_pick(options, "size", "year"))
    elif name == "shapes":
        from batchlab.data.shapes import prepare_shapes

        log.info("generating shapes with %s", options)
        prepare_shapes(out_path, **_pick(options, "n_train", "n_test", "size", "seed"))
    elif name in ("wikitext2", "ptb"):
        from batchlab.data.text import prepare_ptb, prepare_wikitext2

        log.info("reading %s from %s", name, options["root"])
        prepare = prepare_wikitext2 if name == "wikitext2" else prepare_ptb
        prepare(options["root"], out_path, bptt=options.get("bptt", 35), max_vocab=options.get("max_vocab"))
    else:  # pydoc_text
        from batchlab.data.text import PYDOC_MAX_VOCAB, prepare_pydoc_text

        log.info("building the embedded text corpus with %s", options)
        # max_vocab: null in the config means no cap, as in the catalog; a missing key means the default
        prepare_pydoc_text(out_path, bptt=options.get("bptt", 35), max_vocab=options.get("max_vocab", PYDOC_MAX_VOCAB))
