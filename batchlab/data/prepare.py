"""Prepare a configured data set into the npz format, by name."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def prepare_dataset(name: str, out_path: str | os.PathLike, options: dict) -> None:
    """Prepare data set `name` with its config options (`datasets.<name>`) into `out_path`."""
    if name == "mnist1d":
        from batchlab.data.mnist1d import prepare_mnist1d

        log.info("generating MNIST-1D with %s", options)
        prepare_mnist1d(out_path, **options)
    elif name in ("cifar10", "cifar100"):
        from batchlab.data.cifar import prepare_cifar

        log.info("reading %s from %s", name, options["root"])
        prepare_cifar(name, options["root"], out_path, download=options.get("download", False))
    else:
        raise ValueError(f"unknown dataset {name!r}; choose mnist1d, cifar10 or cifar100")
