"""CPU priority of the notebook kernels, so that a long grid can run in the background.

``ste-report --nice N`` sets :data:`NICE_ENV` for the kernels, and each kernel calls
:func:`lower_priority_from_env` when it starts (an ipykernel ``exec_lines`` entry). ``nice``
alone is not enough on Linux with autogroup scheduling: every kernel runs in its own session,
hence its own scheduling group, and niceness only ranks processes inside a group. So the
kernel also lowers its group's priority through ``/proc/self/autogroup`` where that exists.
"""
from __future__ import annotations

import os

NICE_ENV = "STE_KERNEL_NICE"


def lower_priority(nice: int) -> int:
    """Raise this process's niceness to ``nice`` (never lower it) and, where the kernel has
    autogroup scheduling, its session group's niceness too. Returns the niceness now."""
    if not isinstance(nice, int) or isinstance(nice, bool) or not 0 <= nice <= 19:
        raise ValueError(f"nice: expected an integer in 0..19, got {nice!r}")
    current = os.nice(0)
    if nice > current:
        current = os.nice(nice - current)
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(current))
    except OSError:  # no autogroup (other OS, kernel without it): niceness alone
        pass
    return current


def lower_priority_from_env() -> None:
    """:func:`lower_priority` with the value of :data:`NICE_ENV`, when it is set and positive."""
    value = os.environ.get(NICE_ENV, "")
    if value.strip() and int(value) > 0:
        lower_priority(int(value))
