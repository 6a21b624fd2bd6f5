"""NES on a device against that device's own sgemm, and the full and lab profiles' projected NES
times there (a script, not a test).

    .venv/bin/python benchmarks/gpu.py                 # cuda
    .venv/bin/python benchmarks/gpu.py --device cpu --threads 1   # the same numbers on one core

Prints the device's float32 matmul rate (4096², synchronised), then for every num_dim of the toy:
NES directions per second over all layers and over the last two (the toy step's two NES calls)
at the full profile's batch (1024 rows) and at the lab's (160,000), the GFLOP/s of the all-layer
one and its share of the matmul rate, and the projected NES time of the full and lab profiles
(params/toy.yaml, params/toy_pretrained.yaml: 2 sections × repetitions × 8 σ × 50000 directions,
all layers and last two).
"""
from __future__ import annotations

import argparse
import time

import torch

from lib.core.estimators import nes
from lib.experiments.toy.params import LAST_TWO
from lib.training.gaussian import toy_problem

PROFILES = {"full": {"batch": 1024, "repetitions": 9}, "lab": {"batch": 160_000, "repetitions": 30}}
SECTIONS, SIGMAS, DIRECTIONS = 2, 8, 50_000


def timed(fn, device: torch.device, repeats: int = 2) -> float:
    """Fastest of ``repeats`` synchronised timings of ``fn()``."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples", type=int, default=2000, help="directions per timed NES call")
    ap.add_argument("--num-dims", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    a = torch.randn(4096, 4096, device=device)
    a @ a
    sgemm = 2 * 4096 ** 3 * 3 / timed(lambda: [a @ a for _ in range(3)], device) / 1e9
    print(f"torch {torch.__version__}, {device}: sgemm 4096² {sgemm:.0f} GFLOP/s")
    print(f"{'profile':>7} | {'num_dim':>7} | {'all layers dir/s':>16} | {'last two dir/s':>14} | {'GFLOP/s':>8} | share")
    hours = {name: 0.0 for name in PROFILES}
    for name, prof in PROFILES.items():
        for d in args.num_dims:
            prob = toy_problem(d, 0)
            x, y = prob.batch(prof["batch"], 0, device=device)
            model = prob.student.to(device)
            rates = []
            for layers in (None, list(LAST_TWO)):
                nes(model, x, y, sigma=0.1, samples=args.samples, layers=layers)  # full-size warm-up
                rates.append(args.samples / timed(lambda: nes(model, x, y, sigma=0.1, samples=args.samples,
                                                              layers=layers), device))
            flops = 2 * 2 * prof["batch"] * sum(p.numel() for p in model.parameters()) * rates[0] / 1e9
            print(f"{name:>7} | {d:>7} | {rates[0]:>16.0f} | {rates[1]:>14.0f} | {flops:>8.1f} | {flops / sgemm:.0%}")
            hours[name] += SECTIONS * prof["repetitions"] * SIGMAS * DIRECTIONS * (1 / rates[0] + 1 / rates[1]) / 3600
    for name, h in hours.items():
        print(f"projected NES time of the {name} profile on {device}: {h:.1f} h")


if __name__ == "__main__":
    main()
