"""NES against the machine's matmul limit and against a peer's approach, and the full profile's
projected NES time (a script, not a test).

    .venv/bin/python benchmarks/nes.py --threads 1

Prints, in one run and after a full-size warm-up of each measured call:

* the GFLOP/s of a single-threaded 2048² float32 sgemm (the reference), and of a batched matmul
  of NES's own shape: one chunk of perturbed copies, each a (batch, 64) block times its own
  64 × 64 weight (the matmul limit at that shape);
* NES over all layers of the toy (num_dim 64, batch 1024, 2000 antithetic directions): GFLOP/s
  (``2 · N · Σ fan_in·fan_out`` per loss evaluation) and its share of the sgemm rate;
* the same NES written as an ES-library user would: ``torch.func.vmap`` over ``functional_call``
  of perturbed parameter sets, chunks of 100 directions, antithetic (the peer), and the ratio;
* the 8 σ of a toy step in one ``nes_sigmas`` call (one direction stream, one projection of the
  first layer) against one call per σ, at num_dim 64 over all layers;
* the same 8 σ with the batched pass quantizing its temporaries in place (``quantize_``, the
  default) against a new tensor per quantizer pass (``quantize``), alternating, best of three;
* the same 8 σ with malloc keeping freed memory for the next chunk
  (:func:`lib.core.engine.keep_freed_memory`, the default) against glibc's own settings, each in
  a fresh process, alternating, best of two;
* directions per second (per σ, the 8 σ in one call) for every num_dim of the full profile, over
  all layers and over the last two, and the NES time of the full profile projected from them (params/toy.yaml and
  params/toy_pretrained.yaml: 4 num_dim × 2 sections, 3 × 3 repetitions, 8 σ, 50000 directions
  for NES over all layers and again for the diagnosis on the last two).
"""
from __future__ import annotations

import argparse
import multiprocessing

import torch
from timing import PROFILES, best_of, bmm_gflops, nes_directions_per_s, nes_rates, projected_nes_hours
from torch.func import functional_call, vmap

from lib.core import directions
from lib.core.engine import NES_BUDGET_MB, rows_per_chunk
from lib.core.estimators import nes
from lib.core.quantizers import quantize
from lib.core.losses import per_sample_loss
from lib.training.gaussian import toy_problem

NUM_DIMS = (8, 16, 32, 64)  # the full profile's


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return 2 * size ** 3 * repeats / best_of(lambda: [a @ b for _ in range(repeats)]) / 1e9


def peer_nes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, samples: int,
             chunk: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
    """Antithetic NES by ``vmap`` over ``functional_call`` of perturbed parameter sets."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)

    def loss_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return per_sample_loss(functional_call(model, p, (x,)), y, "mse").mean()

    batched = vmap(loss_of)
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    with torch.no_grad():
        for start in range(0, samples, chunk):
            k = min(chunk, samples - start)
            u = {n: torch.randn(k, *p.shape, generator=gen) for n, p in params.items()}
            plus = batched({n: params[n] + sigma * u[n] for n in params})
            minus = batched({n: params[n] - sigma * u[n] for n in params})
            w = (plus - minus) / (2 * sigma * samples)
            for n in params:
                grads[n] += torch.tensordot(w, u[n], dims=1)
    return grads


def in_place_ratio(batch: int, samples: int) -> tuple[float, float]:
    """Directions per second at num_dim 64 with the batched pass's quantizer in place and with a
    new tensor per pass (``directions.quantize_`` swapped for ``quantize`` for the measurement)."""
    in_place = directions.quantize_
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(3):
            for own in (False, True):
                directions.quantize_ = in_place if own else quantize
                rates[own].append(nes_directions_per_s(64, batch, samples))
    finally:
        directions.quantize_ = in_place
    return max(rates[True]), max(rates[False])


def _directions_per_s_in_fresh_process(keep_freed: bool, batch: int, samples: int, threads: int | None) -> float:
    """:func:`nes_directions_per_s` at num_dim 64 in this (fresh, spawned) process, with or
    without :func:`lib.core.engine.keep_freed_memory`."""
    from lib.core import engine

    engine.KEEP_FREED_MEMORY = keep_freed
    if threads:
        torch.set_num_threads(threads)
    return nes_directions_per_s(64, batch, samples)


def freed_memory_ratio(batch: int, samples: int, threads: int | None) -> tuple[float, float]:
    """Directions per second (best of two fresh processes each, alternating) with freed memory
    kept for reuse and with glibc's default settings."""
    ctx = multiprocessing.get_context("spawn")
    rates: dict[bool, list[float]] = {True: [], False: []}
    for keep in (False, True, False, True):
        with ctx.Pool(1) as pool:
            rates[keep].append(pool.apply(_directions_per_s_in_fresh_process, (keep, batch, samples, threads)))
    return max(rates[True]), max(rates[False])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, batch {args.batch}")
    sgemm = sgemm_gflops()
    print(f"sgemm 2048²: {sgemm:.1f} GFLOP/s")
    copies = rows_per_chunk(args.batch * 64, NES_BUDGET_MB, 4)  # about NES's chunk (15 directions × 2 signs at d 64)
    bmm = bmm_gflops(args.batch, 64, copies)
    print(f"bmm of NES's shape ({copies} × ({args.batch}, 64)·(64, 64)): {bmm:.1f} GFLOP/s = {bmm / sgemm:.0%} of sgemm")

    prob = toy_problem(64, 0)
    x, y = prob.batch(args.batch, 0)
    model = prob.student
    flops = 2 * args.batch * sum(p.numel() for p in model.parameters())  # one loss evaluation
    nes(model, x, y, sigma=0.1, samples=args.samples)
    ours = best_of(lambda: nes(model, x, y, sigma=0.1, samples=args.samples), 2)
    peer_nes(model, x, y, 0.1, args.samples)
    peer = best_of(lambda: peer_nes(model, x, y, 0.1, args.samples), 2)
    rate = 2 * args.samples * flops / ours / 1e9
    print(f"NES num_dim 64, {args.samples} directions: {ours:.2f} s, {rate:.1f} GFLOP/s = {rate / sgemm:.0%} of sgemm, "
          f"{rate / bmm:.0%} of the bmm")
    print(f"peer (vmap over functional_call, chunks of 100): {peer:.2f} s; NES is {peer / ours:.2f}× faster")

    shared = nes_directions_per_s(64, args.batch, args.samples, shared=True)
    alone = nes_directions_per_s(64, args.batch, args.samples, shared=False)
    print(f"8 σ in one call: {shared:.0f} directions/s per σ against {alone:.0f} with one call per σ: "
          f"{shared / alone:.2f}×")

    own, new = in_place_ratio(args.batch, args.samples)
    print(f"quantizer in place: {own:.0f} directions/s per σ against {new:.0f} with a new tensor per pass: "
          f"{own / new:.2f}×")
    kept, default = freed_memory_ratio(args.batch, args.samples, args.threads)
    print(f"freed memory kept for the next chunk: {kept:.0f} directions/s per σ against {default:.0f} "
          f"with glibc's defaults: {kept / default:.2f}×")

    print(f"{'num_dim':>7} | {'all layers dir/s':>16} | {'last two dir/s':>14}")
    rates = []
    for d in NUM_DIMS:
        rates.append(nes_rates(d, args.batch, args.samples))
        print(f"{d:>7} | {rates[-1][0]:>16.0f} | {rates[-1][1]:>14.0f}")
    hours = projected_nes_hours(rates, PROFILES["full"]["repetitions"])
    print(f"projected NES time of the full profile: {hours:.1f} core-hours")

if __name__ == "__main__":
    main()
