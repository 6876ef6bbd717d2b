"""Atomic, checksummed file output: every file is written under a temporary name, then renamed.

A job killed half-way never leaves a half file that looks whole, and snakemake never
mistakes a partial output for a finished one.

Every torch file, Parquet table and JSON file carries a SHA-256 of its content, checked on
every load: a file damaged on disk or edited by hand after it was written is refused with an
error that names it (ChecksumError), never read as a result. A torch file holds
{"batchlab_sha256": digest, "content": what was saved}; a Parquet table keeps its digest
in the schema's key-value metadata; a JSON mapping has it as one more key.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import pandas as pd
    import torch
# torch is imported where a torch file is read or written, not here: the jobs that only gather
# tables, draw figures or write the report start 1.5 s sooner without it, a fifth of their time.

CHECKSUM_KEY = "batchlab_sha256"


class ChecksumError(OSError):
    """A file whose content does not match the checksum written with it, or that has none."""


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the body succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets what the user's umask gives
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch's writer says only "enforce fail at inline_container.cc"
        raise _unwritable(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


LOW_SPACE_BYTES = 64 * 2**20  # below this free on its file system, a failed write is put down to a full disk


def _unwritable(path: Path, exc: BaseException) -> OSError:
    """An error naming the file that could not be written and why, in words: a full disk first."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(exc, "errno", None) == errno.ENOSPC or (free is not None and free < LOW_SPACE_BYTES):
        cause = "no space left on its file system" + (f" ({free / 2**20:.0f} MiB free)" if free is not None else "")
        return OSError(errno.ENOSPC, f"cannot write {path}: {cause}; free some space and run again")
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return OSError(getattr(exc, "errno", None), f"cannot write {path}: {type(exc).__name__}: {first_line}")


def _json_digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def write_json(obj: dict, path: str | os.PathLike) -> None:
    """A mapping as JSON with its checksum under CHECKSUM_KEY (of the mapping as a reader gets it back)."""
    content = json.loads(json.dumps(obj, default=str))  # what a reader gets: tuples as lists, paths as strings
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**content, CHECKSUM_KEY: _json_digest(content)}, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """A mapping written by write_json, checked against its checksum; a damaged or edited one raises
    ChecksumError naming it."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(content, dict) or CHECKSUM_KEY not in content:
        raise _no_checksum(path)
    stored = content.pop(CHECKSUM_KEY)
    _verify(path, stored, _json_digest(content))
    return content


def _remedy(path: str | os.PathLike) -> str:
    """What to do about a bad file: a run's files come back only by training the run again."""
    from batchlab.forget import run_id_of

    run_id = run_id_of(path)
    if run_id is not None:
        return (f"Run `python -m batchlab forget {run_id}` in the workflow's directory, then snakemake again: it "
                "trains the run again and redoes what reads it.")
    return "Delete it and run snakemake again: the rule that wrote it runs again."


def _no_checksum(path: str | os.PathLike) -> ChecksumError:
    return ChecksumError(f"{path} has no batchlab checksum: it was written by other code or by hand. {_remedy(path)}")


def _verify(path: str | os.PathLike, stored: str, actual: str) -> None:
    if stored != actual:
        raise ChecksumError(f"{path} is damaged or was edited after it was written: its content no longer matches "
                            f"its checksum. {_remedy(path)}")


def _unreadable(path: str | os.PathLike, exc: Exception) -> OSError:
    return OSError(f"cannot read {path}: {type(exc).__name__}: {exc}. {_remedy(path)}")


def frame_digest(df: pd.DataFrame) -> str:
    """SHA-256 of a table's column names, dtypes and values (row order counts, the index does not)."""
    import pandas as pd  # in the functions: the Snakefile imports this module, and pandas costs 0.3 s

    digest = hashlib.sha256(repr([(str(c), str(t)) for c, t in df.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    # The digest is of the frame a reader gets back, which is not always `df` itself: an
    # object column of strings comes back as "str", one of bools as "bool".
    metadata = {**(table.schema.metadata or {}), CHECKSUM_KEY.encode(): frame_digest(table.to_pandas()).encode()}
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """A table written by write_parquet, checked against its checksum (the whole table, even when
    only `columns` are returned); a damaged or edited one raises ChecksumError naming it."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        df = table.to_pandas()
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    stored = (table.schema.metadata or {}).get(CHECKSUM_KEY.encode())
    if stored is None:
        raise _no_checksum(path)
    _verify(path, stored.decode(), frame_digest(df))
    return df if columns is None else df[list(columns)]


def _feed(digest: "hashlib._Hash", obj: Any) -> None:
    """Walk a checkpoint's content in a canonical order: dict keys sorted, each value tagged with
    its type, so that equal content always hashes alike and a changed type is a change too."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(obj, torch.Tensor):
        flat = obj.detach().contiguous().cpu().reshape(-1)
        digest.update(f"tensor {flat.dtype} {tuple(obj.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the raw bytes, hashed in place: one pass
    elif isinstance(obj, dict):
        digest.update(f"dict {len(obj)}\0".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{'list' if isinstance(obj, list) else 'tuple'} {len(obj)}\0".encode())
        for item in obj:
            _feed(digest, item)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        digest.update(f"{type(obj).__name__} {obj!r}\0".encode())  # repr escapes NUL and round-trips floats
    else:
        raise TypeError(f"cannot checksum a {type(obj).__name__}: checkpoints hold containers, tensors and numbers only")


def content_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's content (see _feed)."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    import torch

    checked = {CHECKSUM_KEY: content_digest(obj), "content": obj}
    with atomic_path(path) as tmp:
        torch.save(checked, tmp)


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """What save_torch was given, checked against its checksum; an unreadable file raises an
    OSError that names it, a damaged or edited one a ChecksumError."""
    import torch

    try:
        # Our own checkpoints hold plain containers, tensors and numbers only.
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    if not (isinstance(saved, dict) and set(saved) == {CHECKSUM_KEY, "content"}):
        raise _no_checksum(path)
    _verify(path, saved[CHECKSUM_KEY], content_digest(saved["content"]))
    return saved["content"]


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that atomic_path leaves behind when a job is killed mid-write."""
    folder = Path(folder)
    leftovers = list(folder.glob(".*.tmp")) if folder.is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers
