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


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    """The CPU a result was computed on: its model name and the vector instructions torch's
    kernels use there (``AVX512``, ``AVX2``, …). Float32 sums may differ in their last digits
    between CPUs (docs/design.md §8). Imports torch: called by the experiments, not the runner."""
    import torch

    return {"cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
