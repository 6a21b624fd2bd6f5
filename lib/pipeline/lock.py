"""One runner at a time per report folder: an exclusive ``flock`` on ``<folder>/.runner.lock``,
held while the runner reads, runs, records and builds the report. A second runner on the same
folder says whom it waits for and waits; it then reads the manifest the first one left, so no
entry is lost and a run finished by the first is not computed again."""
from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".runner.lock"


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock (creating the folder); wait, with one line on stderr, while another
    runner holds it. The lock is released when the runner exits, however it exits."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            print(f"waiting: another runner (pid {holder}) is using {folder}; this one starts when it ends",
                  file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
