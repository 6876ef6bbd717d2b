"""A real single-node SLURM for the tests: munged, slurmctld and slurmd on this machine.

Debian's slurmctld, slurmd, slurm-client and munge (`make slurm` installs them as root) are
started here, each run of the tests with a cluster of its own that touches nothing of the
machine's: its slurm.conf, munge key and socket, state, logs and ports all lie in the test's
folder, so two test runs on one machine (or a real cluster beside them) cannot break each
other. Facts this layout rests on:
- the clients find the config through SLURM_CONF (Cluster.env); inside a job, snakemake's SLURM
  plugins drop every SLURM_* variable before calling srun, so the client commands are reached
  through wrappers (Cluster.bin, first on the PATH) that set it again;
- munge is reached through the socket that slurm.conf names (AuthInfo), its key a random one;
- without an accounting database, `sacct` never sees a job finish: the executor plugin is told
  `--slurm-status-command squeue`, and MinJobAge keeps finished jobs visible to squeue for
  longer than the plugin waits between checks;
- the node has no GPUs: jobs ask for `gpu=0`, since a node without GPUs refuses `--gpus`;
- a group job asks for the sum of its parallel members' CPUs and memory, more than this
  machine has: the node declares CPUS and MEMORY_MB (config_overrides lets slurmd accept
  that), and memory is not a consumable, so jobs share the real cores as local jobs do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CPUS, MEMORY_MB = 16, 256_000
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")  # the daemons and the clients used
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "sinfo", "sacct", "scontrol")  # wrapped: see the module docstring

# KillWait: seconds between SIGTERM and SIGKILL at a time limit (the trainer saves on SIGTERM).
# MinJobAge: seconds a finished job stays visible to squeue; at least 3 x the plugin's wait
# before its first status check, or a job that ends between two checks is lost.
CONF_TEMPLATE = """# written by batchlab's tests (tests/slurm_cluster.py)
ClusterName=batchlab-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmUnavailable(RuntimeError):
    pass


@dataclass
class Cluster:
    state: Path
    socket_dir: Path
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.state / "slurm.conf"

    @property
    def bin(self) -> Path:
        return self.state / "bin"

    @property
    def env(self) -> dict[str, str]:
        """The environment in which the client commands, and snakemake's SLURM plugins, talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            if daemon := self.daemons.pop(name, None):
                _stop(daemon)
        for pid in self.leftovers():  # a job killed at its limit can leave a process that slurmd no longer tracks
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """Processes started in this cluster's environment (their environment at start names its slurm.conf)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with contextlib.suppress(OSError):
                if mark in environ.read_bytes().split(b"\0") and int(environ.parent.name) != os.getpid():
                    found.append(int(environ.parent.name))
        return found


def _stop(daemon: subprocess.Popen, wait_s: float = 15) -> None:
    # By the pid of the daemon we started, never by name: the machine may run others.
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(wait_s)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def _check_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise SlurmUnavailable(f"{', '.join(missing)} not found: `make slurm` (as root) installs Debian's SLURM and munge")
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting slurmctld and slurmd for the tests needs root")


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    # Each daemon runs in the foreground as our child, so its pid is the one we stop.
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until(check, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise SlurmUnavailable(f"timed out waiting for {what}")


def node_states(cluster: Cluster) -> list[str]:
    return subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=cluster.env).stdout.split()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _write_wrappers(cluster: Cluster) -> None:
    cluster.bin.mkdir(exist_ok=True)
    for client in CLIENTS:
        if real := shutil.which(client):
            wrapper = cluster.bin / client
            wrapper.write_text(f'#!/bin/sh\nexport SLURM_CONF={cluster.conf}\nexec {real} "$@"\n')
            wrapper.chmod(0o755)


def start_cluster(state: Path) -> Cluster:
    """Start munged, slurmctld and slurmd with a one-node config of their own; `Cluster.stop` ends them."""
    _check_tools()
    state.mkdir(parents=True, exist_ok=True)
    for sub in ("ctld", "d", "munge"):
        (state / sub).mkdir(exist_ok=True)
    key = state / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    # munged wants every folder above its socket open to every user, which the tests' own folders are not
    cluster = Cluster(state, socket_dir=Path(tempfile.mkdtemp(prefix="batchlab-test-munge-", dir="/tmp")))
    cluster.socket_dir.chmod(0o755)
    munge_socket = cluster.socket_dir / "munge.socket"
    host = socket.gethostname().split(".")[0]
    cluster.conf.write_text(CONF_TEMPLATE.format(host=host, state=state, cpus=CPUS, memory=MEMORY_MB,
                                                 ctld_port=_free_port(), d_port=_free_port(), munge_socket=munge_socket))
    _write_wrappers(cluster)
    try:
        cluster.daemons["munged"] = _start(["munged", "-F", f"--socket={munge_socket}", f"--key-file={key}",
                                            f"--pid-file={state}/munge/munged.pid", f"--seed-file={state}/munge/seed",
                                            f"--log-file={state}/munge/munged.log"], state / "munge/out.log")
        _wait_until(munge_socket.exists, "munged's socket")
        cluster.daemons["slurmctld"] = _start(["slurmctld", "-D", "-i", "-f", str(cluster.conf)], state / "slurmctld.out")
        cluster.daemons["slurmd"] = _start(["slurmd", "-D", "-f", str(cluster.conf)], state / "slurmd.out")
        _wait_until(lambda: (states := node_states(cluster)) and all(s == "idle" for s in states),
                    "the node to come up idle (see slurmctld.log and slurmd.log in " + str(state) + ")")
    except BaseException:
        cluster.stop()
        raise
    return cluster
