"""Where and with what a run computes: the device and the versions recorded with every result."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

# name in the results / manifest → distribution name
VERSIONED_PACKAGES = {
    "torch": "torch", "numpy": "numpy", "scipy": "scipy", "scikit-learn": "scikit-learn",
    "matplotlib": "matplotlib", "papermill": "papermill", "nbclient": "nbclient", "nbformat": "nbformat",
    "ipykernel": "ipykernel", "pyyaml": "PyYAML",
}


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


def versions() -> dict[str, str | None]:
    """Python and package versions, from installed metadata (nothing heavy is imported)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in VERSIONED_PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out
