"""One GPU per training job on a workstation: a lock file per GPU slot, then CUDA_VISIBLE_DEVICES.

Snakemake counts the `gpu` resource but hands out no device ids, so without this every job
lands on GPU 0. A job takes an exclusive, non-blocking `fcntl.flock` on one lock file per
(GPU id, slot), waits while all are held, and sets CUDA_VISIBLE_DEVICES to the GPU it got.
flock rather than a pid file: the kernel drops the lock when its process dies, by SIGKILL or
the OOM killer too, so a dead job never leaves a GPU claimed and no stale file needs judging.

Claim before torch touches CUDA. The CUDA driver reads CUDA_VISIBLE_DEVICES once, when it
initialises, and `torch.cuda.is_available()` already initialises it (cudaGetDeviceCount) while
`torch.cuda.is_initialized()` still answers False; importing torch is harmless. That is also
why the GPUs are counted by `nvidia-smi -L` in a subprocess rather than through torch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = "/tmp/batchlab-gpu-locks"
_outer: list[str | None] = []  # CUDA_VISIBLE_DEVICES as each claim held in this process found it


def parse_nvidia_smi_list(text: str) -> list[int]:
    """GPU indices in `nvidia-smi -L` output; its indented MIG lines are parts of a GPU, not GPUs."""
    return [int(m[1]) for m in re.finditer(r"^GPU (\d+):", text, flags=re.M)]


def nvidia_smi_gpus() -> list[int]:
    """The machine's GPU indices, or [] where there is no NVIDIA driver."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi_list(out)


def assigned_elsewhere() -> str | None:
    """Who already gave this job its GPUs, if anyone: then claiming one would fight the scheduler."""
    if "SLURM_JOB_ID" in os.environ:
        return f"SLURM job {os.environ['SLURM_JOB_ID']}"
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}, set before the job"
    return None


def job_gpu_ids(config: dict, device: str | None = None) -> list[int]:
    """The GPU ids a training job may claim under the checked config; [] claims none.

    `device`: the job's device, `auto` or resolved (`cpu`, `cuda`); by default the config's."""
    if config["gpus"] != "auto":
        return list(config["gpus"])
    if (device or config["device"]) == "cpu":
        return []
    if who := assigned_elsewhere():
        log.info("no GPU claimed: %s assigns this job's GPUs", who)
        return []
    return nvidia_smi_gpus()


def lock_path(lock_dir: str | os.PathLike, gpu: int | str, slot: int) -> Path:
    return Path(lock_dir) / f"gpu{gpu}.slot{slot}.lock"


def _make_lock_dir(lock_dir: Path) -> None:
    lock_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock_dir.mkdir()
    except FileExistsError:
        return
    lock_dir.chmod(0o1777)  # as /tmp: every user's jobs claim from the same locks, and none deletes another's


def _open_lock(path: Path) -> int:
    while True:
        with contextlib.suppress(FileNotFoundError):
            return os.open(path, os.O_RDONLY)  # flock needs no write access, so other users' files do
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue  # another job created it between the two opens
        except PermissionError:
            mode = stat.S_IMODE(os.stat(path.parent).st_mode)
            raise PermissionError(
                errno.EACCES, f"cannot create the GPU lock {path}: its folder (mode {mode:o}, made by another user or "
                f"by hand) is not writable by this user. Every user's jobs claim GPUs from the same folder, so it must "
                f"be writable by all with the sticky bit, as /tmp is: its owner runs `chmod 1777 {path.parent}`; or "
                f"set gpu_lock_dir to a folder of your own") from None
        os.fchmod(fd, 0o666)  # whatever the umask: any user's claim touches it (see _try_lock)
        return fd


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding the lock, or None when another process holds it."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = os.fstat(fd).st_ino == os.stat(path).st_ino  # a file deleted since our open guards nothing
    except (BlockingIOError, FileNotFoundError):
        locked = False
    if not locked:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):
        os.utime(fd)  # age-based /tmp cleaners delete old files, held locks too; a claim makes it new
    return fd


def visible_devices(ids: list[int]) -> dict[int, str]:
    """What CUDA_VISIBLE_DEVICES must name for each of `ids`: the id itself, or, where the variable was
    set before (a scheduler's allocation, a user's restriction), the id-th device it lists, as CUDA
    counts them. Locks are taken on these names, so jobs of two allocations on one node never wait
    for each other's index 0."""
    preset = _outer[0] if _outer else os.environ.get("CUDA_VISIBLE_DEVICES")  # not a claim's own value
    if preset is None:
        return {gpu: str(gpu) for gpu in ids}
    listed = [name.strip() for name in preset.split(",") if name.strip()]
    if missing := [gpu for gpu in ids if gpu >= len(listed)]:
        raise ValueError(f"gpus {missing} are not among the {len(listed)} GPU(s) of CUDA_VISIBLE_DEVICES={preset!r}; "
                         f"with it set, `gpus` counts its devices from 0")
    return {gpu: listed[gpu] for gpu in ids}


def _claim_free_slot(ids: list[int], devices: dict[int, str], lock_dir: Path,
                     slots_per_gpu: int) -> tuple[int, int, int] | None:
    """(gpu, slot, descriptor) of a free slot, or None when all are held.

    Slot 0 of every GPU is tried before slot 1 of any, so jobs spread over the GPUs before two share one."""
    for slot in range(slots_per_gpu):
        for gpu in ids:
            if (fd := _try_lock(lock_path(lock_dir, devices[gpu], slot))) is not None:
                return gpu, slot, fd
    return None


def _check_cuda_untouched() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("claim_gpu ran after torch initialised CUDA: CUDA_VISIBLE_DEVICES would no longer take effect")


@contextlib.contextmanager
def claim_gpu(ids: list[int], lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR, slots_per_gpu: int = 1,
              poll_s: float = 1.0) -> Iterator[int | None]:
    """Hold one of `ids` (a GPU slot no other process holds) and make it this process's only CUDA device.

    Yields the GPU id, or None when `ids` is empty (nothing is claimed or changed). Waits, polling every
    `poll_s` seconds, while every slot is held: by jobs of another workflow or user, or when snakemake's
    `gpu` resource allows more jobs than GPUs x slots."""
    if not ids:
        yield None
        return
    _check_cuda_untouched()
    devices = visible_devices(ids)
    lock_dir = Path(lock_dir)
    _make_lock_dir(lock_dir)
    claimed = _claim_free_slot(ids, devices, lock_dir, slots_per_gpu)
    if claimed is None:
        log.info("waiting for a GPU: all %d slots of GPUs %s held (locks in %s)", len(ids) * slots_per_gpu, ids, lock_dir)
    while claimed is None:
        time.sleep(poll_s)
        claimed = _claim_free_slot(ids, devices, lock_dir, slots_per_gpu)
    gpu, slot, fd = claimed
    saved = {var: os.environ.get(var) for var in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[gpu]
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA numbers GPUs as nvidia-smi does, not fastest first
    log.info("claimed GPU %d (device %s; its slot %d, of %d per GPU; lock %s)", gpu, devices[gpu], slot, slots_per_gpu,
             lock_path(lock_dir, devices[gpu], slot))
    _outer.append(saved["CUDA_VISIBLE_DEVICES"])
    try:
        yield gpu
    finally:
        _outer.pop()
        for var, value in saved.items():  # once released the GPU is another job's to claim
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        log.info("released GPU %d", gpu)  # logged while still held: logged intervals of one GPU never overlap
        os.close(fd)


def claim_job_gpu(config: dict, device: str | None = None,
                  poll_s: float = 1.0) -> contextlib.AbstractContextManager[int | None]:
    """`claim_gpu` for a workflow job on `device` (see job_gpu_ids), with the ids, lock folder and
    slots of the checked config."""
    return claim_gpu(job_gpu_ids(config, device), config["gpu_lock_dir"], config["slots_per_gpu"], poll_s)
