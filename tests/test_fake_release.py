"""Fake releases in the real formats: read by the real loaders, the sizes asked for, learnable, deterministic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from batchlab.data import IGNORE_INDEX, load_prepared
from batchlab.data.fake_release import NAMES, NWORDS, TEXT_FILES, fake_images, main, write_fake_release
from batchlab.data.prepare import prepare_dataset
from batchlab.data.text import EOS, UNK, n_windows, read_tokens, read_vocab

# name: (n_train, n_test, extra prepare options)
SIZES = {
    "cifar10": (300, 100, {}),
    "cifar100": (600, 200, {}),
    "mnist": (300, 100, {}),
    "svhn": (300, 100, {}),
    "voc": (30, 15, {"size": 32}),
    "wikitext2": (15_000, 3_001, {"bptt": 20}),
    "ptb": (15_000, 3_001, {"bptt": 20}),
}
IMAGES = {"cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "mnist": ((1, 28, 28), 10), "svhn": ((3, 32, 32), 10)}


def _prepare(name: str, root: Path, out: Path, seed: int = 0):
    n_train, n_test, extra = SIZES[name]
    options = write_fake_release(name, root, n_train, n_test, seed=seed)
    prepare_dataset(name, out, {"root": str(root), "download": False, "verify_checksums": False, **extra})
    return options, load_prepared(out)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _nearest_class_mean_accuracy(ds) -> float:
    x_train, x_test = ds.x_train.flatten(1), ds.x_test.flatten(1)
    means = torch.stack([x_train[ds.y_train == c].mean(0) for c in range(ds.num_classes)])
    return (torch.cdist(x_test, means).argmin(1) == ds.y_test).float().mean().item()


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_release_is_read_by_the_real_loader_and_learnable(tmp_path, name):
    n_train, n_test, _ = SIZES[name]
    options, ds = _prepare(name, tmp_path / name, tmp_path / f"{name}.npz")
    shape, num_classes = IMAGES[name]
    checksums = {} if name == "mnist" else {"verify_checksums": False}  # MNIST's raw files have no md5 to check
    assert options == {"root": str(tmp_path / name), "download": False, **checksums}
    assert ds.task == "classification" and ds.name == name and ds.num_classes == num_classes
    assert ds.input_shape == shape and ds.n_train == n_train and len(ds.x_test) == n_test
    # What the loader read is what was generated (SVHN's 10 back to the digit 0, CIFAR's five batches in order).
    fake = fake_images(name, n_train, n_test)
    with np.load(tmp_path / f"{name}.npz") as z:
        np.testing.assert_array_equal(z["x_train"], fake["x_train"])
        np.testing.assert_array_equal(z["y_test"], fake["y_test"])
    assert ds.y_train.tolist() == fake["y_train"].tolist()
    assert sorted(Counter(ds.y_train.tolist()).values())[0] == n_train // num_classes  # balanced
    accuracy = _nearest_class_mean_accuracy(ds)
    assert accuracy > (0.5 if num_classes == 100 else 0.8), accuracy  # chance: 1 / num_classes


def test_voc_release_masks_carry_the_classes(tmp_path):
    _, ds = _prepare("voc", tmp_path / "voc", tmp_path / "voc.npz")
    assert ds.task == "segmentation" and ds.num_classes == 21 and ds.input_shape == (3, 32, 32)
    assert ds.n_train == 30 and ds.y_test.shape == (15, 32, 32)
    assert (tmp_path / "voc" / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2012_000000.jpg").is_file()
    labels = set(torch.unique(ds.y_train).tolist())
    assert IGNORE_INDEX in labels and 0 in labels and len(labels - {0, IGNORE_INDEX}) >= 10
    void = (ds.y_train == IGNORE_INDEX).float().mean().item()
    assert 0.01 < void < 0.2  # boundary bands, as in the release
    # A pixel's colour says its class: nearest class-mean colour, fitted on train, scored on test.
    x_train, y_train = ds.x_train.permute(0, 2, 3, 1).reshape(-1, 3), ds.y_train.reshape(-1)
    x_test, y_test = ds.x_test.permute(0, 2, 3, 1).reshape(-1, 3), ds.y_test.reshape(-1)
    present = sorted(labels - {IGNORE_INDEX})
    means = torch.stack([x_train[y_train == c].mean(0) for c in present])
    pred = torch.tensor(present)[torch.cdist(x_test, means).argmin(1)]
    keep = y_test != IGNORE_INDEX
    background = (y_test[keep] == 0).float().mean().item()
    accuracy = (pred[keep] == y_test[keep]).float().mean().item()
    foreground = keep & (y_test > 0)
    assert accuracy > background + 0.15, (accuracy, background)
    assert (pred[foreground] == y_test[foreground]).float().mean().item() > 0.5  # chance: 1/20


def _cross_entropy_bits(train: np.ndarray, test: np.ndarray, vocab: int) -> tuple[float, float]:
    """Test cross-entropy (bits a token) of an add-one unigram and of a bigram smoothed towards it, both fitted on train."""
    unigram = (np.bincount(train, minlength=vocab) + 1.0) / (len(train) + vocab)
    pairs = np.zeros((vocab, vocab))
    np.add.at(pairs, (train[:-1], train[1:]), 1.0)
    bigram = pairs + 0.5 * vocab * unigram
    bigram /= bigram.sum(1, keepdims=True)
    return float(-np.log2(unigram[test[1:]]).mean()), float(-np.log2(bigram[test[:-1], test[1:]]).mean())


@pytest.mark.parametrize("name", ["wikitext2", "ptb"])
def test_text_release_has_the_token_counts_and_beats_unigram(tmp_path, name):
    n_train, n_test, extra = SIZES[name]
    options, ds = _prepare(name, tmp_path / name, tmp_path / f"{name}.npz")
    assert options == {"root": str(tmp_path / name), "download": False}
    assert set(p.name for p in (tmp_path / name).iterdir()) == set(TEXT_FILES[name].values())
    train = read_tokens(tmp_path / name / TEXT_FILES[name]["train"])
    assert len(train) == n_train and train[-1] == EOS
    assert len(read_tokens(tmp_path / name / TEXT_FILES[name]["test"])) == n_test
    bptt = extra["bptt"]
    assert ds.task == "language_model" and ds.input_shape == (bptt,)
    assert ds.n_train == n_windows(n_train, bptt) and len(ds.x_test) == n_windows(n_test, bptt)
    vocab = read_vocab(tmp_path / f"{name}.npz")
    assert ds.num_classes == len(vocab) == len(set(train) | {UNK})
    assert 100 < len(vocab) < 2 * NWORDS + 10
    assert UNK in train and (name != "ptb" or "N" in train) and (name != "wikitext2" or "=" in train)
    uni, bi = _cross_entropy_bits(ds.x_train.flatten().numpy(), ds.x_test.flatten().numpy(), ds.num_classes)
    assert bi < uni - 1.5, (uni, bi)


def test_deterministic_in_the_seed_and_train_independent_of_n_test(tmp_path):
    for name in NAMES:
        n_train, n_test, _ = SIZES[name]
        n_train, n_test = min(n_train, 40), min(n_test, 40)
        write_fake_release(name, tmp_path / "a" / name, n_train, n_test, seed=3)
        write_fake_release(name, tmp_path / "b" / name, n_train, n_test, seed=3)
        write_fake_release(name, tmp_path / "c" / name, n_train, n_test, seed=4)
        a, b, c = (_files(tmp_path / k / name) for k in "abc")
        assert a == b and a.keys() == c.keys() and a != c, name
    one, two = fake_images("svhn", 20, 5, seed=1), fake_images("svhn", 20, 50, seed=1)
    np.testing.assert_array_equal(one["x_train"], two["x_train"])


def test_checksums_of_fake_files_fail_unless_switched_off(tmp_path):
    for name in ("cifar100", "svhn"):
        write_fake_release(name, tmp_path / name, 20, 10)
        with pytest.raises(RuntimeError, match="md5 mismatch"):
            prepare_dataset(name, tmp_path / f"{name}.npz", {"root": str(tmp_path / name), "download": False})
        prepare_dataset(name, tmp_path / f"{name}.npz", {"root": str(tmp_path / name), "verify_checksums": False, "n_train": 15})
        assert load_prepared(tmp_path / f"{name}.npz").n_train == (15 if name == "svhn" else 20)


def test_command_line_and_bad_arguments(tmp_path, capsys):
    assert main(["mnist", str(tmp_path / "m"), "--n-train", "12", "--n-test", "5", "--seed", "2"]) == 0
    assert "datasets.mnist" in capsys.readouterr().out
    assert (tmp_path / "m" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").stat().st_size == 16 + 5 * 28 * 28
    with pytest.raises(ValueError, match="no fake release of 'shapes'"):
        write_fake_release("shapes", tmp_path, 10, 10)
    with pytest.raises(ValueError, match="must be positive"):
        write_fake_release("ptb", tmp_path, 10, 0)
