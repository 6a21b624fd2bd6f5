"""Files and content keys: canonical JSON, sha256 keys, atomic writes (no torch, no numpy needed).

* :func:`to_jsonable` makes arrays, tensors and numpy scalars plain lists and numbers (anything
  with a ``tolist()`` method), NaN/±inf ``None`` by default, paths strings;
* :func:`canonical_json` is the one text a value hashes by (sorted keys, no spaces, ASCII) and
  :func:`content_key` its sha256: run hashes, checkpoint keys and partial-state keys all use it;
* :func:`atomic_write_bytes` / :func:`atomic_write_json` write through a temporary file in the
  same folder and ``os.replace``, so a file is either complete or absent.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def to_jsonable(obj: Any, nonfinite_to_none: bool = True) -> Any:
    """Mappings, sequences, arrays and tensors (``tolist()``) to plain JSON values, recursively.

    Non-finite floats become ``None``, or stay floats with ``nonfinite_to_none=False`` (for
    ``json.dumps(allow_nan=True)``); paths become strings."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, nonfinite_to_none) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nonfinite_to_none) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):  # numpy's float64 too
        obj = float(obj)
        return obj if math.isfinite(obj) or not nonfinite_to_none else None
    if isinstance(obj, Path):
        return str(obj)
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        if hasattr(obj, "detach"):  # a torch tensor, possibly on a device or requiring grad
            obj = obj.detach().cpu()
        return to_jsonable(obj.tolist(), nonfinite_to_none)
    return obj


def canonical_json(obj: Any) -> str:
    """One JSON text per value: :func:`to_jsonable` (non-finite floats kept as ``NaN``/``Infinity``),
    sorted keys, no whitespace, ASCII. The input of every content hash in the project."""
    return json.dumps(to_jsonable(obj, nonfinite_to_none=False), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)


def content_key(obj: Any) -> str:
    """sha256 (hex) of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    """The JSON value in ``path`` (UTF-8); ``ValueError`` naming the file when it holds none."""
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not readable JSON ({exc})") from None
