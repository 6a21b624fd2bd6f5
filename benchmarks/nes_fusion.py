"""Would fusing NES's elementwise passes pay? torch.compile against the eager engine (a script, not a test).

    .venv/bin/python benchmarks/nes_fusion.py --threads 1

The toy at num_dim 64, batch 1024, one chunk of 14 antithetic directions (28 perturbed copies, the
engine's chunk at that size), one thread, malloc keeping freed memory as the engine does
(:func:`lib.core.engine.keep_freed_memory`), best of 7 after a warm-up, paired in one process:

* the engine's whole pass (:func:`lib.core.directions.direction_losses`) against
  ``torch.compile`` of it: time, and whether the losses keep their bits;
* the hidden chain alone (the head's ``q(base + s·proj)``, then ``q(h (W + δW)ᵀ)`` for the two
  other hidden layers, readout and loss outside), written as the engine does it, against
  ``torch.compile`` of the same chain with its elementwise passes free to fuse, against the
  batched matmuls and per-copy weights alone (no elementwise pass: the floor of any fusion);
* the parts: the sign pass over a (28, 1024, 64) block, in place as the engine does it
  (:func:`lib.core.quantizers.quantize_`), compiled (``copysign``), and a plain copy of the block
  (one read and one write: memory speed); the head, eager against compiled;
* the engine's pass over the same 168 directions in chunks of 3, 7, 14 and 28 (cache-sized blocks);
* the compile time of the chain with a cold and with a warm inductor cache (fresh processes).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from lib.core import directions, engine
from lib.core.quantizers import quantize_
from lib.training.gaussian import toy_problem

DIM, ROWS, DIRECTIONS, SCALES = 64, 1024, 14, (0.1, -0.1)


def best(fn, repeats: int = 7) -> float:
    """Milliseconds: the fastest of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def chain_inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    base, proj = torch.randn(ROWS, DIM, generator=g), torch.randn(DIRECTIONS, ROWS, DIM, generator=g)
    weights = [torch.randn(DIM, DIM, generator=g) / DIM ** 0.5 for _ in range(2)]
    deltas = [torch.randn(DIRECTIONS, DIM, DIM, generator=g) for _ in range(2)]
    return base, proj, *weights, *deltas


def eager_chain(base, proj, w2, w3, u2, u3) -> torch.Tensor:
    """The engine's arithmetic (directions._head_outputs, _linear_chain_losses without the readout)."""
    z = torch.empty((len(SCALES) * DIRECTIONS, ROWS, DIM))
    for i, s in enumerate(SCALES):
        part = z[i * DIRECTIONS:(i + 1) * DIRECTIONS]
        torch.mul(proj, s, out=part)
        part += base
    h = quantize_(z, "binary")
    for w, u in ((w2, u2), (w3, u3)):
        h = quantize_(torch.bmm(h, (w + torch.cat([s * u for s in SCALES])).transpose(1, 2)), "binary")
    return h


def _sign(z: torch.Tensor) -> torch.Tensor:
    return torch.copysign(torch.ones_like(z), z)


def plain_chain(base, proj, w2, w3, u2, u3) -> torch.Tensor:
    """The same chain written for a compiler: no in-place passes, the sign as ``copysign``."""
    h = _sign(torch.cat([proj * s + base for s in SCALES]))
    for w, u in ((w2, u2), (w3, u3)):
        h = _sign(torch.bmm(h, (w + torch.cat([s * u for s in SCALES])).transpose(1, 2)))
    return h


def matmuls_only(base, proj, w2, w3, u2, u3) -> torch.Tensor:
    h = torch.ones(len(SCALES) * DIRECTIONS, ROWS, DIM)
    for w, u in ((w2, u2), (w3, u3)):
        h = torch.bmm(h, (w + torch.cat([s * u for s in SCALES])).transpose(1, 2))
    return h


def toy_pass_inputs() -> tuple:
    """The engine's inputs for NES over every layer of the num_dim 64 toy on a batch of ROWS rows:
    the model, its forward cache, the targets and every parameter's location."""
    prob = toy_problem(DIM, 0)
    x, y = prob.batch(ROWS, 1)
    model = prob.student
    locs = engine.locate_parameters(model)
    return model, engine.forward_cache(model, x), y, [locs[n] for n, _ in model.named_parameters()]


def whole_pass() -> None:
    model, cache, y, sel = toy_pass_inputs()
    dirs = {n: torch.randn(DIRECTIONS, *p.shape, generator=torch.Generator().manual_seed(1))
            for n, p in model.named_parameters()}
    proj = directions.head_projection(model, cache, sel, dirs)
    compiled = torch.compile(directions.direction_losses, dynamic=False)
    eager = directions.direction_losses(model, cache, y, "mse", sel, dirs, SCALES, proj)
    fused = compiled(model, cache, y, "mse", sel, dirs, SCALES, proj)
    te = best(lambda: directions.direction_losses(model, cache, y, "mse", sel, dirs, SCALES, proj))
    tc = best(lambda: compiled(model, cache, y, "mse", sel, dirs, SCALES, proj))
    print(f"whole pass: eager {te:.2f} ms, compiled {tc:.2f} ms ({te / tc:.2f}×); losses keep their bits: "
          f"{torch.equal(eager, fused)} (max difference {(eager - fused).abs().max().item():.2g})")


def chunk_sizes(sizes=(3, 7, 14, 28), directions_in_all: int = 168) -> None:
    """Directions per second of the engine's pass when the same directions go in chunks of each
    size: smaller chunks keep each elementwise pass's block in a smaller cache."""
    model, cache, y, sel = toy_pass_inputs()
    gen = torch.Generator().manual_seed(2)
    dirs = {n: torch.randn(directions_in_all, *p.shape, generator=gen) for n, p in model.named_parameters()}

    def by_chunks(size: int) -> None:
        for a in range(0, directions_in_all, size):
            directions.direction_losses(model, cache, y, "mse", sel, {n: d[a:a + size] for n, d in dirs.items()},
                                        SCALES)

    rates = {size: directions_in_all / (best(lambda: by_chunks(size), repeats=3) / 1e3) for size in sizes}
    print("directions/s by chunk size: " + ", ".join(f"{k}: {v:.0f}" for k, v in rates.items()))


def parts() -> None:
    args = chain_inputs()
    compiled = torch.compile(plain_chain, fullgraph=True, dynamic=False)
    same = torch.equal(compiled(*args), eager_chain(*args))
    te, tc, tm = best(lambda: eager_chain(*args)), best(lambda: compiled(*args)), best(lambda: matmuls_only(*args))
    print(f"hidden chain: eager {te:.2f} ms, compiled {tc:.2f} ms ({te / tc:.2f}×, same bits: {same}); "
          f"batched matmuls and weights alone {tm:.2f} ms (elementwise passes: {100 * (te - tm) / te:.0f}% of eager)")
    block = torch.randn(len(SCALES) * DIRECTIONS, ROWS, DIM)
    work = block.clone()
    sign = torch.compile(_sign, fullgraph=True, dynamic=False)
    print(f"sign pass over {tuple(block.shape)}: in place {best(lambda: quantize_(work, 'binary')):.3f} ms, "
          f"compiled {best(lambda: sign(block)):.3f} ms, a plain copy {best(block.clone):.3f} ms")
    base, proj = args[:2]
    head = torch.compile(lambda p, b: _sign(torch.cat([p * s + b for s in SCALES])), fullgraph=True, dynamic=False)
    def eager_head() -> torch.Tensor:
        z = torch.empty((len(SCALES) * DIRECTIONS, ROWS, DIM))
        for i, s in enumerate(SCALES):
            part = z[i * DIRECTIONS:(i + 1) * DIRECTIONS]
            torch.mul(proj, s, out=part)
            part += base
        return quantize_(z, "binary")

    print(f"head q(base + s·proj): eager {best(eager_head):.3f} ms, compiled {best(lambda: head(proj, base)):.3f} ms")


def compile_seconds(cache_dir: str, threads: int) -> float:
    """Seconds of the chain's first compiled call in a fresh process (this script with
    ``--first-compile``) whose inductor cache is ``cache_dir``."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, __file__, "--first-compile", "--threads", str(threads)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def first_compile() -> None:
    """Print the seconds of the chain's first compiled call in this process."""
    args = chain_inputs()
    t = time.perf_counter()
    torch.compile(plain_chain, fullgraph=True, dynamic=False)(*args)
    print(time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--skip-compile-time", action="store_true", help="leave out the cold and warm compile times")
    ap.add_argument("--first-compile", action="store_true", help=argparse.SUPPRESS)  # compile_seconds' child
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.first_compile:
        return first_compile()
    engine.keep_freed_memory()
    print(f"torch {torch.__version__}, {args.threads} thread(s), num_dim {DIM}, batch {ROWS}, "
          f"{DIRECTIONS} directions × 2 signs")
    whole_pass()
    parts()
    chunk_sizes()
    if not args.skip_compile_time:
        with tempfile.TemporaryDirectory() as cache_dir:
            cold, warm = compile_seconds(cache_dir, args.threads), compile_seconds(cache_dir, args.threads)
        print(f"compile time of the chain: {cold:.1f} s with a cold inductor cache, {warm:.1f} s with a warm one")


if __name__ == "__main__":
    main()
