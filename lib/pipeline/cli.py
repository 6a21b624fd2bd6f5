"""The ``ste-report`` command (``[project.scripts]`` in pyproject.toml): the runner's command line,
``python -m lib.pipeline.runner`` by another name (``ste-report --help`` lists its options).
Stop signals are caught before the runner's imports load (:mod:`lib.pipeline.startup`)."""
from __future__ import annotations

import sys

from lib.pipeline.startup import catch_stop_signals


def main() -> int:
    """Entry point of ``ste-report``."""
    catch_stop_signals()
    from lib.pipeline.runner import main as run_main

    return run_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
