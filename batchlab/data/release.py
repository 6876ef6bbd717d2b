"""Checks that a data set's release is in place before torchvision reads it.

torchvision's own errors ("Dataset not found or corrupted") do not say which file is
missing or what to do; these say both.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.utils import check_integrity


def check_release(release: str, root: Path, files: list[tuple[Path, str | None]], placement: str,
                  verify_checksums: bool = False) -> None:
    """FileNotFoundError naming each missing file of `files` ((path, md5 or None)) and how to fix it;
    with `verify_checksums`, RuntimeError naming each file whose md5 is not the official release's.

    `placement` finishes the sentence "... or <placement>", e.g. "place the python release's
    'cifar-10-batches-py/' folder under data/cifar".
    """
    missing = [str(path) for path, _ in files if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"{release} files missing under {root}: {', '.join(missing)}. Set `download: true` in the config "
            f"(download=True) to fetch them, or {placement}."
        )
    if verify_checksums:
        corrupt = [str(path) for path, md5 in files if md5 is not None and not check_integrity(str(path), md5)]
        if corrupt:
            raise RuntimeError(
                f"md5 mismatch with the official {release} release: {', '.join(corrupt)}. The files are corrupted or "
                f"not the official release; delete them and download again (generated files in the real format "
                f"need `verify_checksums: false`)."
            )
