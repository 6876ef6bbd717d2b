"""batchlab.gpus: each concurrent training job on a GPU of its own, with fake GPU ids on the CPU."""

from __future__ import annotations

import copy
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from batchlab import gpus
from batchlab.config import ConfigError, check_config
from batchlab.gpus import DEFAULT_LOCK_DIR, claim_gpu, claim_job_gpu, lock_path, parse_nvidia_smi_list
from tests.conftest import REPO, TINY_CONFIG

# A job of its own: claims one of the ids in argv[2], says so, holds it argv[3] seconds, reports the interval.
HOLDER = """
import json, logging, os, sys, time
from batchlab.gpus import claim_gpu
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
with claim_gpu(json.loads(sys.argv[2]), sys.argv[1], poll_s=0.05) as gpu:
    start = time.time()
    print(json.dumps({"claimed": gpu}), flush=True)
    time.sleep(float(sys.argv[3]))
    visible = os.environ["CUDA_VISIBLE_DEVICES"]
    end = time.time()
print(json.dumps({"gpu": gpu, "start": start, "end": end, "visible": visible}), flush=True)
"""


def holder(lock_dir: Path, ids: list[int], hold_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), json.dumps(ids), str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def overlapping(intervals: list[tuple[float, float]]) -> bool:
    ordered = sorted(intervals)
    return any(later[0] < earlier[1] for earlier, later in zip(ordered, ordered[1:]))


def checked(**top) -> dict:
    return check_config({**copy.deepcopy(TINY_CONFIG), **top})


def test_concurrent_processes_never_hold_the_same_gpu(tmp_path):
    procs = [holder(tmp_path, [0, 1], 0.5) for _ in range(5)]
    results, waits = [], []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
        waits.append(err.count("waiting for a GPU"))
    assert len(results) == 5  # every process got its turn
    for r in results:
        assert r["gpu"] in (0, 1) and r["visible"] == str(r["gpu"])
    for gpu in (0, 1):
        assert not overlapping([(r["start"], r["end"]) for r in results if r["gpu"] == gpu])
    assert max(waits) == 1  # five jobs for two GPUs: some waited, and each said so once


def test_jobs_spread_over_the_gpus_before_two_share_one(tmp_path):
    with claim_gpu([0, 1], tmp_path, slots_per_gpu=2) as a, claim_gpu([0, 1], tmp_path, slots_per_gpu=2) as b:
        with claim_gpu([0, 1], tmp_path, slots_per_gpu=2) as c, claim_gpu([0, 1], tmp_path, slots_per_gpu=2) as d:
            assert (a, b, c, d) == (0, 1, 0, 1)
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_a_killed_holder_frees_its_gpu(tmp_path):
    p = holder(tmp_path, [0], 600)
    assert json.loads(p.stdout.readline()) == {"claimed": 0}
    with open(lock_path(tmp_path, 0, 0)) as f:
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        p.kill()  # SIGKILL: no finally, no cleanup of its own
        p.wait(timeout=30)
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kernel dropped the dead process's lock
        fcntl.flock(f, fcntl.LOCK_UN)
    p.stdout.close()
    p.stderr.close()
    with claim_gpu([0], tmp_path) as gpu:
        assert gpu == 0


def test_claim_sets_cuda_visible_devices_while_held_and_restores_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with claim_gpu([3], tmp_path) as gpu:
        assert gpu == 3 and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with claim_gpu([], tmp_path) as gpu:  # nothing to claim: nothing taken, nothing set
        assert gpu is None and "CUDA_VISIBLE_DEVICES" not in os.environ


@pytest.mark.parametrize("preset", [{"CUDA_VISIBLE_DEVICES": "3"}, {"SLURM_JOB_ID": "42"}])
def test_auto_claims_nothing_where_a_scheduler_assigned_the_gpus(tmp_path, monkeypatch, preset):
    monkeypatch.setattr(gpus, "nvidia_smi_gpus", lambda: [0, 1])  # a machine with two GPUs
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for var, value in preset.items():
        monkeypatch.setenv(var, value)
    config = checked(device="cuda", gpu_lock_dir=str(tmp_path / "locks"))
    assert config["gpus"] == "auto"
    with claim_job_gpu(config) as gpu:
        assert gpu is None and os.environ.get("CUDA_VISIBLE_DEVICES") == preset.get("CUDA_VISIBLE_DEVICES")
    assert not (tmp_path / "locks").exists()


def test_auto_claims_a_gpu_on_cuda_and_none_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus, "nvidia_smi_gpus", lambda: [0, 1])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for device in ("cpu", "cuda", "auto"):
        with claim_job_gpu(checked(device=device, gpu_lock_dir=str(tmp_path))) as gpu:
            assert gpu == (None if device == "cpu" else 0)
            assert os.environ.get("CUDA_VISIBLE_DEVICES") == (None if device == "cpu" else "0")
    with claim_job_gpu(checked(device="auto", gpu_lock_dir=str(tmp_path)), "cpu") as gpu:  # auto, resolved to the CPU
        assert gpu is None
    monkeypatch.setattr(gpus, "nvidia_smi_gpus", lambda: [])  # auto on a machine without a GPU
    with claim_job_gpu(checked(device="auto", gpu_lock_dir=str(tmp_path))) as gpu:
        assert gpu is None


def test_explicit_ids_are_claimed_whatever_the_device(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with claim_job_gpu(checked(device="cpu", gpus=[2, 5], gpu_lock_dir=str(tmp_path))) as gpu:
        assert gpu == 2 and os.environ["CUDA_VISIBLE_DEVICES"] == "2"


def test_explicit_ids_count_within_a_preset_cuda_visible_devices(tmp_path, monkeypatch):
    # A SLURM allocation (or a user) made physical GPUs 4 and 6 visible: ids 0 and 1 are those two,
    # and the locks are on 4 and 6, so jobs of another allocation of this node do not wait for them.
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    config = checked(device="cuda", gpus=[0, 1], gpu_lock_dir=str(tmp_path))
    with claim_job_gpu(config) as first:
        assert first == 0 and os.environ["CUDA_VISIBLE_DEVICES"] == "4"
        with claim_gpu([0, 1], tmp_path) as second:
            assert second == 1 and os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu4.slot0.lock", "gpu6.slot0.lock"]
    with pytest.raises(ValueError, match=r"gpus \[2\] are not among the 2 GPU\(s\) of CUDA_VISIBLE_DEVICES='4,6'"):
        with claim_gpu([0, 2], tmp_path):
            pass


def test_claiming_after_torch_initialised_cuda_is_refused(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="after torch initialised CUDA"):
        with claim_gpu([0], tmp_path):
            pass


def test_lock_folder_is_shared_by_every_user(tmp_path):
    with claim_gpu([0], tmp_path / "locks"):
        assert (tmp_path / "locks").stat().st_mode & 0o7777 == 0o1777
        assert lock_path(tmp_path / "locks", 0, 0).stat().st_mode & 0o777 == 0o666



def test_a_lock_folder_other_users_cannot_write_is_explained(tmp_path):
    """Another user's claim (here: a forked child that becomes `nobody` when the tests run as root) in a folder
    made without mode 1777."""
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="batchlab-locks-test-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        locks = shared / "locks"
        locks.mkdir(mode=0o755)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child reports through the pipe)
            os.close(read)
            try:
                if os.getuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                else:
                    locks.chmod(0o555)
                with claim_gpu([0], locks):
                    message = "claimed"
            except PermissionError as exc:
                message = str(exc)
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            message = pipe.read()
        os.waitpid(child, 0)
        assert message.startswith(f"[Errno 13] cannot create the GPU lock {lock_path(locks, 0, 0)}: its folder (mode 7")
        assert f"`chmod 1777 {locks}`" in message and "gpu_lock_dir" in message
    finally:
        shutil.rmtree(shared, ignore_errors=True)

def test_nvidia_smi_list_counts_gpus_not_their_mig_parts(monkeypatch):
    text = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n  MIG 3g.40gb     Device  0: (UUID: MIG-a)\n"
            "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)\n")
    assert parse_nvidia_smi_list(text) == [0, 1]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert gpus.nvidia_smi_gpus() == []  # no driver: no GPU


def test_schema_defaults_and_refusals():
    config = checked()
    assert (config["gpus"], config["slots_per_gpu"], config["gpu_lock_dir"]) == ("auto", 1, DEFAULT_LOCK_DIR)
    for bad in ({"gpus": "all"}, {"gpus": []}, {"gpus": [0, 0]}, {"gpus": [-1]}, {"slots_per_gpu": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            checked(**bad)


LOG_LINE = re.compile(r"^(\S+ \S+) INFO batchlab\.gpus: (claimed|released) GPU (\d+)", flags=re.M)


def claim_interval(log: str) -> tuple[int, float, float]:
    """(gpu, claimed at, released at) from a job's log."""
    events = {kind: (int(gpu), datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp())
              for t, kind, gpu in LOG_LINE.findall(log)}
    assert events["claimed"][0] == events["released"][0], log
    return events["claimed"][0], events["claimed"][1], events["released"][1]


@pytest.mark.workflow
def test_concurrent_training_jobs_of_the_workflow_hold_different_gpus(tmp_path):
    # fake GPU ids, training on the CPU: two stacks, so two training jobs at once on two cores
    config = {**copy.deepcopy(TINY_CONFIG), "gpus": [0, 1], "gpu_lock_dir": str(tmp_path / "locks")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    stacks = [f"tiny/mlp/bs{b}/stack0" for b in (16, 64)]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", "config.yaml", "--cores", "2", "--scheduler", "greedy",
         *(f"results/stacks/{s}.json" for s in stacks)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    claims = []
    for stack in stacks:
        gpu, start, end = claim_interval((tmp_path / f"results/logs/train/{stack}.log").read_text())
        assert json.loads((tmp_path / f"results/stacks/{stack}.json").read_text())["gpu"] == gpu
        claims.append((gpu, start, end))
    (gpu_a, start_a, end_a), (gpu_b, start_b, end_b) = claims
    assert start_a < end_b and start_b < end_a  # the two jobs held their GPUs at the same time
    assert {gpu_a, gpu_b} == {0, 1}
