"""Cost of one training step of each arm of the training experiment (lib/experiments/training), and
the full profile's projected compute (params/training.yaml).

    .venv/bin/python benchmarks/training.py --threads 1                        # num_dim 64, N 16000
    .venv/bin/python benchmarks/training.py --threads 1 --num-dims 8 32 --batches 1024 16000 --project

A step is what the trainer does per arm: draw the batch, estimate the gradient, update the weights.
The reference is the STE step measured in the same run: the ratio CDG / STE is the issue's target
(≤ 20× at num_dim 64, N 16,000). With ``--project``, the full profile's core-hours from these step
times: (tuning inits × lrs + reported inits) × K steps per arm, plus the reference CDG at every
evaluation of the reported trainings (pretraining not counted).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from lib.common.paths import ROOT
from lib.core.estimators import cdg
from lib.experiments.schema import build
from lib.experiments.training.arms import Arm, arm_gradient, arms_for
from lib.experiments.training.params import TrainingParams
from lib.experiments.training.trainer import StepRule, evaluation_steps
from lib.training.gaussian import toy_problem


def step_seconds(arm: Arm, num_dim: int, n: int, repeats: int = 5) -> float:
    """Median seconds of one training step of ``arm`` (batch, estimate, update), after a warm-up."""
    problem = toy_problem(num_dim, 0)
    model, rule = problem.student, StepRule("normalized", 0.01)
    large = (lambda: problem.batch(arm.rows, 1)) if arm.rows else None
    times = []
    for t in range(repeats + 1):
        start = time.perf_counter()
        x, y = problem.batch(n, t)
        rule.apply(model, arm_gradient(arm, model, x, y, seed=t, large_batch=large))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def reference_seconds(num_dim: int, rows: int, eps: float) -> float:
    """Seconds of the reference: CDG on the hidden layers of a batch of ``rows`` rows."""
    problem = toy_problem(num_dim, 0)
    x, y = problem.batch(rows, 0)
    hidden = [n for n, _ in problem.student.named_parameters() if not n.startswith("readout.")]
    cdg(problem.student, x, y, eps=eps, layers=hidden)
    start = time.perf_counter()
    cdg(problem.student, x, y, eps=eps, layers=hidden)
    return time.perf_counter() - start


def project(p: TrainingParams, seconds: dict[tuple[int, Arm], float], reference: float) -> float:
    """Core-seconds of one run of ``p`` from step times ``{(N, arm): s}`` and the reference's time."""
    trainings = p.tune_inits * len(p.lrs) + p.num_init
    points = len(evaluation_steps(p.steps, p.eval_every)) - 1
    total = 0.0
    for n in p.batch_sizes:
        arms = arms_for(p, n)
        total += trainings * p.steps * sum(seconds[(n, a)] for a in arms)
        total += p.num_init * points * reference * sum(a.estimator != "readout_only" for a in arms)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-dims", type=int, nargs="+", default=[64])
    ap.add_argument("--batches", type=int, nargs="+", default=[16000])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--project", action="store_true", help="project the full profile's core-hours")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = yaml.safe_load((ROOT / "params" / "training.yaml").read_text())["profiles"]["full"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'num_dim':>7} | {'N':>6} | {'arm':<18} | {'s / step':>9} | vs STE clipped")
    hours = 0.0
    for d in args.num_dims:
        values = {k: v for k, v in profile.items() if k not in ("num_dim", "pretrained")}
        p = build(TrainingParams, {**values, "num_dim": d, "batch_sizes": args.batches,
                                   "nes_batch_sizes": [n for n in profile["nes_batch_sizes"] if n in args.batches]})
        seconds = {}
        for n in args.batches:
            arms = [a for a in arms_for(p, n) if a.estimator != "ste" or a.variant == "clipped"]
            for arm in arms:
                seconds[(n, arm)] = step_seconds(arm, d, n, repeats=3 if arm.estimator == "nes" else 5)
            base = seconds[(n, Arm("ste", variant="clipped"))]
            for arm in arms:
                print(f"{d:>7} | {n:>6} | {arm.label:<18} | {seconds[(n, arm)]:9.4f} | {seconds[(n, arm)] / base:7.1f}×")
            for v in p.ste_variants:
                seconds.setdefault((n, Arm("ste", variant=v)), base)
        if args.project:
            ref = reference_seconds(d, p.reference_rows, p.reference_eps) if p.reference_rows else 0.0
            run_s = project(p, seconds, ref)
            states = len(profile["pretrained"])
            hours += states * run_s / 3600
            print(f"num_dim {d}: reference CDG on {p.reference_rows} rows {ref:.3f} s; one run {run_s / 3600:.2f} "
                  f"core-hours, {states} states: {states * run_s / 3600:.2f}")
    if args.project:
        print(f"projected full profile (num_dim {args.num_dims}): {hours:.2f} core-hours")


if __name__ == "__main__":
    main()
