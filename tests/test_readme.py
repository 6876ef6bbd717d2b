"""README.md's commands run as written, without the heavy work.

Every line of its ```bash blocks is run in the checkout: a `make` line as `make -n`, then the
commands make would run (the config check, the estimate and the smoke data for real, snakemake as
a dry run); a snakemake line as a dry run (`-n`: it builds the whole DAG, profile included, and
submits nothing); a `python -m batchlab` line for real where it is cheap. A line of any other
kind fails: this file must learn to check it. Its ```python blocks run against a results tree of
a few real, tiny runs. The README also stays short, and its relative links lead to files.

Each line runs in a stage of its own: a folder whose entries link to the checkout's, so that what
its commands write (snakemake's .snakemake/, the smoke runs' data/fake/) stays out of the checkout,
and the lines can run a few at once. Those runs are marked `workflow` (about 20 s on 2 cores), so
`make check` leaves them to `make test`; the rest takes a second.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from batchlab.config import build_grid, build_stacks, check_config, load_config_file
from batchlab.data.mnist import FASHION_MNIST_ROOT
from batchlab.data.mnist1d import prepare_mnist1d
from batchlab.io import write_parquet
from batchlab.tables import curves_table, runs_table
from batchlab.train.loop import train_stack
from tests.conftest import REPO, TINY_CONFIG

README = REPO / "README.md"
MAX_LINES = 150
BIN = Path(sys.executable).parent
# what the stage links to: everything the README's commands read
STAGED = ("Makefile", "Snakefile", "config.yaml", "config", "workflow", "scripts", "batchlab", "benchmarks",
          "pyproject.toml", ".venv")
# the batchlab subcommands cheap enough to run for real (`forget` deletes results: never run here)
CHEAP_BATCHLAB = ("check-config", "estimate", "smoke-data")
SNAKEMAKE = re.compile(r"^(\S*/)?snakemake(\s|$)")
BATCHLAB = re.compile(r"^(\S*/)?python3?\s+-m\s+batchlab\s+(\S+)")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)]


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a # that starts a word outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.strip()


def shell_lines(text: str) -> list[str]:
    lines = []
    for lang, body in fenced_blocks(text):
        if lang in ("bash", "sh", "shell", "console"):
            lines += [cmd for raw in body.splitlines() if (cmd := strip_comment(raw.strip()))]
    return lines


def python_blocks(text: str) -> list[str]:
    return [body for lang, body in fenced_blocks(text) if lang in ("python", "py")]


TEXT = README.read_text()
SHELL_LINES = shell_lines(TEXT)
PYTHON_BLOCKS = python_blocks(TEXT)


def sh(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def dry(command: str) -> str:
    return f"{command} -n"


def stage(root: Path) -> Path:
    root.mkdir()
    for name in STAGED:
        target = REPO / name
        if name == ".venv" and not target.exists():  # tests run from another environment: its snakemake
            target = Path(sys.prefix)
        (root / name).symlink_to(target)
    # a user who runs a preset has put the data sets that cannot be downloaded (its text corpora) where it reads them
    for preset in (REPO / "config").glob("*.yaml"):
        for options in (load_config_file(preset).get("datasets") or {}).values():
            if "root" in options and "download" not in options and not Path(options["root"]).is_absolute():
                (root / options["root"]).mkdir(parents=True, exist_ok=True)
    return root


def check_line(line: str, root: Path) -> list[tuple[str, subprocess.CompletedProcess | None]]:
    """The commands run for one README line, in order, up to the first that failed; None where
    there is no way to check the line."""
    steps = []

    def run(what: str, command: str) -> bool:
        steps.append((what, sh(command, root)))
        return steps[-1][1].returncode == 0

    words = line.split()
    if words[0] == "make":
        listing = " ".join(["make", "-n", *words[1:]])
        if run(f"`{listing}`", listing):
            # what make would run: the cheap commands for real, snakemake dry
            for command in (c.strip() for c in steps[-1][1].stdout.splitlines()):
                if SNAKEMAKE.match(command):
                    ok = run(f"`{dry(command)}` (what `{line}` runs, dry)", dry(command))
                elif (m := BATCHLAB.match(command)) and m[2] in CHEAP_BATCHLAB:
                    ok = run(f"`{command}` (what `{line}` runs)", command)
                else:
                    continue  # make's own: installing .venv, pytest, apt-get
                if not ok:
                    break
    elif SNAKEMAKE.match(line):
        run(f"`{dry(line)}`", dry(line))
    elif (m := BATCHLAB.match(line)) and m[2] in CHEAP_BATCHLAB:
        run(f"`{line}`", line)
    else:
        steps.append((line, None))
    return steps


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, list]:
    """Every README shell line checked, each in a stage of its own, a few at once."""
    base = tmp_path_factory.mktemp("stages")
    missing = [name for name in STAGED if name != ".venv" and not (REPO / name).exists()]
    assert not missing, f"missing from the checkout: {missing}"
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        futures = {line: pool.submit(check_line, line, stage(base / f"checkout{i}")) for i, line in enumerate(SHELL_LINES)}
    return {line: future.result() for line, future in futures.items()}


@pytest.mark.workflow  # runs snakemake (dry runs, about 20 s in all): not in `make check`
@pytest.mark.parametrize("line", SHELL_LINES)
def test_readme_command_runs(line, outcomes):
    steps = outcomes[line]
    what, result = steps[-1]
    fashion_mnist = Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz"
    if "fashion_mnist" in line and not fashion_mnist.is_file() and result is not None and result.returncode:
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed: {fashion_mnist} missing; `make datasets` installs it")
    if result is None:
        pytest.fail(f"README line `{line}`: tests/test_readme.py does not know how to check it; teach it")
    assert result.returncode == 0, (
        f"README line `{line}`: {what} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


@pytest.fixture(scope="module")
def results_tree(tmp_path_factory) -> Path:
    """results/tables/{runs,curves}.parquet of the tiny config's four runs, trained for real (under a second)."""
    import torch

    root = tmp_path_factory.mktemp("results_tree")
    config = check_config(copy.deepcopy(TINY_CONFIG))
    grid = build_grid(config)
    data = root / "results/data/mnist1d.npz"
    data.parent.mkdir(parents=True)
    prepare_mnist1d(data, **config["datasets"]["mnist1d"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for stack in build_stacks(config, grid).values():
            train_stack([grid[r] for r in stack.runs], data, [root / "results/runs" / r for r in stack.runs], "cpu",
                        progress=False)
    finally:
        torch.set_num_threads(threads)
    run_dirs = [root / "results/runs" / r for r in grid]
    summaries = [d / "run.json" for d in run_dirs]
    (root / "results/tables").mkdir()
    write_parquet(runs_table(summaries), root / "results/tables/runs.parquet")
    write_parquet(curves_table(summaries, [d / "metrics.parquet" for d in run_dirs]), root / "results/tables/curves.parquet")
    return root


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"python{i}" for i in range(len(PYTHON_BLOCKS))])
def test_readme_python_runs(block, results_tree, monkeypatch, capsys):
    monkeypatch.chdir(results_tree)
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip(), "the README's Python block printed nothing"


def test_readme_has_commands_to_check():
    assert any(line.startswith("make demo") for line in SHELL_LINES)
    assert any(line.startswith("make test") for line in SHELL_LINES)
    assert PYTHON_BLOCKS


def test_readme_is_short():
    n = len(TEXT.splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines, more than {MAX_LINES}: move the detail to docs/"


def test_readme_links_lead_to_files():
    links = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", TEXT)
    local = [link.split("#")[0] for link in links if "://" not in link and not link.startswith(("#", "mailto:"))]
    assert local
    missing = [link for link in local if not (REPO / link).is_file()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_report_screenshot_is_small():
    image = REPO / "docs/report.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.stat().st_size < 300_000
