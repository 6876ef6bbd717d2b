"""The SLURM profile on a real single-node SLURM (tests/slurm_cluster.py).

Two workflows go through `snakemake --executor slurm` at once, beside a local run of the first:
- a tiny config, whose tables and final weights must equal the local run's;
- one training stack under a one-minute time limit, paused by the test once under way: SLURM stops it
  at the limit, snakemake submits it again, and the second attempt resumes from the checkpoint that
  the first one wrote on SLURM's SIGTERM.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from batchlab import io
from tests.conftest import REPO, TINY_CONFIG
from tests.slurm_cluster import node_states, start_cluster

pytestmark = pytest.mark.workflow
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
TABLES = ("runs", "curves", "sharpness")
TARGETS = [f"results/tables/{name}.parquet" for name in TABLES]

# What this test cluster needs on top of the profile: squeue for status (no accounting database),
# a short first wait and short waits between status checks (a job of a few seconds would otherwise
# be seen done up to 10 s late, at each of the workflow's rounds), no account, no GPUs; one thread
# per job, as in the local run.
SLURM_ARGS = [
    "--profile", str(REPO / "workflow/profiles/slurm"),
    "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
    "--seconds-between-status-checks", "2", "--slurm-no-account",
    "--set-resources", "train_stack:gpu=0", "train_stack:cpus_per_task=1", "analyse_stack:cpus_per_task=1",
    "--set-threads", "train_stack=1", "analyse_stack=1", "interpolate_study=1",
]
SAME_MACHINE = {"device": "cpu", "threads_per_run": 1}

# One CNN stack that SLURM cuts at a one-minute time limit, enforced 60 to 90 s after its start. The
# test pauses the stack's training process (SIGSTOP) once it has trained past step 0, as a job on an
# overloaded node sits; at the limit SLURM sends SIGTERM and SIGCONT, on which the trainer writes its
# resume checkpoints at the next step and stops. Paused rather than kept training: a stack that trains
# through the limit burns a minute and a half of a core that the suite's other tests wait for, and
# needs its epochs calibrated to this machine's speed.
LONG_STACK = {
    "device": "cpu",
    "threads_per_run": 1,
    "datasets": {"mnist1d": {"n_train": 4000, "n_test": 500}},
    "studies": {"long": {
        "dataset": "mnist1d", "models": ["cnn"], "batch_sizes": [128], "lr_rules": ["constant"], "base_lrs": [0.05],
        "seeds": [0], "optimizer": {"name": "sgd", "momentum": 0.9}, "budget": {"epochs": 50},
        "eval": {"regular_points": 5, "log_points": 3}, "checkpoints": {"log_points": 3},
    }},
}
LONG_STACK_MARKER = "results/stacks/long/cnn/bs128/stack0.json"
LONG_RUN = "long/cnn/bs128/constant/lr0.05/seed0"


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(path.stem.removeprefix("step_")) for path in (run_dir / "checkpoints").glob("step_*.pt"))


def pause_training_under_way(cluster, workdir: Path, run_dir: Path, timeout_s: float = 300) -> int:
    """SIGSTOP the training process of `workdir`'s workflow on `cluster` once its run has a checkpoint past
    step 0 (training is under way, its SIGTERM handler in place); return that checkpoint's step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (steps := checkpoint_steps(run_dir)) and steps[-1] > 0:
            for pid in cluster.leftovers():  # the processes started in the cluster's environment
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    # the rule's script under python, not the shell line that starts it
                    if Path(os.fsdecode(argv[0])).name.startswith("python") and any(a.endswith(b".train.py") for a in argv) \
                            and Path(os.readlink(f"/proc/{pid}/cwd")) == workdir:
                        os.kill(pid, signal.SIGSTOP)
                        return steps[-1]
        time.sleep(0.2)
    raise AssertionError(f"no training process of {workdir} under way after {timeout_s} s")


def start_snakemake(workdir: Path, config: dict, targets: list[str], *args: str,
                    env: dict[str, str] | None = None) -> subprocess.Popen:
    # Targets first: options such as --set-threads take every word that follows them.
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    log = open(workdir / "snakemake.log", "w")
    return subprocess.Popen(
        [str(SNAKEMAKE), *targets, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", "config.yaml", *args],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
    )


def finish(process: subprocess.Popen, workdir: Path, timeout_s: float) -> str:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()
    output = (workdir / "snakemake.log").read_text()
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def slurm_runs(tmp_path_factory):
    """Both SLURM workflows and the local one, run at the same time; their directories and logs."""
    if os.environ.get("BATCHLAB_SKIP_SLURM") == "1":
        pytest.skip("BATCHLAB_SKIP_SLURM=1: not starting a SLURM cluster on this machine")
    root = tmp_path_factory.mktemp("slurm")
    cluster = start_cluster(root / "cluster")
    try:
        tiny = {**copy.deepcopy(TINY_CONFIG), **SAME_MACHINE}
        started = time.monotonic()
        slurm_tiny = start_snakemake(root / "slurm", tiny, TARGETS, *SLURM_ARGS, env=cluster.env)
        # min(...) keeps '=' out of the expression: one minute, then six.
        slurm_long = start_snakemake(root / "long", LONG_STACK, [LONG_STACK_MARKER], *SLURM_ARGS,
                                     "--set-resources", "train_stack:runtime=min(attempt,2)*5-4", env=cluster.env)
        local = start_snakemake(root / "local", tiny, TARGETS, "--cores", "1", "--scheduler", "greedy")
        paused_at = pause_training_under_way(cluster, root / "long", root / "long/results/runs" / LONG_RUN)
        outputs = {
            "local": finish(local, root / "local", 600),
            "slurm": finish(slurm_tiny, root / "slurm", 900),
            "long": finish(slurm_long, root / "long", 900),
        }
        print(f"SLURM workflows finished in {time.monotonic() - started:.0f} s")
        yield root, outputs, paused_at
    finally:
        cluster.stop()


def without_timing(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in table.columns if c.startswith("wall_time")]).sort_values(
        [c for c in ("run_id", "step", "metric", "epsilon") if c in table.columns], ignore_index=True)


def test_slurm_run_equals_local_run(slurm_runs):
    root, outputs, _ = slurm_runs
    assert "has been submitted with SLURM jobid" in outputs["slurm"]
    assert re.search(r"Group job analyses", outputs["slurm"]) and re.search(r"Group job tables", outputs["slurm"])
    for name in TABLES:
        local = without_timing(pd.read_parquet(root / "local/results/tables" / f"{name}.parquet"))
        slurm = without_timing(pd.read_parquet(root / "slurm/results/tables" / f"{name}.parquet"))
        pd.testing.assert_frame_equal(slurm, local, check_exact=True)
    runs = pd.read_parquet(root / "local/results/tables/runs.parquet")
    for run_id in runs["run_id"]:
        local_final = io.load_torch(root / "local/results/runs" / run_id / "final.pt")
        slurm_final = io.load_torch(root / "slurm/results/runs" / run_id / "final.pt")
        torch.testing.assert_close(slurm_final["model"], local_final["model"], rtol=0, atol=0)


def test_timed_out_stack_is_retried_and_resumes_from_its_checkpoint(slurm_runs):
    root, outputs, paused_at = slurm_runs
    assert "SLURM status is: 'TIMEOUT'" in outputs["long"], outputs["long"][-3000:]
    train_log = (root / "long/results/logs/train/long/cnn/bs128/stack0.log").read_text()
    resumed = [int(step) for step in re.findall(rf"resuming {re.escape(LONG_RUN)} from step (\d+)", train_log)]
    # from where SIGTERM found it (paused since its checkpoint at paused_at), not from an earlier step
    assert resumed and resumed[0] >= paused_at > 0, (paused_at, train_log[-3000:])
    marker = yaml.safe_load((root / "long" / LONG_STACK_MARKER).read_text())
    assert marker["runs"][LONG_RUN]["status"] == "completed"
    curves = pd.read_parquet(root / f"long/results/runs/{LONG_RUN}/metrics.parquet")
    assert curves["step"].tolist() == list(range(marker["runs"][LONG_RUN]["steps"] + 1))
    assert curves["batch_loss"].iloc[1:].notna().all()  # the resumed attempt kept the first one's steps


def finished_job_state(cluster, tmp_path: Path) -> str:
    """Submit a one-line job to `cluster` and return the state it ends in."""
    job = subprocess.run(["sbatch", "--parsable", "--chdir", str(tmp_path), "--wrap", "true"], capture_output=True,
                         text=True, env=cluster.env, timeout=60)
    assert job.returncode == 0, job.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-t", "all", "-j", job.stdout.strip(), "-o", "%T"], capture_output=True,
                               text=True, env=cluster.env, timeout=60).stdout.strip()
        if state not in ("", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return state
        time.sleep(0.5)
    return "still running after 60 s"


def test_two_test_clusters_share_a_machine_and_leave_its_own_alone(tmp_path):
    """Two test runs at once: each cluster has its own config, munge socket and ports; ending one leaves the other
    working, and the machine's own SLURM config and munge socket are never touched."""
    if os.environ.get("BATCHLAB_SKIP_SLURM") == "1":
        pytest.skip("BATCHLAB_SKIP_SLURM=1: not starting a SLURM cluster on this machine")
    machines = (Path("/etc/slurm/slurm.conf"), Path("/run/munge/munge.socket.2"))
    before = {path: path.exists() and path.stat().st_mtime_ns for path in machines}
    first = start_cluster(tmp_path / "first")
    try:
        second = start_cluster(tmp_path / "second")
        try:
            assert finished_job_state(first, tmp_path) == finished_job_state(second, tmp_path) == "COMPLETED"
        finally:
            second.stop()
        assert node_states(first) == ["idle"] and finished_job_state(first, tmp_path) == "COMPLETED"
        left = subprocess.Popen(["sleep", "600"], env=first.env)  # as a job's process that slurmd lost track of
    finally:
        first.stop()
    assert left.wait(timeout=10) == -signal.SIGKILL and first.leftovers() == []
    assert {path: path.exists() and path.stat().st_mtime_ns for path in machines} == before
