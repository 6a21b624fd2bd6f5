"""Resuming a run inside its notebook: ``<results>.json.partial`` holds the steps it has finished.

A full-profile grid point runs for hours in one notebook cell. When its kernel dies (Ctrl-C,
a killed job, the end of a session) the runner reruns the notebook, and the experiment picks up
after its last finished step instead of starting over. After each step the experiment saves its
accumulated state, atomically, as JSON; NaN and ±Infinity are written as such, so every float
reads back bit for bit and a resumed run gives the same numbers as an uninterrupted one. The
state is stored with a key, the sha256 of the run's parameters (:func:`lib.common.files.content_key`);
a partial file with another key (the parameters changed) is ignored and later overwritten.

The runner deletes the partial file when the run has finished and its results are written, and
before a ``--force`` rerun.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lib.common.files import atomic_write_bytes, content_key, to_jsonable

SUFFIX = ".partial"
FORMAT = 1  # bump when the layout of a saved state changes: older partial files are then ignored


def partial_path(results_path: str | os.PathLike) -> Path:
    """``results/<run>.json`` → ``results/<run>.json.partial`` (not a ``*.json`` result file)."""
    return Path(str(results_path) + SUFFIX)


class Checkpoint:
    """The partial state of one run: ``load()`` → the saved state or ``None``; ``save(state)``.

    ``parameters`` must determine the run's numbers (e.g. ``dataclasses.asdict`` of its params);
    a saved state counts only under the same parameters and :data:`FORMAT`."""

    def __init__(self, path: str | os.PathLike, parameters: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = content_key({"format": FORMAT, "parameters": parameters})

    def load(self) -> dict[str, Any] | None:
        """The state saved under this key; ``None`` if there is none, it is unreadable, or it was
        saved under other parameters."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("key") != self.key or not isinstance(saved.get("state"), dict):
            return None
        return saved["state"]

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (JSON-able after arrays become lists) atomically under this key."""
        state = to_jsonable(state, nonfinite_to_none=False)  # NaN and ±inf kept, floats round-trip exactly
        text = json.dumps({"key": self.key, "state": state}, allow_nan=True, separators=(",", ":"))
        atomic_write_bytes(self.path, text.encode("utf-8"))
