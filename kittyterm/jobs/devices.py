"""The compute device: `auto` takes a CUDA GPU, then Apple's GPU (MPS), then the CPU."""

from __future__ import annotations

from ..errors import UserError

CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(requested: str = "auto") -> str:
    """A torch device string for `requested`, checked against what this machine has."""
    import torch

    name = requested.strip().lower()
    mps = torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cpu":
        return name
    if name == "mps":
        if not mps:
            raise UserError("--device mps was asked for but this machine has no Apple GPU (MPS)")
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested} was asked for but no CUDA GPU is available")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPUs (cuda:0 …)")
        return name
    raise UserError(f"unknown device {requested!r}; use {CHOICES}")


def is_gpu(device: str) -> bool:
    return device.startswith("cuda") or device == "mps"
