"""Cost of CDG over every weight of the 3 × num_dim toy as the batch grows, per activation
precision: what the reference-convergence experiment spends (params/convergence.yaml).

    .venv/bin/python benchmarks/convergence.py --threads 1                 # N = 10³ … 10⁵
    .venv/bin/python benchmarks/convergence.py --threads 1 --batches 1000000 --precisions binary

Prints seconds per CDG (one ε, central) and per STE gradient, and the ratio of the two.
"""
from __future__ import annotations

import argparse
import time

import torch

from lib.core.estimators import cdg, ste
from lib.training.gaussian import toy_problem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-dim", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--precisions", nargs="+", default=["binary", "ternary", "2bit", "fp"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, num_dim {args.num_dim}, "
          f"{3 * args.num_dim ** 2 + args.num_dim} weights")
    print(f"{'precision':>9} | {'N':>8} | {'CDG s':>8} | {'STE s':>7} | CDG / STE")
    for precision in args.precisions:
        for n in args.batches:
            problem = toy_problem(args.num_dim, 0, act=precision, teacher_act=precision)
            x, y = problem.batch(n, 0)
            t = time.perf_counter()
            cdg(problem.student, x, y, eps=0.1)
            t_cdg = time.perf_counter() - t
            t = time.perf_counter()
            ste(problem.student, x, y, variant="clipped")
            t_ste = time.perf_counter() - t
            print(f"{precision:>9} | {n:>8} | {t_cdg:8.2f} | {t_ste:7.3f} | {t_cdg / t_ste:8.0f}×")


if __name__ == "__main__":
    main()
