"""What produced a result: package versions, the git commit, the device, and hashes of the library code."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


PACKAGES = ("batchlab", "torch", "torchvision", "numpy", "pandas", "scipy", "snakemake", "mnist1d")
LIBRARY = Path(__file__).resolve().parent  # the library this process imported: the one its jobs run
REPO_ROOT = LIBRARY.parent


def versions() -> dict[str, str | None]:
    return dict(_versions())


@functools.lru_cache  # reading package metadata costs milliseconds; one process has one set of versions
def _versions() -> tuple[tuple[str, str | None], ...]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return tuple(out.items())


@functools.lru_cache  # one job, one commit: a stack's members need not ask git each
def git_commit(repo: Path = REPO_ROOT) -> dict[str, str | bool | None]:
    """The commit of the code that ran, and whether the work tree had uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device_name(device: "torch.device") -> str:
    import torch  # here, not at the top: the report's job never needs it

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def code_hash(package: Path = LIBRARY) -> str:
    """A hash of the library code a training run runs (batchlab.train and what it imports): a finished
    run trained by other code is trained again, but a run is kept when only other code (a plot) changed."""
    return library_hash(package / "train" / "__init__.py", package)


# Modules that decide where a job computes (which GPU it takes), never what: an edit to one reruns nothing.
PLACEMENT_MODULES = frozenset({"gpus.py"})


@functools.lru_cache  # the Snakefile asks once per rule, the trainer once per member
def library_hash(entry: str | os.PathLike, package: Path = LIBRARY) -> str:
    """A hash of the modules of `package` that `entry` (a script or a module) imports, transitively:
    a job whose params carry it reruns when that code changes, and only then."""
    digest = hashlib.sha256()
    for path in sorted(library_closure(Path(entry).resolve(), package.resolve())):
        if path.relative_to(package.resolve()).as_posix() in PLACEMENT_MODULES:
            continue
        digest.update(path.relative_to(package.resolve()).as_posix().encode())  # where the copy lives does not count
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def library_closure(entry: Path, package: Path) -> set[Path]:
    """The files of `package` that running `entry` may execute: itself if it is one, its imports, theirs..."""
    seen = {entry} if entry.is_relative_to(package) else set()
    todo = [entry]
    while todo:
        for path in _imported_files(todo.pop(), package):
            if path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


@functools.lru_cache(maxsize=None)  # parsed once per process, which runs the code it imported once
def _imported_files(path: Path, package: Path) -> tuple[Path, ...]:
    """The files of `package` that `path` imports, read from its source: every `import` statement,
    including those inside functions (run lazily, they still run), and the packages' __init__.py that
    importing a submodule executes first."""
    here = _package_parts(path, package)
    files: list[Path] = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        for parts in _import_targets(node, package.name, here):
            for depth in range(len(parts) + 1):
                if (found := _module_file(package, parts[:depth])) is not None:
                    files.append(found)
    return tuple(files)


def _import_targets(node: ast.AST, name: str, here: tuple[str, ...] | None) -> list[tuple[str, ...]]:
    """The modules of package `name` that one statement may import, as parts below the package.

    `from batchlab import x` names a module or an attribute; both are returned, and a name with no
    file is dropped by the caller. `here` is the importing module's package (None outside it)."""
    if isinstance(node, ast.Import):
        return [tuple(alias.name.split("."))[1:] for alias in node.names if alias.name.split(".")[0] == name]
    if not isinstance(node, ast.ImportFrom):
        return []
    module = tuple(node.module.split(".")) if node.module else ()
    if node.level:  # relative: level 1 is the importing module's own package
        if here is None or node.level - 1 > len(here):
            return []
        base = here[: len(here) - (node.level - 1)] + module
    elif module[:1] == (name,):
        base = module[1:]
    else:
        return []
    return [base, *(base + (alias.name,) for alias in node.names if alias.name != "*")]


def _package_parts(path: Path, package: Path) -> tuple[str, ...] | None:
    """The package a module of `package` belongs to, as parts below it; None for a file outside it."""
    if not path.is_relative_to(package):
        return None
    parts = path.relative_to(package).with_suffix("").parts
    return parts[:-1]  # a package's __init__.py is in the package, as a module is


def _module_file(package: Path, parts: tuple[str, ...]) -> Path | None:
    """The file of module `parts` of `package` (a subpackage before a module, as Python looks), else None."""
    base = package.joinpath(*parts)
    candidates = [base / "__init__.py"] + ([base.with_name(f"{base.name}.py")] if parts else [])
    return next((c for c in candidates if c.is_file()), None)


def config_hash(obj: dict) -> str:
    """A stable hash of a JSON-able config, used to refuse resuming a run under another config."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
