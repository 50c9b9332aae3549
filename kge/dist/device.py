"""The device seam: every tensor placement decision goes through here (CPU, CUDA; IPU later)."""

from __future__ import annotations

import torch

from kge.common.errors import KgeInputError


def resolve_device(name: str = "auto") -> torch.device:
    """Map the config's ``device`` to a torch device; 'auto' picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise KgeInputError("config key 'device' = cuda but torch sees no CUDA device; use 'auto' or 'cpu'")
    if name not in ("cpu", "cuda"):
        raise KgeInputError(f"config key 'device' = {name!r}; expected auto, cpu or cuda")
    return torch.device(name)


def describe(device: torch.device) -> str:
    """Human-readable hardware line for the submission metadata."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    import os

    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
