"""Whether this machine has the device a grid point asks for, checked before compute. The runner
imports no torch, so one short subprocess asks torch, once per invocation and only when a grid
point asks for CUDA."""
from __future__ import annotations

import functools
import re
import subprocess
import sys

PROBE = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """The number of CUDA devices torch sees here (0 when it sees none or cannot tell)."""
    try:
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
        return int(out.stdout.split()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0


def device_problem(device: object) -> str | None:
    """Why ``device`` (``cpu``, ``auto``, ``cuda`` or ``cuda:N``) cannot run here, or ``None``.
    ``auto`` falls back to the CPU, so it always can."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device) if isinstance(device, str) else None
    if match is None:
        return None
    count, index = cuda_device_count(), int(match[1] or 0)
    if index < count:
        return None
    return (f"{device!r} requested but this machine has {count} CUDA device(s); use cpu or auto"
            if count == 0 else f"{device!r} requested but this machine has CUDA devices 0 to {count - 1}")
