"""The versions recorded with every result and manifest (read from installed metadata; nothing
heavy is imported)."""
from __future__ import annotations

import importlib.metadata
import platform

# name in the results / manifest → distribution name
VERSIONED_PACKAGES = {
    "torch": "torch", "numpy": "numpy", "scipy": "scipy", "scikit-learn": "scikit-learn",
    "matplotlib": "matplotlib", "papermill": "papermill", "nbclient": "nbclient", "nbformat": "nbformat",
    "ipykernel": "ipykernel", "pyyaml": "PyYAML",
}


def versions() -> dict[str, str | None]:
    """Python and package versions."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in VERSIONED_PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out
