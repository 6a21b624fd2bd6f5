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

import torch
from timing import PROFILES, best_of, nes_rates, projected_nes_hours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples", type=int, default=2000, help="directions per timed NES call")
    ap.add_argument("--num-dims", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--profiles", nargs="+", choices=list(PROFILES), default=list(PROFILES),
                    help="the profiles whose batch size is timed and projected")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    a = torch.randn(4096, 4096, device=device)
    a @ a
    sgemm = 2 * 4096 ** 3 * 3 / best_of(lambda: [a @ a for _ in range(3)], 2, device) / 1e9
    print(f"torch {torch.__version__}, {device}: sgemm 4096² {sgemm:.0f} GFLOP/s")
    print(f"{'profile':>7} | {'num_dim':>7} | {'all layers dir/s':>16} | {'last two dir/s':>14} | {'GFLOP/s':>8} | share")
    for name in args.profiles:
        prof = PROFILES[name]
        rates = []
        for d in args.num_dims:
            rates.append(nes_rates(d, prof["batch"], args.samples, device))
            weights = 3 * d * d + d  # the toy: 3 hidden layers of d units and a readout, no bias
            flops = 2 * 2 * prof["batch"] * weights * rates[-1][0] / 1e9
            print(f"{name:>7} | {d:>7} | {rates[-1][0]:>16.0f} | {rates[-1][1]:>14.0f} | {flops:>8.1f} | "
                  f"{flops / sgemm:.0%}")
        print(f"projected NES time of the {name} profile on {device}: "
              f"{projected_nes_hours(rates, prof['repetitions']):.1f} h")

if __name__ == "__main__":
    main()
