"""What the benchmark scripts share: timing a call, NES directions per second on the toy, and the
toy profiles' projected NES time. The scripts run as ``python benchmarks/<name>.py``, which puts
this folder on the import path."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from lib.core.estimators import nes
from lib.experiments.toy.params import LAST_TWO
from lib.training.gaussian import toy_problem

# The NES of the toy profiles (params/toy.yaml, params/toy_pretrained.yaml): 2 sections × 8 σ ×
# 50000 directions per repetition, over all layers and again on the last two; repetitions per run.
SECTIONS, SIGMAS, DIRECTIONS = 2, 8, 50_000
PROFILES = {"full": {"batch": 1024, "repetitions": 9}, "lab": {"batch": 160_000, "repetitions": 30}}


def best_of(fn: Callable[[], object], repeats: int = 3, device: torch.device | str = "cpu") -> float:
    """Fastest of ``repeats`` timings of ``fn()`` (the least disturbed on a shared machine),
    synchronised on a CUDA ``device``."""
    cuda = torch.device(device).type == "cuda"
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def nes_directions_per_s(num_dim: int, batch: int, samples: int, layers: Sequence[str] | None = None,
                         device: torch.device | str = "cpu") -> float:
    """Antithetic NES directions per second on the toy student, after a full-size warm-up."""
    prob = toy_problem(num_dim, 0)
    x, y = prob.batch(batch, 0, device=device)
    model = prob.student.to(device)
    nes(model, x, y, sigma=0.1, samples=samples, layers=layers)
    return samples / best_of(lambda: nes(model, x, y, sigma=0.1, samples=samples, layers=layers), 2, device)


def nes_rates(num_dim: int, batch: int, samples: int, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Directions per second over all layers and over the last two (a toy step's two NES calls)."""
    return (nes_directions_per_s(num_dim, batch, samples, None, device),
            nes_directions_per_s(num_dim, batch, samples, list(LAST_TWO), device))


def projected_nes_hours(rates: Sequence[tuple[float, float]], repetitions: int) -> float:
    """The NES time of a toy profile from the (all layers, last two) rates of each of its num_dim."""
    return sum(SECTIONS * repetitions * SIGMAS * DIRECTIONS * (1 / every + 1 / two) for every, two in rates) / 3600
