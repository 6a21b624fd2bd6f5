"""What this machine can hold, checked before compute (no torch, no numpy): its memory, and
whether a folder can be created and written.

Parameter classes use these in their ``machine_problems()`` (:mod:`lib.experiments.schema`); the
runner calls them for every grid point before anything runs, so an impossible run is refused in
seconds with the key that makes it impossible.
"""
from __future__ import annotations

import os
from pathlib import Path

GIB = 2**30


def physical_memory_bytes() -> int:
    """This machine's physical memory (``SC_PHYS_PAGES × SC_PAGE_SIZE``); 0 when it cannot tell."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 0


def memory_problem(nbytes: int, what: str, available: int | None = None) -> str | None:
    """Why a tensor of ``nbytes`` bytes (described by ``what``) cannot be allocated here, or
    ``None``: it is refused when it alone exceeds the machine's physical memory (``available``,
    default :func:`physical_memory_bytes`). A lower bound of the run's need, so a run passing it
    may still need more; one failing it cannot run."""
    available = physical_memory_bytes() if available is None else available
    if available <= 0 or nbytes <= available:
        return None
    return (f"{what} would take {_size(nbytes)}, more than this machine's {_size(available)} of memory; "
            "make it smaller")


def _size(nbytes: int) -> str:
    if nbytes >= 1000 * 2**50:
        return f"{nbytes:.2e} bytes"
    return f"{nbytes / GIB:.3g} GiB" if nbytes >= GIB else f"{nbytes / 2**20:.3g} MiB"


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot serve as a folder the run creates and writes into, or ``None``: it (or
    its nearest existing parent, where the run would create it) must be a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{str(path)!r} is a file, not a folder"
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            return f"{str(path)!r} is a folder this user cannot write"
        return f"{str(path)!r} cannot be created: this user cannot write in {str(existing)!r}"
    return None
