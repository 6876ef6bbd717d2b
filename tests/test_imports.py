"""No import circles inside batchlab: the modules' top-level imports form a graph without a cycle.

Only what runs when a module is imported counts: the statements of its body, of its classes and of
blocks such as `try`, not those inside functions (run later, by which time every module has loaded)
nor those under `if TYPE_CHECKING:` (never run)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "batchlab"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(body: list[ast.stmt]):
    """The import statements that run when a module with this body is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            yield from top_level_imports(node.orelse)
        else:  # a class body, if/try/with/for blocks: run at import
            for field in ("body", "orelse", "finalbody"):
                yield from top_level_imports(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                yield from top_level_imports(handler.body)
            for case in getattr(node, "cases", []):
                yield from top_level_imports(case.body)


def imported_modules(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of `modules` that importing module `name` (the file at `path`) imports directly."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in top_level_imports(ast.parse(path.read_bytes(), filename=str(path)).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:  # relative: level 1 is the importing module's own package
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module
        for alias in node.names:  # `from a import b` imports module a.b when b is one, else a
            found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    return {m for m in found if m in modules and m != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    return {name: imported_modules(path, name, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as the modules along it, the first repeated at the end, else None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_graph_sees_every_form_of_top_level_import(tmp_path):
    package = tmp_path / "batchlab"
    files = {
        "__init__.py": "",
        "a.py": "import batchlab.b.c\nfrom batchlab import d, e\nfrom typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from batchlab import f\ndef lazy():\n    from batchlab import g\n",
        "b/__init__.py": "from . import c\n", "b/c.py": "from ..d import x\nfrom .. import e\n",
        "d.py": "class K:\n    from batchlab.e import y\n", "e.py": "x = 1\n", "f.py": "", "g.py": "",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    graph = import_graph(package)
    assert graph["batchlab.a"] == {"batchlab.b.c", "batchlab.d", "batchlab.e"}
    assert graph["batchlab.b"] == {"batchlab.b.c"}
    assert graph["batchlab.b.c"] == {"batchlab.d", "batchlab.e"}
    assert graph["batchlab.d"] == {"batchlab.e"}
    assert find_cycle(graph) is None
    (package / "e.py").write_text("import batchlab.a\n")
    assert find_cycle(import_graph(package)) == ["batchlab.a", "batchlab.b.c", "batchlab.d", "batchlab.e", "batchlab.a"]


def test_batchlab_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_snakefiles_imports_leave_torch_and_pandas_unloaded():
    """Every snakemake process parses the Snakefile (under SLURM, every job too): torch costs 3 s of it."""
    text = (REPO / "Snakefile").read_text() + "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    modules = set()
    for package, names in re.findall(r"^from (batchlab[\w.]*) import \(?([\w, ]*)", text, re.M):
        modules.add(package)  # and a name that is a submodule (`from batchlab import provenance`)
        modules.update(f"{package}.{n.strip()}" for n in names.split(",") if (PACKAGE.parent / package.replace(".", "/") / f"{n.strip()}.py").exists())
    assert {"batchlab.config", "batchlab.provenance", "batchlab.data.catalog"} <= modules
    code = f"import sys\nimport {', '.join(sorted(modules))}\nprint([m for m in ('torch', 'pandas') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_device_type_resolves_auto_like_resolve_device():
    from batchlab.devices import device_type, machine_has_gpu_nodes, resolve_device

    assert device_type("auto") == resolve_device("auto").type
    assert device_type("cpu") == "cpu"
    if not machine_has_gpu_nodes():  # the shortcut's premise: torch sees no GPU without the nodes
        import torch

        assert not torch.cuda.is_available()
