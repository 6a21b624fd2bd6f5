"""Where a run computes: a device name from the parameters, checked against this machine."""
from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; ``ValueError`` naming ``device`` when unusable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: not a torch device: {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return dev
