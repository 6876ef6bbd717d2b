"""The device a job computes on: `auto`, `cpu` or `cuda` as torch sees this machine.

Which of the machine's GPUs a job gets is batchlab.gpus's business; claim it before calling
`resolve_device`, whose `torch.cuda.is_available()` initialises CUDA.
"""

from __future__ import annotations

import glob
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Device nodes that CUDA (NVIDIA) and ROCm (AMD) need: torch sees no GPU on a machine without them.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/kfd")


def machine_has_gpu_nodes() -> bool:
    """Whether this machine has a GPU's device nodes; False means torch can see no GPU here."""
    return any(glob.glob(pattern) for pattern in GPU_DEVICE_NODES)


def device_type(name: str = "auto") -> str:
    """`resolve_device(name).type`, without importing torch (seconds) on a machine with no GPU nodes.

    The Snakefile resolves `auto` on every parse: in each snakemake process, and under a cluster
    executor in each job's own."""
    if name == "auto" and not machine_has_gpu_nodes():
        return "cpu"
    return resolve_device(name).type


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)
