"""Speed of the estimator engine on the toy MLP (a script, not a test).

    .venv/bin/python benchmarks/estimators.py [--num-dim 64] [--batches 1024 16000]

Prints, per batch size:
* all-layer central CDG: engine time vs a naive loop (perturb one weight in place, two full
  forwards) timed in the same run on a sample of coordinates and scaled to all of them;
* NES: directions per second (antithetic: two loss evaluations each) and achieved GFLOP/s (2 · N · Σ fan_in·fan_out per loss evaluation)
  beside the GFLOP/s of a plain matmul of the same shapes measured in the same run.
"""
from __future__ import annotations

import argparse
import time

import torch
from timing import best_of, bmm_gflops

from lib.core.estimators import cdg, nes
from lib.core.losses import batch_loss
from lib.training.gaussian import toy_problem


def naive_cdg_seconds_per_coord(model, x, y, eps: float, n_coords: int) -> float:
    params = [p for _, p in model.named_parameters()]
    flat = [(p, i) for p in params for i in range(p.numel())]
    step = max(1, len(flat) // n_coords)
    chosen = flat[::step][:n_coords]
    t = time.perf_counter()
    with torch.no_grad():
        for p, i in chosen:
            v = p.view(-1)
            v[i] += eps
            lp = batch_loss(model(x), y, "mse").item()
            v[i] -= 2 * eps
            lm = batch_loss(model(x), y, "mse").item()
            v[i] += eps
            _ = (lp - lm) / (2 * eps)
    return (time.perf_counter() - t) / len(chosen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-dim", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1024, 16000])
    ap.add_argument("--naive-coords", type=int, default=300)
    ap.add_argument("--nes-samples", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    d = args.num_dim
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, num_dim {d}, float32")
    print(f"{'batch':>6} | {'coords':>6} | {'CDG engine s':>12} | {'naive s (proj.)':>15} | {'ratio':>7} | "
          f"{'NES dir/s':>9} | {'NES GFLOP/s':>11} | {'matmul GFLOP/s':>14} | {'NES/matmul':>10}")
    for n in args.batches:
        prob = toy_problem(d, 0)
        x, y = prob.batch(n, 0)
        model = prob.student
        n_coords = sum(p.numel() for p in model.parameters())
        cdg(model, x[:64], y[:64])  # warm-up
        engine_s = best_of(lambda: cdg(model, x, y, eps=0.1))
        naive_s = min(naive_cdg_seconds_per_coord(model, x, y, 0.1, args.naive_coords) for _ in range(2)) * n_coords

        flops_per_eval = 2 * n * sum(p.numel() for p in model.parameters())
        nes(model, x, y, sigma=0.1, samples=16)
        nes_s = best_of(lambda: nes(model, x, y, sigma=0.1, samples=args.nes_samples), 2)
        dirs = args.nes_samples / nes_s
        nes_gflops = dirs * 2 * flops_per_eval / 1e9
        mm = bmm_gflops(n, d)
        print(f"{n:>6} | {n_coords:>6} | {engine_s:>12.3f} | {naive_s:>15.2f} | {naive_s / engine_s:>6.0f}x | "
              f"{dirs:>9.0f} | {nes_gflops:>11.1f} | {mm:>14.1f} | {nes_gflops / mm:>9.0%}")


if __name__ == "__main__":
    main()
