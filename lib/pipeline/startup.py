"""Stop signals while the runner starts: until it installs its own handlers (its imports take about
a second), Ctrl-C, SIGTERM or SIGHUP ends the process with one line and status 130 (docs/design.md
§8). No imports beyond the standard library, so that it can run first."""
from __future__ import annotations

import os
import signal
import sys


def _stopped_while_starting(signum: int, frame: object) -> None:
    sys.stderr.write("\ninterrupted while starting\n")
    sys.stderr.flush()
    os._exit(130)


def catch_stop_signals() -> None:
    """Until the runner installs its own handlers: a stop signal ends the process with one line
    and status 130, whatever import is loading."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stopped_while_starting)
