"""A real single-node SLURM for the tests: munged, slurmctld and slurmd on this machine.

Debian's slurmctld, slurmd, slurm-client and munge (`make slurm` installs them as root) are
started here with a config of our own and stopped again, by their process ids, when the tests
end, and the config removed, so the machine is left as it was found. Facts this layout rests on:
- the job step plugin drops SLURM_CONF, so the config must sit at /etc/slurm/slurm.conf; a
  config that this module did not write is never overwritten (the machine has a cluster of its
  own), and the tests that need SLURM fail saying so;
- without an accounting database, `sacct` never sees a job finish: the executor plugin is told
  `--slurm-status-command squeue`, and MinJobAge keeps finished jobs visible to squeue for
  longer than the plugin waits between checks;
- the node has no GPUs: jobs ask for `gpu=0`, since a node without GPUs refuses `--gpus`;
- a group job asks for the sum of its parallel members' CPUs and memory, more than this
  machine has: the node declares CPUS and MEMORY_MB (config_overrides lets slurmd accept
  that), and memory is not a consumable, so jobs share the real cores as local jobs do.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by batchlab's tests (tests/slurm_cluster.py)"
CPUS, MEMORY_MB = 16, 256_000
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")  # the daemons and the clients used

# KillWait: seconds between SIGTERM and SIGKILL at a time limit (the trainer saves on SIGTERM).
# MinJobAge: seconds a finished job stays visible to squeue; at least 3 x the plugin's wait
# before its first status check, or a job that ends between two checks is lost.
CONF_TEMPLATE = """{marker}
ClusterName=batchlab-test
SlurmctldHost={host}
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
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            if daemon := self.daemons.pop(name, None):
                _stop(daemon)
        if SLURM_CONF.exists() and MARKER in SLURM_CONF.read_text():
            SLURM_CONF.unlink()  # the machine as it was: no cluster config of ours left behind


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
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text():
        raise SlurmUnavailable(f"{SLURM_CONF} belongs to another cluster: the tests will not replace it")


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


def _node_idle() -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    return bool(out) and all(state == "idle" for state in out)


def start_cluster(state: Path) -> Cluster:
    """Start munged, slurmctld and slurmd with a one-node config; `Cluster.stop` ends them."""
    _check_tools()
    state.mkdir(parents=True, exist_ok=True)
    for sub in ("ctld", "d", "munge"):
        (state / sub).mkdir(exist_ok=True)
    host = socket.gethostname().split(".")[0]
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(CONF_TEMPLATE.format(marker=MARKER, host=host, state=state, cpus=CPUS, memory=MEMORY_MB))
    cluster = Cluster(state)
    try:
        socket_path = Path("/run/munge/munge.socket.2")
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        cluster.daemons["munged"] = _start(["munged", "-F", "--force", f"--pid-file={state}/munge/munged.pid",
                                         f"--log-file={state}/munge/munged.log"], state / "munge/out.log")
        _wait_until(socket_path.exists, "munged's socket")
        cluster.daemons["slurmctld"] = _start(["slurmctld", "-D", "-i"], state / "slurmctld.out")
        cluster.daemons["slurmd"] = _start(["slurmd", "-D"], state / "slurmd.out")
        _wait_until(_node_idle, "the node to come up idle (see slurmctld.log and slurmd.log in " + str(state) + ")")
    except BaseException:
        cluster.stop()
        raise
    return cluster
