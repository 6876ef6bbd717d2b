"""dataset_info: the shape and size of every data set, from its config options alone."""

from __future__ import annotations

import dataclasses

import pytest

from batchlab.data import TASKS, load_prepared
from batchlab.data.catalog import INPUTS, NAMES, DatasetInfo, dataset_info
from batchlab.data.mnist1d import prepare_mnist1d
from batchlab.data.prepare import DATASETS, prepare_dataset
from batchlab.data.shapes import prepare_shapes


def test_known_releases_without_any_file():
    assert dataset_info("mnist", {"root": "/nowhere"}) == DatasetInfo("classification", "image", (1, 28, 28), 10, 60000, 10000)
    assert dataset_info("cifar10", {"root": "x"}) == DatasetInfo("classification", "image", (3, 32, 32), 10, 50000, 10000)
    assert dataset_info("cifar100", {}).num_classes == 100
    assert dataset_info("svhn", {"root": "x"}) == DatasetInfo("classification", "image", (3, 32, 32), 10, 73257, 26032)
    assert dataset_info("voc", {"root": "x"}) == DatasetInfo("segmentation", "segmentation", (3, 64, 64), 21, 1464, 1449)
    assert dataset_info("voc", {"size": 32, "year": "2012"}).input_shape == (3, 32, 32)


def test_options_change_the_sizes():
    assert dataset_info("svhn", {"n_train": 50000}).n_train == 50000
    assert dataset_info("svhn", {"n_train": 10**6}).n_train == 73257  # a cap, not a request
    assert dataset_info("svhn", {"n_train": None}).n_train == 73257
    m = dataset_info("mnist1d", {"n_train": 4000, "n_test": 1000, "seed": 42})
    assert m == DatasetInfo("classification", "signal", (40,), 10, 4000, 1000)
    assert dataset_info("mnist1d", {}).n_train == 4000
    s = dataset_info("shapes", {"n_train": 10, "n_test": 3, "size": 16})
    assert s == DatasetInfo("segmentation", "segmentation", (3, 16, 16), 4, 10, 3)


def test_text_releases_windows_and_vocabulary():
    wt2 = dataset_info("wikitext2", {"root": "x", "bptt": 35})
    assert wt2 == DatasetInfo("language_model", "tokens", (35,), 33278, 2088628 // 35, 245569 // 35)
    assert (wt2.n_train, wt2.n_test) == (59675, 7016)
    assert dataset_info("wikitext2", {"bptt": 35, "max_vocab": 10000}).num_classes == 10000
    assert dataset_info("wikitext2", {"max_vocab": 10**6}).num_classes == 33278
    ptb = dataset_info("ptb", {"root": "x", "bptt": 70})
    assert ptb == DatasetInfo("language_model", "tokens", (70,), 10000, (929589 - 1) // 70, (82430 - 1) // 70)
    with pytest.raises(ValueError, match="max_vocab must be at least 2"):
        dataset_info("ptb", {"max_vocab": 1})


def test_every_name_gives_a_valid_info():
    for name in NAMES:
        if name == "pydoc_text":
            continue  # measured in tests/test_text.py, against its prepared file
        info = dataset_info(name, {})
        assert info.task in TASKS and info.inputs in INPUTS
        assert info.n_train > 0 and info.n_test > 0 and info.num_classes > 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset_info("mnist", {}).n_train = 5


def test_bad_names_and_options():
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; choose one of mnist1d, cifar10, .*pydoc_text"):
        dataset_info("imagenet", {})
    with pytest.raises(ValueError, match="'n_train' must be a positive integer"):
        dataset_info("shapes", {"n_train": 0})
    with pytest.raises(ValueError, match="'bptt' must be a positive integer"):
        dataset_info("wikitext2", {"bptt": 0})
    with pytest.raises(ValueError, match="known for year 2012 only"):
        dataset_info("voc", {"year": "2011"})


def test_generated_sets_match_their_prepared_files(tmp_path):
    opts = {"n_train": 12, "n_test": 5, "size": 16, "seed": 1}
    prepare_shapes(tmp_path / "s.npz", **opts)
    ds, info = load_prepared(tmp_path / "s.npz"), dataset_info("shapes", opts)
    assert (ds.task, ds.input_shape, ds.num_classes, ds.n_train, len(ds.x_test)) == (
        info.task, info.input_shape, info.num_classes, info.n_train, info.n_test,
    )  # fmt: skip
    opts = {"n_train": 30, "n_test": 10, "seed": 3}
    prepare_mnist1d(tmp_path / "m.npz", **opts)
    ds, info = load_prepared(tmp_path / "m.npz"), dataset_info("mnist1d", opts)
    assert (ds.input_shape, ds.num_classes, ds.n_train, len(ds.x_test)) == (info.input_shape, 10, 30, 10)


def test_the_dispatcher_knows_the_same_names(tmp_path):
    assert DATASETS == NAMES
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; choose one of mnist1d, .*shapes, wikitext2, ptb, pydoc_text"):
        prepare_dataset("imagenet", tmp_path / "i.npz", {})
    with pytest.raises(ValueError, match="dataset svhn needs a 'root' option"):
        prepare_dataset("svhn", tmp_path / "s.npz", {"n_train": 5})
