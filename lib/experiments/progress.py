"""Progress of a notebook run, shown by the grid runner while the kernel works.

A full-profile run takes hours inside one notebook cell, where the runner sees nothing. So the
notebook hands ``Reporter(results_path)`` to the experiment, which calls it as
``report(done, total, what)`` after each unit of work; the reporter writes
``<results_path>.progress`` (JSON ``{"done", "total", "what", "done_at_start", "elapsed_s", "written"}``,
atomically; ``written`` is the Unix time of the write) and the runner polls it. The remaining
time is extrapolated linearly from the last report and counts down between reports:
``left = elapsed · (total − done) / (done − done_at_start) − (now − written)``, at least 0, where
``done_at_start`` is the number of steps a resumed run had finished before this attempt
(:mod:`lib.experiments.resume`; 0 for a fresh run) and ``elapsed`` the time of this attempt.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lib.common.files import atomic_write_json, read_json

SUFFIX = ".progress"


def progress_path(results_path: str | os.PathLike) -> Path:
    """``results/<run>.json`` → ``results/<run>.json.progress`` (not a ``*.json`` result file)."""
    return Path(str(results_path) + SUFFIX)


class Reporter:
    """``report(done, total, what)``: write the progress of the run whose results go to
    ``results_path``. The clock starts when the reporter is made, or at :meth:`begin`.

    An experiment handed a reporter also keeps its partial state beside ``results_path`` and
    resumes from it (:class:`lib.experiments.resume.Steps`)."""

    def __init__(self, results_path: str | os.PathLike) -> None:
        self.results_path = Path(results_path)
        self.path = progress_path(results_path)
        self.start = time.perf_counter()
        self.done_at_start = 0

    def begin(self, done: int, total: int) -> None:
        """This attempt starts with ``done`` of ``total`` steps finished by an earlier one (0 on a
        fresh start): report that at once, so the runner shows the run's count and how long its
        first step has taken; the time left is extrapolated from the steps of this attempt, timed
        from now."""
        self.done_at_start = int(done)
        self.start = time.perf_counter()
        self(done, total, "resumed" if done else "started")

    def __call__(self, done: int, total: int, what: str = "") -> None:
        atomic_write_json(self.path, {"done": int(done), "total": int(total), "what": str(what),
                                      "done_at_start": self.done_at_start,
                                      "elapsed_s": round(time.perf_counter() - self.start, 3),
                                      "written": time.time()})


def read_progress(results_path: str | os.PathLike) -> dict[str, Any] | None:
    """The last progress written for ``results_path``, or ``None`` (none yet, or unreadable)."""
    try:
        progress = read_json(progress_path(results_path))
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None


def seconds_left(progress: dict[str, Any], now: float | None = None) -> float | None:
    """``elapsed · (total − done) / (done − done_at_start) − (now − written)`` (at least 0;
    without ``written`` the countdown term is left out, without ``done_at_start`` it is 0);
    ``None`` before this attempt's first step is done. ``now``: Unix time, default the current
    time."""
    done, total, elapsed = progress.get("done"), progress.get("total"), progress.get("elapsed_s")
    start = progress.get("done_at_start", 0)
    if not all(isinstance(v, (int, float)) for v in (done, total, elapsed, start)) or done <= start:
        return None
    left = elapsed * max(total - done, 0) / (done - start)
    written = progress.get("written")
    if isinstance(written, (int, float)):
        left -= (time.time() if now is None else now) - written
    return max(left, 0.0)


def seconds_in(progress: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since this attempt started: ``elapsed + (now − written)``; ``None`` without both."""
    elapsed, written = progress.get("elapsed_s"), progress.get("written")
    if not all(isinstance(v, (int, float)) for v in (elapsed, written)):
        return None
    return max(elapsed + (time.time() if now is None else now) - written, 0.0)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def describe(progress: dict[str, Any] | None, now: float | None = None) -> str:
    """``"3/9, ~41 min left"``, or before this attempt's first step is done ``"0/9, 4 min in"``:
    short enough for a progress bar's postfix."""
    if not progress:
        return "starting"
    text = f"{progress.get('done')}/{progress.get('total')}"
    left = seconds_left(progress, now)
    since = seconds_in(progress, now)
    if left is not None:
        text += f", ~{_minutes(left)} left"
    elif since is not None:
        text += f", {_minutes(since)} in"
    return text
