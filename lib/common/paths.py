"""Paths relative to the repository root, so that a notebook opened from ``notebooks/`` and a
papermill run from the root read and write the same files."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the package is installed editable from the repository


def repo_path(path: str | os.PathLike) -> Path:
    """``path`` itself when absolute (``~`` expanded), else ``ROOT / path``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p
