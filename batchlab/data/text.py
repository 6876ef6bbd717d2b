"""Word-level language-modelling corpora: WikiText-2, Penn Treebank and an embedded corpus.

Golmant et al. 2018 train a word-level LSTM on WikiText-2 at batch sizes up to the data
set; the Penn Treebank is the smaller classic word-level benchmark. This module reads

- WikiText-2 as released by Salesforce (Merity et al. 2016): `wiki.train.tokens`,
  `wiki.valid.tokens`, `wiki.test.tokens` under `root/` or `root/wikitext-2/`;
- the Penn Treebank in Mikolov's release: `ptb.train.txt`, `ptb.valid.txt`,
  `ptb.test.txt` under `root/`;

and writes the prepared `.npz` of `batchlab.data` with `task="language_model"`. The test
split is the release's *test* file, and its validation file, where the folder holds one,
becomes the prepared validation split (`x_valid`, `y_valid`): the loss that
`language_model.plateau_anneal` watches. A release without it (or with one too short for a
window) prepares as before, without one.

Tokenisation is that of PyTorch's word_language_model example: each line is split on
whitespace and `<eos>` is appended at its end (an empty line gives a lone `<eos>`); nothing
else is dropped or changed. The vocabulary comes from the train split, most frequent word
first, ties broken by the words' code points. It always holds `<unk>` (added if the train
split has none), which ranks by the number of train tokens it stands for; `max_vocab` keeps
the `max_vocab - 1` most frequent other words and maps the rest to `<unk>`, as it maps a
test or validation word missing from the vocabulary. Each split's stream of ids is then cut into
non-overlapping windows of `bptt` tokens: x[i] = stream[i*T:(i+1)*T] and the next-token
targets y[i] = stream[i*T+1:(i+1)*T+1], both int64 (N, T); the tokens left over are
dropped. The vocabulary is written beside the `.npz` as `<name>.vocab.txt`, one word a
line, line k holding the word of id k.

The embedded corpus `pydoc_text` needs no download: real English prose that ships with
every CPython 3.11, read from the running Python's standard library
(`sysconfig.get_paths()["stdlib"]`), namely
- the text of `pydoc_data/topics.py`: the 79 Language Reference topics that `help()`
  shows, in sorted order (464,970 characters; the file has 757,011 bytes in 3.11.7), then
- the docstrings (module, class and function, in source order) of the 34 standard-library
  modules in PYDOC_MODULES (598,130 characters; the files have 2,535,932 bytes in 3.11.7),
1,064,249 bytes of UTF-8 text in all. It is identical on every machine with the same
Python release; a patch release may edit a few docstrings, and `pydoc_text_fingerprint()`
gives the sha256 of the text in use (3.11.7:
2d0f917ecf002d25053e2994c8ed41f712d40de7becaecb20413adfe54e5d9be). The catalog measures the
corpus instead of trusting these numbers, so it always agrees with the prepared file.

The raw prose is first put into the shape of the WikiText/PTB releases: lines that only
draw (reST underlines, table rules) are dropped; each paragraph (lines between blank lines)
becomes one line, lowercased, with punctuation split off (`\\w+|([^\\w\\s])\\1*`: a
word, or a run of one punctuation character such as ">>>"). Then it goes through the
tokeniser above. The paragraphs up to the first that reaches 90% of the tokens are the
train split, the rest the test split (contiguous, no shuffling). It has no validation
split: one cut from either would change the train or test streams every existing run reads,
so a study cannot ask for the plateau anneal on it (batchlab.config refuses). With Python 3.11.7:
209,340 train and 23,218 test tokens, 6,834 distinct train words (6,835 with `<unk>`),
of which `max_vocab` (default 5000) are kept; 0.9% of train and 6.6% of test tokens then
become `<unk>`. With bptt = 35: 5981 train and 663 test windows.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import os
import re
import sysconfig
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from batchlab.data import save_prepared
from batchlab.io import atomic_path

log = logging.getLogger(__name__)

EOS = "<eos>"
UNK = "<unk>"
WIKITEXT2_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}

PYDOC_TOPICS = "pydoc_data/topics.py"
PYDOC_MODULES = (
    "_pydecimal.py", "_pyio.py", "codecs.py", "configparser.py", "difflib.py", "doctest.py",
    "email/_header_value_parser.py", "email/message.py", "http/cookiejar.py", "http/server.py",
    "imaplib.py", "importlib/_bootstrap_external.py", "inspect.py", "ipaddress.py",
    "logging/__init__.py", "logging/handlers.py", "nntplib.py", "optparse.py", "os.py", "pdb.py",
    "shutil.py", "smtplib.py", "socketserver.py", "ssl.py", "statistics.py", "subprocess.py",
    "tarfile.py", "threading.py", "typing.py", "unittest/case.py", "unittest/mock.py",
    "urllib/request.py", "xml/etree/ElementTree.py", "xmlrpc/server.py",
)  # fmt: skip
PYDOC_TRAIN_FRACTION = 0.9
PYDOC_MAX_VOCAB = 5000
_WORD_OR_PUNCT = re.compile(r"\w+|([^\w\s])\1*")  # a word, or a run of one punctuation character
_RULE = re.compile(r"^\s*([^\w\s])\1{2,}\s*$|^\s*\+[-=+]*\+\s*$", re.MULTILINE)  # reST underlines, table rules


# --- tokenising, vocabulary, windows -------------------------------------------------------


def tokenize_lines(lines: Iterable[str]) -> list[str]:
    """Split each line on whitespace and end it with `<eos>` (PyTorch's word_language_model)."""
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def read_tokens(path: str | os.PathLike) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return tokenize_lines(fh)


def build_vocab(counts: Counter, max_vocab: int | None = None) -> list[str]:
    """Words by falling count (ties by code point), with `<unk>` counting the tokens it replaces."""
    if max_vocab is not None and max_vocab < 2:
        raise ValueError(f"max_vocab must be at least 2 (a word and {UNK}), got {max_vocab}")
    words = [w for w in counts if w != UNK]
    words.sort(key=lambda w: (-counts[w], w))
    if max_vocab is not None:
        words = words[: max_vocab - 1]
    kept = set(words)
    unk_count = sum(c for w, c in counts.items() if w not in kept)  # <unk> itself plus every dropped word
    count = {**{w: counts[w] for w in words}, UNK: unk_count}
    return sorted(count, key=lambda w: (-count[w], w))


def encode(tokens: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
    """Token ids (int64); a word outside `vocab` becomes `<unk>`."""
    index = {w: i for i, w in enumerate(vocab)}
    unk = index[UNK]
    return np.fromiter((index.get(t, unk) for t in tokens), dtype=np.int64, count=len(tokens))


def n_windows(n_tokens: int, bptt: int) -> int:
    """Examples cut from a stream of `n_tokens`: windows of `bptt` whose shifted targets fit."""
    if bptt < 1:
        raise ValueError(f"bptt must be at least 1, got {bptt}")
    return max(0, (n_tokens - 1) // bptt)


def windows(ids: np.ndarray, bptt: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows x[i] = ids[i*T:(i+1)*T] and their next tokens y[i] = ids[i*T+1:(i+1)*T+1]."""
    n = n_windows(len(ids), bptt)
    if n == 0:
        raise ValueError(f"a split of {len(ids)} tokens is too short for one window of bptt={bptt} (needs {bptt + 1})")
    x = ids[: n * bptt].reshape(n, bptt)
    y = ids[1 : n * bptt + 1].reshape(n, bptt)
    return np.ascontiguousarray(x, dtype=np.int64), np.ascontiguousarray(y, dtype=np.int64)


def vocab_path(out_path: str | os.PathLike) -> Path:
    """Where the vocabulary of the prepared `out_path` lives: `<stem>.vocab.txt` beside it."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".vocab.txt")


def read_vocab(out_path: str | os.PathLike) -> list[str]:
    """The vocabulary of a prepared language-model `.npz` (word of id k at position k)."""
    return vocab_path(out_path).read_text(encoding="utf-8").split("\n")[:-1]


def save_language_model(
    out_path: str | os.PathLike,
    train_tokens: Sequence[str],
    test_tokens: Sequence[str],
    *,
    name: str,
    bptt: int,
    max_vocab: int | None,
    valid_tokens: Sequence[str] | None = None,
) -> list[str]:
    """Build the train vocabulary, write it and the windowed splits (validation too where given);
    return the vocabulary."""
    vocab = build_vocab(Counter(train_tokens), max_vocab)
    x_train, y_train = windows(encode(train_tokens, vocab), bptt)
    x_test, y_test = windows(encode(test_tokens, vocab), bptt)
    valid = {}
    if valid_tokens is not None:
        valid["x_valid"], valid["y_valid"] = windows(encode(valid_tokens, vocab), bptt)
    # The vocabulary goes first, so a finished .npz always has its vocabulary beside it.
    with atomic_path(vocab_path(out_path)) as tmp:
        tmp.write_text("".join(w + "\n" for w in vocab), encoding="utf-8")
    save_prepared(
        out_path, x_train, y_train, x_test, y_test, name=name, num_classes=len(vocab), task="language_model", **valid
    )
    return vocab


# --- WikiText-2 and PTB ----------------------------------------------------------------------


RELEASES = {  # name: (file names, folders under root to look in, what to call the release)
    "wikitext2": (WIKITEXT2_FILES, ("", "wikitext-2"), "WikiText-2 (wikitext-2-v1.zip)"),
    "ptb": (PTB_FILES, ("",), "Penn Treebank (Mikolov's simple-examples/data)"),
}


def find_release_files(name: str, root: str | os.PathLike) -> dict[str, Path] | None:
    """The train and test files of release `name` ("wikitext2", "ptb") from the first folder under `root`
    that holds both, and its validation file ("valid") where that folder has it; None when none does."""
    files, subfolders, _ = RELEASES[name]
    for folder in (Path(root) / sub for sub in subfolders):
        if all((folder / files[s]).is_file() for s in ("train", "test")):
            return {s: folder / files[s] for s in ("train", "valid", "test") if (folder / files[s]).is_file()}
    return None


def _release_files(name: str, root: Path) -> dict[str, Path]:
    """`find_release_files`, or a FileNotFoundError naming the missing files."""
    paths = find_release_files(name, root)
    if paths is not None:
        return paths
    files, subfolders, release = RELEASES[name]
    folders = [root / sub for sub in subfolders]
    missing = [str(f / files[s]) for f in folders for s in ("train", "test") if not (f / files[s]).is_file()]
    raise FileNotFoundError(
        f"{release} files missing under {root}: {', '.join(missing)}. Nothing is downloaded: place the "
        f"release's {', '.join(files.values())} in {' or '.join(str(f) for f in folders)}."
    )


def prepare_wikitext2(
    root: str | os.PathLike, out_path: str | os.PathLike, bptt: int = 35, max_vocab: int | None = None
) -> None:
    """Read WikiText-2 (word level, `wiki.*.tokens`) from `root` or `root/wikitext-2` and write it prepared."""
    _prepare_release("wikitext2", Path(root), out_path, bptt, max_vocab)


def prepare_ptb(root: str | os.PathLike, out_path: str | os.PathLike, bptt: int = 35, max_vocab: int | None = None) -> None:
    """Read the Penn Treebank (Mikolov's `ptb.*.txt`, from simple-examples/data) from `root` and write it prepared."""
    _prepare_release("ptb", Path(root), out_path, bptt, max_vocab)


def _prepare_release(name: str, root: Path, out_path: str | os.PathLike, bptt: int, max_vocab: int | None) -> None:
    paths = _release_files(name, root)
    valid = read_tokens(paths["valid"]) if "valid" in paths else None
    if valid is not None and n_windows(len(valid), bptt) == 0:
        log.warning("%s: %d tokens, too short for one window of bptt=%d: no validation split", paths["valid"],
                    len(valid), bptt)
        valid = None
    save_language_model(out_path, read_tokens(paths["train"]), read_tokens(paths["test"]), name=name, bptt=bptt,
                        max_vocab=max_vocab, valid_tokens=valid)


# --- the embedded corpus -------------------------------------------------------------------


def pydoc_sources() -> list[Path]:
    """The standard-library files the embedded corpus is read from, in corpus order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [stdlib / PYDOC_TOPICS, *(stdlib / m for m in PYDOC_MODULES)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the embedded text corpus needs these standard-library files, missing from this Python: "
            f"{', '.join(missing)}. Use a full CPython 3.11 installation (some distributions split the "
            f"standard library into several packages)."
        )
    return paths


def _docstrings(node: ast.AST) -> Iterable[str]:
    """Docstrings of a module, class or function, then of the classes and functions inside, in source order."""
    doc = ast.get_docstring(node, clean=True) if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if doc:
        yield doc
    for child in ast.iter_child_nodes(node):
        yield from _docstrings(child)


def _paragraphs(text: str) -> list[str]:
    """Each run of non-blank lines as one lowercased line, punctuation split off as tokens.

    Lines that only draw (reST heading underlines "*****", "-----", table rules "+---+---+")
    are dropped first; a run of one punctuation character (">>>", "...") is one token.
    """
    out = []
    for para in re.split(r"\n\s*\n", _RULE.sub("", text)):
        tokens = [m.group(0) for m in _WORD_OR_PUNCT.finditer(para.lower())]
        if tokens:
            out.append(" ".join(tokens))
    return out


@functools.lru_cache(maxsize=1)
def pydoc_text_documents() -> tuple[str, ...]:
    """The corpus's documents: each reference topic (sorted by name), then each module's docstrings."""
    topics_path, *modules = pydoc_sources()
    tree = ast.parse(topics_path.read_bytes())
    topics = next(
        ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "topics"
    )
    docs = [topics[k] for k in sorted(topics)]
    for path in modules:
        docs.append("\n\n".join(_docstrings(ast.parse(path.read_bytes()))))
    return tuple(docs)


def pydoc_text_fingerprint() -> str:
    """sha256 of the corpus text (documents joined by a NUL), to compare machines."""
    return hashlib.sha256("\0".join(pydoc_text_documents()).encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def pydoc_text_tokens() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, test) token streams of the embedded corpus: the first 90% of tokens, at a paragraph end, then the rest."""
    lines = [line for doc in pydoc_text_documents() for line in _paragraphs(doc)]
    lengths = np.array([len(line.split()) + 1 for line in lines])  # + <eos>
    ends = np.cumsum(lengths)
    cut = int(np.searchsorted(ends, PYDOC_TRAIN_FRACTION * ends[-1]))  # first paragraph reaching 90%
    return tuple(tokenize_lines(lines[: cut + 1])), tuple(tokenize_lines(lines[cut + 1 :]))


@functools.lru_cache(maxsize=8)
def pydoc_text_counts(max_vocab: int | None = PYDOC_MAX_VOCAB) -> tuple[int, int, int]:
    """(vocabulary size, train tokens, test tokens) of the embedded corpus under `max_vocab`."""
    train, test = pydoc_text_tokens()
    return len(build_vocab(Counter(train), max_vocab)), len(train), len(test)


def prepare_pydoc_text(out_path: str | os.PathLike, bptt: int = 35, max_vocab: int | None = PYDOC_MAX_VOCAB) -> None:
    """Build the embedded corpus from this Python's standard library and write it prepared."""
    train, test = pydoc_text_tokens()
    save_language_model(out_path, train, test, name="pydoc_text", bptt=bptt, max_vocab=max_vocab)
