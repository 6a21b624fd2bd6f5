"""What the benchmark scripts share: timing a call, NES directions per second on the toy, and the
toy profiles' projected NES time. The scripts run as ``python benchmarks/<name>.py``, which puts
this folder on the import path."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import yaml

from lib.common.paths import ROOT
from lib.core.estimators import nes, nes_sigmas
from lib.experiments.toy.params import LAST_TWO
from lib.training.gaussian import toy_problem

# The NES of the toy profiles (params/toy.yaml, params/toy_pretrained.yaml): 2 sections × 8 σ
# (toy.yaml's full grid) × 50000 directions per repetition, over all layers and again on the
# last two; repetitions per run.
SECTIONS, DIRECTIONS = 2, 50_000
PROFILES = {"full": {"batch": 1024, "repetitions": 9}, "lab": {"batch": 160_000, "repetitions": 30}}
SIGMA_GRID = tuple(yaml.safe_load((ROOT / "params" / "toy.yaml").read_text())["profiles"]["full"]["sigma_grid"])
SIGMAS = len(SIGMA_GRID)


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


def bmm_gflops(n: int, d: int, copies: int = 64, repeats: int = 10) -> float:
    """GFLOP/s of a batched float32 matmul, ``copies × (n, d) @ (d, d)``: NES's layer shape, each
    perturbed copy's activations times its own weight (``2·copies·n·d²`` flops per call)."""
    a, b = torch.randn(copies, n, d), torch.randn(copies, d, d)
    out = torch.bmm(a, b)
    dt = best_of(lambda: [torch.bmm(a, b, out=out) for _ in range(repeats)])
    return 2 * copies * n * d * d * repeats / dt / 1e9


def nes_directions_per_s(num_dim: int, batch: int, samples: int, layers: Sequence[str] | None = None,
                         device: torch.device | str = "cpu", shared: bool = True) -> float:
    """Antithetic NES directions per second and per σ on the toy student, after a full-size
    warm-up, for the ``SIGMAS`` σ of a toy step: in one :func:`nes_sigmas` call, as the toy runs
    them (``shared``), or one :func:`nes` call per σ."""
    prob = toy_problem(num_dim, 0)
    x, y = prob.batch(batch, 0, device=device)
    model = prob.student.to(device)

    def call() -> object:
        if shared:
            return nes_sigmas(model, x, y, sigmas=SIGMA_GRID, samples=[samples], layers=layers)
        return [nes(model, x, y, sigma=sigma, samples=samples, layers=layers) for sigma in SIGMA_GRID]

    call()
    return SIGMAS * samples / best_of(call, 2, device)


def nes_rates(num_dim: int, batch: int, samples: int, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Directions per second over all layers and over the last two (a toy step's two NES calls)."""
    return (nes_directions_per_s(num_dim, batch, samples, None, device),
            nes_directions_per_s(num_dim, batch, samples, list(LAST_TWO), device))


def projected_nes_hours(rates: Sequence[tuple[float, float]], repetitions: int) -> float:
    """The NES time of a toy profile from the (all layers, last two) rates of each of its num_dim."""
    return sum(SECTIONS * repetitions * SIGMAS * DIRECTIONS * (1 / every + 1 / two) for every, two in rates) / 3600
