"""Paths relative to the repository root, so that a notebook opened from ``notebooks/`` and a
papermill run from the root read and write the same files.

The root is the checkout whose ``params/`` and ``notebooks/`` the runs use:

* ``STE_REPORT_ROOT`` when set (the runner sets it for its kernels);
* else the checkout this package lives in, when it is installed editable (``run_all.sh``);
* else, for a package installed into site-packages (``pip install .``), the nearest folder at or
  above the working directory that has ``params/`` and ``notebooks/``;
* else the working directory.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "STE_REPORT_ROOT"


def _is_checkout(folder: Path) -> bool:
    return (folder / "params").is_dir() and (folder / "notebooks").is_dir()


def find_root() -> Path:
    """The repository root by the rules of the module docstring."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    here = Path(__file__).resolve().parents[2]
    if _is_checkout(here):
        return here
    cwd = Path.cwd().resolve()
    return next((d for d in (cwd, *cwd.parents) if _is_checkout(d)), cwd)


ROOT = find_root()


def repo_path(path: str | os.PathLike) -> Path:
    """``path`` itself when absolute (``~`` expanded), else ``ROOT / path``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p
