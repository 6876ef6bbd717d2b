"""dataset_info: the shape and size of every data set, measured from its files where they are there,
else the official releases' sizes (or, for the generated sets, the options')."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
from collections import Counter

import pytest

from batchlab.data import TASKS, load_prepared
from batchlab.data import measure
from batchlab.data.catalog import INPUTS, NAMES, SOURCES, DatasetInfo, dataset_info
from batchlab.data.fake_release import SMOKE_SIZES, fake_images, write_fake_release, write_idx_release, write_text_release
from batchlab.data.mnist1d import prepare_mnist1d
from batchlab.data.prepare import DATASETS, prepare_dataset
from batchlab.data.shapes import prepare_shapes
from batchlab.data.text import build_vocab, read_tokens
from tests.conftest import REPO

# The fake releases of a smoke run (SMOKE_SIZES: images, VOC ids or text tokens), prepared with these options beyond the root.
EXTRA_OPTIONS = {"cifar10": {}, "cifar100": {}, "mnist": {}, "svhn": {}, "voc": {"size": 16}, "wikitext2": {"bptt": 10},
                 "ptb": {"bptt": 7, "max_vocab": 50}}


def test_known_releases_without_any_file():
    nowhere, official = {"root": "/nowhere"}, dict(source="official", root="/nowhere")
    mnist = DatasetInfo("classification", "image", (1, 28, 28), 10, 60000, 10000, **official)
    assert dataset_info("mnist", nowhere) == dataset_info("fashion_mnist", nowhere) == mnist
    assert dataset_info("cifar10", nowhere) == DatasetInfo("classification", "image", (3, 32, 32), 10, 50000, 10000, **official)
    assert dataset_info("cifar100", {}).num_classes == 100
    assert dataset_info("svhn", nowhere) == DatasetInfo("classification", "image", (3, 32, 32), 10, 73257, 26032, **official)
    assert dataset_info("voc", nowhere) == DatasetInfo("segmentation", "segmentation", (3, 64, 64), 21, 1464, 1449, **official)
    assert dataset_info("voc", {"size": 32, "year": "2012"}).input_shape == (3, 32, 32)


def test_the_note_says_where_the_sizes_come_from(tmp_path):
    assert dataset_info("cifar10", {"root": "/nowhere"}).sizes_note == "official sizes (files not found under /nowhere)"
    assert not dataset_info("cifar10", {"root": "/nowhere"}).measured
    assert dataset_info("cifar100", {}).sizes_note == "official sizes (no root configured)"
    assert dataset_info("shapes", {}).sizes_note == "sizes set by the options"
    write_fake_release("mnist", tmp_path, 12, 5)
    info = dataset_info("mnist", {"root": str(tmp_path)})
    assert info.measured and info.sizes_note == f"sizes measured from the files under {tmp_path}"
    assert {dataset_info(n, {"root": "/nowhere"}).source for n in NAMES if n != "pydoc_text"} == set(SOURCES) - {"measured"}


def test_options_change_the_sizes():
    assert dataset_info("svhn", {"n_train": 50000}).n_train == 50000
    assert dataset_info("svhn", {"n_train": 10**6}).n_train == 73257  # a cap, not a request
    assert dataset_info("svhn", {"n_train": None}).n_train == 73257
    m = dataset_info("mnist1d", {"n_train": 4000, "n_test": 1000, "seed": 42})
    assert m == DatasetInfo("classification", "signal", (40,), 10, 4000, 1000, source="options")
    assert dataset_info("mnist1d", {}).n_train == 4000
    s = dataset_info("shapes", {"n_train": 10, "n_test": 3, "size": 16})
    assert s == DatasetInfo("segmentation", "segmentation", (3, 16, 16), 4, 10, 3)


def test_text_releases_windows_and_vocabulary():
    wt2 = dataset_info("wikitext2", {"root": "/nowhere", "bptt": 35})
    assert wt2 == DatasetInfo("language_model", "tokens", (35,), 33278, 2088628 // 35, 245569 // 35, "official", "/nowhere",
                              (217646 - 1) // 35)
    assert (wt2.n_train, wt2.n_valid, wt2.n_test) == (59675, 6218, 7016)
    assert dataset_info("wikitext2", {"bptt": 35, "max_vocab": 10000}).num_classes == 10000
    assert dataset_info("wikitext2", {"max_vocab": 10**6}).num_classes == 33278
    ptb = dataset_info("ptb", {"root": "/nowhere", "bptt": 70})
    assert (ptb.num_classes, ptb.n_train, ptb.n_test) == (10000, (929589 - 1) // 70, (82430 - 1) // 70)
    assert ptb.n_valid == (73760 - 1) // 70
    assert dataset_info("pydoc_text", {}).n_valid is None  # the embedded corpus has no validation split
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
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; choose one of mnist1d, cifar10, .*fashion_mnist, .*pydoc_text"):
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


# --- measured from the files under root ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXTRA_OPTIONS))
def test_a_release_under_root_is_measured_as_its_prepared_file_holds_it(tmp_path, name):
    n_train, n_test = SMOKE_SIZES[name]
    options = {**write_fake_release(name, tmp_path / name, n_train, n_test), **EXTRA_OPTIONS[name]}
    info = dataset_info(name, options)
    assert info.source == "measured" and info.root == str(tmp_path / name)
    prepare_dataset(name, tmp_path / "p.npz", options)
    ds = load_prepared(tmp_path / "p.npz")
    assert (info.task, info.input_shape, info.num_classes) == (ds.task, ds.input_shape, ds.num_classes)
    assert (info.n_train, info.n_test) == (ds.n_train, len(ds.x_test))
    if name not in ("wikitext2", "ptb"):  # text: windows of the tokens asked for, checked with the loader's count
        assert (info.n_train, info.n_test) == (n_train, n_test)


def test_fashion_mnist_is_measured_in_either_layout(tmp_path):
    d = fake_images("mnist", 14, 4)
    arrays = (d["x_train"][:, 0], d["y_train"], d["x_test"][:, 0], d["y_test"])
    write_idx_release(tmp_path / "debian", *arrays, compress=True)
    write_idx_release(tmp_path / "tv" / "FashionMNIST" / "raw", *arrays)
    for root in ("debian", "tv"):
        info = dataset_info("fashion_mnist", {"root": str(tmp_path / root)})
        assert (info.n_train, info.n_test, info.source) == (14, 4, "measured")
    assert dataset_info("mnist", {"root": str(tmp_path / "tv")}).source == "official"  # MNIST/raw, not FashionMNIST/raw


def test_svhn_cap_and_text_vocabulary_cap_apply_to_measured_sizes(tmp_path):
    write_fake_release("svhn", tmp_path / "svhn", 19, 8)
    assert dataset_info("svhn", {"root": str(tmp_path / "svhn"), "n_train": 10}).n_train == 10
    assert dataset_info("svhn", {"root": str(tmp_path / "svhn"), "n_train": 100}).n_train == 19
    write_fake_release("ptb", tmp_path / "ptb", 2000, 300)
    full = dataset_info("ptb", {"root": str(tmp_path / "ptb")}).num_classes
    assert full == len(build_vocab(Counter(read_tokens(tmp_path / "ptb" / "ptb.train.txt"))))
    assert dataset_info("ptb", {"root": str(tmp_path / "ptb"), "max_vocab": 20}).num_classes == 20
    assert dataset_info("ptb", {"root": str(tmp_path / "ptb"), "max_vocab": 10**6}).num_classes == full


def test_token_counts_follow_the_loader_on_awkward_text(tmp_path):
    # no final newline, Windows line ends, a blank line, <unk> and <eos> written in the text
    write_text_release("wikitext2", tmp_path, train="a b\r\nc <unk> a\n\n <eos> d  e", test="x y\n\nz")
    train, test = read_tokens(tmp_path / "wiki.train.tokens"), read_tokens(tmp_path / "wiki.test.tokens")
    vocab, n_train, n_test = measure.text_counts("wikitext2", tmp_path)
    assert (vocab, n_train, n_test) == (len(build_vocab(Counter(train))), len(train), len(test))
    assert (n_train, n_test) == (3 + 4 + 1 + 4, 3 + 1 + 2)  # each line: its words and <eos>


def test_a_partial_release_falls_back_to_the_official_sizes(tmp_path):
    write_fake_release("cifar10", tmp_path, 10, 5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    info = dataset_info("cifar10", {"root": str(tmp_path)})
    assert (info.n_train, info.source) == (50000, "official")
    assert info.sizes_note == f"official sizes (files not found under {tmp_path})"


def test_a_relative_root_is_read_from_the_current_directory(tmp_path, monkeypatch):
    write_fake_release("mnist", tmp_path / "data" / "mnist", 9, 3)
    monkeypatch.chdir(tmp_path)
    assert dataset_info("mnist", {"root": "data/mnist"}).n_train == 9


def test_the_catalog_reads_headers_only_and_refuses_a_damaged_header(tmp_path):
    d = fake_images("mnist", 12, 4)
    raw = write_idx_release(tmp_path, d["x_train"][:, 0], d["y_train"], d["x_test"][:, 0], d["y_test"])
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:16])  # the header, no pixels: measured all the same
    assert dataset_info("mnist", {"root": str(tmp_path)}).n_train == 12
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])  # an image magic on a label file
    with pytest.raises(ValueError, match=f"{labels} is not an IDX label file: its magic number is 2051, expected 2049"):
        dataset_info("mnist", {"root": str(tmp_path)})


def test_each_file_is_read_once_per_process_and_version(tmp_path):
    write_fake_release("cifar100", tmp_path, 10, 5)
    options = {"root": str(tmp_path)}
    misses = measure._pickled_labels.cache_info().misses
    assert dataset_info("cifar100", options).n_train == 10
    assert dataset_info("cifar100", options).n_train == 10
    assert measure._pickled_labels.cache_info().misses == misses + 2  # train and test, once each
    write_fake_release("cifar100", tmp_path, 13, 5)  # rewritten: another version (another size)
    assert dataset_info("cifar100", options).n_train == 13


def test_measuring_loads_neither_torch_nor_pandas(tmp_path):
    roots = {name: write_fake_release(name, tmp_path / name, *SMOKE_SIZES[name])["root"] for name in EXTRA_OPTIONS}
    code = ("import json, sys\nfrom batchlab.data.catalog import dataset_info\n"
            f"roots = json.loads({json.dumps(json.dumps(roots))})\n"
            "sources = {name: dataset_info(name, {'root': root}).source for name, root in roots.items()}\n"
            "print(json.dumps([sources, [m for m in ('torch', 'pandas', 'torchvision') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    sources, loaded = json.loads(out.stdout)
    assert sources == {name: "measured" for name in EXTRA_OPTIONS} and loaded == []



CALLED = []


def _record_a_call() -> list:
    CALLED.append(True)
    return []


class _Payload:
    def __reduce__(self):
        return (_record_a_call, ())  # what a plain unpickler would import and call


def test_a_batch_is_counted_without_running_what_its_pickle_names(tmp_path):
    write_fake_release("cifar100", tmp_path, 4, 2)
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(pickle.dumps({"fine_labels": [0, 1, 2], "data": _Payload()}, protocol=2))
    assert dataset_info("cifar100", {"root": str(tmp_path)}).n_train == 3 and CALLED == []
    pickle.loads(train.read_bytes())  # the payload works: a plain load would have called it
    assert CALLED == [True]
