"""Atomic file writes and JSON helpers: a result file is either complete or absent."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def to_jsonable(obj: Any, nonfinite_to_none: bool = True) -> Any:
    """Tensors and arrays to lists, NaN/inf to ``None`` (kept as floats with
    ``nonfinite_to_none=False``, for ``json.dumps(allow_nan=True)``), paths to strings, recursively."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, nonfinite_to_none) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nonfinite_to_none) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist(), nonfinite_to_none)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), nonfinite_to_none)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) or not nonfinite_to_none else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and reports are for sharing
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` (made JSON-able by :func:`to_jsonable`) atomically, indented, sorted keys."""
    text = json.dumps(to_jsonable(obj), indent=1, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
