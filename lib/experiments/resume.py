"""Resuming a run inside its notebook: the steps it has finished, saved beside its results.

A full-profile grid point runs for hours in one notebook cell. When its kernel dies (Ctrl-C, a
killed job, the end of a session) the runner reruns the notebook, and the experiment picks up
after its last finished step instead of starting over. :class:`Steps` is the one helper every
experiment uses for that: it says which steps an earlier attempt finished, saves the state after
each step and reports the progress the runner shows (:mod:`lib.experiments.progress`).

The state is saved atomically as JSON in ``<results>.json.partial`` (:class:`Checkpoint`); NaN and
±Infinity are written as such, so every float reads back bit for bit and a resumed run gives the
same numbers as an uninterrupted one. It is stored with a key, the content key of the run's
parameters (:func:`lib.common.files.content_key`); a partial file with another key (the
parameters changed) is ignored and later overwritten. The runner deletes the partial file when
the run has finished and its results are written, and before a ``--force`` rerun.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from lib.common.files import atomic_write_bytes, content_key, to_jsonable
from lib.experiments.progress import Reporter

SUFFIX = ".partial"
FORMAT = 3  # bump when the layout of a saved state changes: older partial files are then ignored


def partial_path(results_path: str | os.PathLike) -> Path:
    """``results/<run>.json`` → ``results/<run>.json.partial`` (not a ``*.json`` result file)."""
    return Path(str(results_path) + SUFFIX)


class Checkpoint:
    """The partial state of one run: ``load()`` → the saved state or ``None``; ``save(state)``.

    ``parameters`` must determine the run's numbers (e.g. ``dataclasses.asdict`` of its params);
    a saved state counts only under the same parameters and :data:`FORMAT`."""

    def __init__(self, path: str | os.PathLike, parameters: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.key = content_key({"format": FORMAT, "parameters": dict(parameters)})

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


class Steps:
    """The ``total`` steps of one run, numbered from 0, of about equal cost.

    ``on_step(done, total, what)`` is called after each step; when it is a
    :class:`~lib.experiments.progress.Reporter`, the state is also saved beside the reporter's
    results file after each step, and a run started again with the same ``parameters`` resumes:
    :attr:`data` is what the last finished step saved (``None`` on a fresh start), :meth:`done`
    tells the steps to skip, and the progress reports that at once. :meth:`elapsed` is the
    compute time of all attempts together, :meth:`timing` that and their CPU time."""

    def __init__(self, parameters: Mapping[str, Any], total: int,
                 on_step: Callable[[int, int, str], None] | None = None) -> None:
        self.total, self.on_step = int(total), on_step
        self.checkpoint = Checkpoint(partial_path(on_step.results_path), parameters) \
            if isinstance(on_step, Reporter) else None
        saved = self.checkpoint.load() if self.checkpoint else None
        self.finished = int(saved["finished"]) if saved else 0
        self.data: Any = saved["data"] if saved else None
        self._elapsed_before = float(saved["elapsed_s"]) if saved else 0.0
        self._cpu_before = float(saved.get("cpu_s", 0.0)) if saved else 0.0  # states saved before cpu_s: 0
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()
        if isinstance(on_step, Reporter):
            on_step.begin(self.finished, self.total)

    def done(self, index: int) -> bool:
        """Whether step ``index`` was finished by an earlier attempt (so it is skipped)."""
        return index < self.finished

    def step_finished(self, index: int, data: Any, what: str = "") -> None:
        """Step ``index`` is finished and ``data`` (JSON-able) is the run's state after it."""
        self.finished = index + 1
        if self.checkpoint:
            self.checkpoint.save({"finished": self.finished, "data": data, "elapsed_s": self.elapsed(),
                                  "cpu_s": self.cpu()})
        if self.on_step:
            self.on_step(self.finished, self.total, what)

    def elapsed(self) -> float:
        """Seconds of compute of this run, over all its attempts."""
        return self._elapsed_before + time.perf_counter() - self._start

    def cpu(self) -> float:
        """CPU seconds of this run's process (all its threads), over all its attempts: the
        compute time that does not grow when other work shares the machine."""
        return self._cpu_before + time.process_time() - self._cpu_start

    def timing(self) -> dict[str, float]:
        """``{"wall_s": elapsed(), "cpu_s": cpu()}``, for a run's results."""
        return {"wall_s": self.elapsed(), "cpu_s": self.cpu()}
