"""The device a job computes on: `auto`, `cpu` or `cuda` as torch sees this machine.

Which of the machine's GPUs a job gets is batchlab.gpus's business; claim it before calling
`resolve_device`, whose `torch.cuda.is_available()` initialises CUDA.
"""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)
