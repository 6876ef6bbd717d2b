"""Hashes of the library code a job runs (batchlab.provenance): which edits change which hash."""

import shutil
from pathlib import Path

import pytest

from batchlab import provenance
from tests.conftest import REPO


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One snapshot of scripts/ and batchlab/ (the checkout may be edited meanwhile)."""
    root = tmp_path_factory.mktemp("pristine")
    for name in ("scripts", "batchlab"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def edited(pristine: Path, tmp_path: Path, module: str) -> Path:
    root = Path(shutil.copytree(pristine, tmp_path / "edited"))
    path = root / "batchlab" / module
    path.write_text(path.read_text() + "\n# an edit\n")
    return root


def hashes(root: Path) -> dict[str, str]:
    package = root / "batchlab"
    scripts = {p.stem: provenance.library_hash(p, package) for p in sorted((root / "scripts").glob("*.py"))}
    return {**scripts, "code_hash": provenance.code_hash(package)}


def changed(pristine: Path, tmp_path: Path, module: str) -> set[str]:
    before, after = hashes(pristine), hashes(edited(pristine, tmp_path, module))
    return {name for name in before if before[name] != after[name]}


def test_an_edited_plot_changes_the_figure_jobs_and_the_report_only(pristine, tmp_path):
    assert changed(pristine, tmp_path, "plots/common.py") == {"figures", "report", "report_summary"}


def test_an_edited_claim_changes_the_findings_and_the_report_only(pristine, tmp_path):
    assert changed(pristine, tmp_path, "findings.py") == {"findings", "report", "report_summary"}


def test_an_edited_training_loss_changes_training_and_what_measures_runs(pristine, tmp_path):
    assert changed(pristine, tmp_path, "metrics.py") == {"train", "analyse_stack", "interpolate_study", "code_hash"}


def test_an_edited_trainer_changes_the_code_hash_runs_record(pristine, tmp_path):
    assert "code_hash" in changed(pristine, tmp_path, "train/loop.py")


def test_an_edited_data_preparation_changes_only_its_job(pristine, tmp_path):
    assert changed(pristine, tmp_path, "data/mnist1d.py") == {"prepare_data"}


def test_an_edit_to_where_jobs_compute_changes_no_job(pristine, tmp_path):
    assert changed(pristine, tmp_path, "gpus.py") == set()


def test_a_moved_copy_hashes_the_same(pristine, tmp_path):
    moved = Path(shutil.copytree(pristine, tmp_path / "elsewhere" / "checkout"))
    assert hashes(moved) == hashes(pristine)


def test_code_hash_without_arguments_is_the_imported_librarys_training_closure():
    assert provenance.code_hash() == provenance.library_hash(provenance.LIBRARY / "train" / "__init__.py", provenance.LIBRARY)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_every_form_of_import_is_followed(tmp_path):
    package = tmp_path / "batchlab"
    write(package, {
        "__init__.py": "",
        "a.py": "import batchlab.b.c as c\nfrom batchlab import d, helper\nfrom batchlab.e import f\n",
        "b/__init__.py": "", "b/c.py": "from . import sibling\nfrom ..g import x\n", "b/sibling.py": "",
        "d.py": "def lazy():\n    from .h import y\n", "e/__init__.py": "", "e/f.py": "", "g.py": "", "h.py": "",
        "helper_not_imported.py": "", "unused.py": "import os\nfrom numpy import batchlab\n",
    })
    script = tmp_path / "script.py"
    script.write_text("from batchlab import a\n")
    closure = provenance.library_closure(script, package)
    expected = {"__init__.py", "a.py", "b/__init__.py", "b/c.py", "b/sibling.py", "d.py", "e/__init__.py", "e/f.py",
                "g.py", "h.py"}
    assert {p.relative_to(package).as_posix() for p in closure} == expected
