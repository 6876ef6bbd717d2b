"""What produced a result: package versions, the git commit, and the device."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("batchlab", "torch", "torchvision", "numpy", "pandas", "scipy", "snakemake", "mnist1d")
REPO_ROOT = Path(__file__).resolve().parents[1]


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@functools.lru_cache
def code_hash(package: Path = REPO_ROOT / "batchlab") -> str:
    """A hash of the library's source: a finished run trained by other code is trained again."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def config_hash(obj: dict) -> str:
    """A stable hash of a JSON-able config, used to refuse resuming a run under another config."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
