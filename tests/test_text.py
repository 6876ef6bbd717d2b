"""Language-model corpora: WikiText-2 and PTB read from tiny files in the releases' layout, and the embedded corpus.

The fixtures follow the real files: WikiText-2's `wiki.*.tokens` (already tokenised, with
" = Heading = " lines, blank lines and `<unk>` for rare words), Mikolov's `ptb.*.txt`
(one lowercased sentence a line, leading space, `<unk>` and `N` for numbers).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from batchlab.data import load_prepared
from batchlab.data.prepare import prepare_dataset
from batchlab.data.catalog import dataset_info
from batchlab.data.fake_release import write_text_release
from batchlab.data.text import (
    EOS,
    UNK,
    build_vocab,
    prepare_ptb,
    prepare_pydoc_text,
    prepare_wikitext2,
    pydoc_sources,
    pydoc_text_documents,
    pydoc_text_tokens,
    read_vocab,
    tokenize_lines,
    windows,
)

WIKI_TRAIN = " \n = Valkyria Chronicles = \n \n the game is a <unk> game . \n the game began in 2010 . \n"
WIKI_TEST = " = Test = \n the zebra game . \n"
PTB_TRAIN = " the cat sat on the mat \n the dog sat \n a cat ran N miles \n"
PTB_TEST = " the cow sat \n"


def _raw(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _wikitext(folder) -> None:
    write_text_release("wikitext2", folder, WIKI_TRAIN, WIKI_TEST, valid=" valid only \n")


def _decode(ids, vocab) -> list[str]:
    return [vocab[i] for i in np.asarray(ids).ravel()]


def test_tokenize_like_word_language_model():
    assert tokenize_lines([" a  b\tc \n", "\n", "d"]) == ["a", "b", "c", EOS, EOS, "d", EOS]


def test_vocab_by_frequency_ties_by_code_point_and_unk():
    counts = Counter("b a c a b a d".split())
    assert build_vocab(counts) == ["a", "b", "c", "d", UNK]  # <unk> added, standing for no train token
    # A cap keeps max_vocab - 1 words; <unk> ranks by the tokens it replaces (c, d: 2).
    assert build_vocab(counts, max_vocab=3) == ["a", UNK, "b"]
    assert build_vocab(Counter(["x", UNK, UNK, "y", "y", "y"])) == ["y", UNK, "x"]
    with pytest.raises(ValueError, match="max_vocab must be at least 2"):
        build_vocab(counts, max_vocab=1)


def test_windows_shift_targets_and_drop_the_remainder():
    ids = np.arange(12)
    x, y = windows(ids, 5)  # (12 - 1) // 5 = 2 windows; tokens 10 and 11 feed no window's input
    assert x.dtype == y.dtype == np.int64 and x.shape == y.shape == (2, 5)
    assert x.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert y.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert windows(np.arange(11), 5)[0].shape == (2, 5)
    assert windows(np.arange(10), 5)[0].shape == (1, 5)  # the last target must exist
    with pytest.raises(ValueError, match="too short"):
        windows(np.arange(5), 5)


def test_wikitext2_streams_vocab_and_windows(tmp_path):
    _wikitext(tmp_path / "wikitext-2")  # the zip's folder under root is accepted
    out = tmp_path / "wt2.npz"
    prepare_wikitext2(tmp_path, out, bptt=4)

    train = tokenize_lines(WIKI_TRAIN.splitlines(keepends=True))
    assert train[:8] == [EOS, "=", "Valkyria", "Chronicles", "=", EOS, EOS, "the"]
    vocab = read_vocab(out)
    assert vocab == build_vocab(Counter(train))
    # 5, 3, then 2 times each (ties by code point), then once; the release's own <unk> is a word like any other.
    assert vocab == [EOS, "game", ".", "=", "the", "2010", UNK, "Chronicles", "Valkyria", "a", "began", "in", "is"]

    raw = _raw(out)
    meta = json.loads(str(raw["meta"]))
    assert meta["task"] == "language_model" and meta["num_classes"] == len(vocab) and meta["name"] == "wikitext2"
    n = (len(train) - 1) // 4
    assert raw["x_train"].shape == raw["y_train"].shape == (n, 4)
    assert raw["x_train"].dtype == raw["y_train"].dtype == np.int64
    assert _decode(raw["x_train"], vocab) == train[: n * 4]
    assert _decode(raw["y_train"], vocab) == train[1 : n * 4 + 1]
    # The test file, not the valid one; "Test" and "zebra" are not in the train vocabulary.
    assert _decode(raw["x_test"], vocab) == ["=", UNK, "=", EOS, "the", UNK, "game", "."]
    assert _decode(raw["y_test"], vocab) == [UNK, "=", EOS, "the", UNK, "game", ".", EOS]

    ds = load_prepared(out)
    assert ds.task == "language_model" and ds.x_train.dtype == torch.int64 and ds.input_shape == (4,)
    assert torch.equal(ds.x_train[:, 1:], ds.y_train[:, :-1])  # y is x shifted by one
    assert torch.equal(ds.x_train[1:, 0], ds.y_train[:-1, -1])  # windows are contiguous


def test_wikitext2_in_root_itself_and_max_vocab(tmp_path):
    _wikitext(tmp_path)
    out = tmp_path / "p" / "wt2.npz"
    prepare_wikitext2(tmp_path, out, bptt=3, max_vocab=4)
    vocab = read_vocab(out)
    # <eos>, game and "." kept; <unk> stands for its own token and the 11 dropped ones, so it ranks first.
    assert vocab == [UNK, EOS, "game", "."]
    ds = load_prepared(out)
    assert ds.num_classes == 4
    assert int(ds.x_train.max()) < 4 and int(ds.y_test.max()) < 4
    unk = vocab.index(UNK)
    assert (ds.x_train == unk).any()  # rare train words fold into <unk>


def test_ptb_layout_and_unknown_test_words(tmp_path):
    write_text_release("ptb", tmp_path, PTB_TRAIN, PTB_TEST, valid=" x \n")
    out = tmp_path / "ptb.npz"
    prepare_ptb(tmp_path, out, bptt=2)
    vocab = read_vocab(out)
    assert vocab[:5] == [EOS, "the", "cat", "sat", "N"]  # 3, 3, 2, 2, 1 times: ties by code point
    assert vocab[-1] == UNK  # no <unk> in this train file: added, standing for nothing
    raw = _raw(out)
    assert _decode(raw["x_test"], vocab) == ["the", UNK]  # 4 tokens: one window of 2 with its targets
    assert _decode(raw["y_test"], vocab) == [UNK, "sat"]
    assert raw["x_train"].shape == ((len(PTB_TRAIN.split()) + 3 - 1) // 2, 2)
    assert load_prepared(out).num_classes == len(vocab) == len(set(PTB_TRAIN.split())) + 2


def test_missing_files_are_listed_with_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wiki\.train\.tokens.*place the release's.*wikitext-2"):
        prepare_wikitext2(tmp_path, tmp_path / "out.npz")
    (tmp_path / "ptb.train.txt").write_text(PTB_TRAIN, encoding="utf-8")  # the test file missing
    with pytest.raises(FileNotFoundError, match=r"ptb\.test\.txt") as err:
        prepare_ptb(tmp_path, tmp_path / "out.npz")
    assert "ptb.train.txt" not in str(err.value).split("Nothing")[0]
    assert not (tmp_path / "out.npz").exists()


# --- the embedded corpus --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pydoc_npz(tmp_path_factory):
    out = tmp_path_factory.mktemp("pydoc") / "pydoc_text.npz"
    prepare_pydoc_text(out, bptt=35, max_vocab=5000)
    return out


def test_pydoc_corpus_is_real_text_of_at_least_a_megabyte():
    assert pydoc_sources()[0].name == "topics.py" and len(pydoc_sources()) == 35
    docs = pydoc_text_documents()
    assert sum(len(d.encode("utf-8")) for d in docs) > 1_000_000
    text = "\n".join(docs)
    assert "The assert statement" in text or '"assert" statement' in text
    train, test = pydoc_text_tokens()
    assert 0.88 < len(train) / (len(train) + len(test)) < 0.92
    assert train[-1] == EOS  # the split falls at a paragraph end
    assert all(t == t.lower() for t in train[:5000])
    assert len(train) > 150_000


def test_pydoc_prepared_file_matches_the_catalog(pydoc_npz):
    ds = load_prepared(pydoc_npz)
    info = dataset_info("pydoc_text", {"bptt": 35, "max_vocab": 5000})
    assert (ds.n_train, len(ds.x_test), ds.num_classes) == (info.n_train, info.n_test, info.num_classes)
    assert ds.input_shape == info.input_shape == (35,) and info.task == ds.task == "language_model"
    assert info.num_classes == 5000 and len(read_vocab(pydoc_npz)) == 5000
    assert torch.equal(ds.x_train[:, 1:], ds.y_train[:, :-1])
    train, _ = pydoc_text_tokens()
    vocab = read_vocab(pydoc_npz)
    assert _decode(ds.x_train[:3].numpy(), vocab) == [t if t in set(vocab) else UNK for t in train[:105]]
    assert dataset_info("pydoc_text", {"bptt": 70, "max_vocab": None}).num_classes > 5000


def test_pydoc_is_deterministic(pydoc_npz, tmp_path):
    again = tmp_path / "again.npz"
    pydoc_text_documents.cache_clear()  # read and tokenise the standard library again
    pydoc_text_tokens.cache_clear()
    prepare_pydoc_text(again, bptt=35, max_vocab=5000)
    a, b = _raw(pydoc_npz), _raw(again)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(a[k], b[k])
    assert read_vocab(pydoc_npz) == read_vocab(again)


def test_dispatcher_passes_the_config_options(tmp_path, pydoc_npz):
    _wikitext(tmp_path)
    prepare_dataset("wikitext2", tmp_path / "w.npz", {"root": str(tmp_path), "bptt": 3, "max_vocab": 4})
    assert load_prepared(tmp_path / "w.npz").input_shape == (3,) and len(read_vocab(tmp_path / "w.npz")) == 4
    write_text_release("ptb", tmp_path / "ptb", PTB_TRAIN, PTB_TEST)  # no valid file: not read
    prepare_dataset("ptb", tmp_path / "p.npz", {"root": str(tmp_path / "ptb"), "bptt": 2, "max_vocab": None})
    assert load_prepared(tmp_path / "p.npz").num_classes == 12  # 10 words, <eos>, <unk>
    prepare_dataset("pydoc_text", tmp_path / "d.npz", {"bptt": 35})  # max_vocab: the default 5000
    assert read_vocab(tmp_path / "d.npz") == read_vocab(pydoc_npz)
