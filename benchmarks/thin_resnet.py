"""Speed of conv CDG on the thin XNOR-ResNet-18 (a script, not a test).

    .venv/bin/python benchmarks/thin_resnet.py [--channels 8 16] [--batch 128] [--coords 8]
                                               [--naive-coords 2] [--threads N] [--binary-weights]
    .venv/bin/python benchmarks/thin_resnet.py --threads 1 --profile   # where a front layer's time goes

For each initial channel count c and each parameter of the model (the 16 binary conv weights
first), on one batch of ``--batch`` images of the embedded default data, cross-entropy, central
differences with ε = 0.1:

* **engine**: :func:`lib.core.coordinates.coordinate_loss_changes` (what :func:`lib.core.estimators.cdg` runs
  per layer) on ``--coords`` sampled coordinates, the prefix cache computed once beforehand
  (its cost, one forward pass, is amortised over all coordinates and printed separately);
* **naive**: perturb one weight in place, two full forward passes, restore (``--naive-coords``
  coordinates per parameter), timed in the same run, interleaved with the engine; also with the
  model and the batch in channels-last memory format (the layout the engine's copies use), so
  the layout's share of the gain is visible.

Prints per binary layer seconds per coordinate and ratios, the ratio for the experiment's
sampling (the same number of coordinates in every binary layer) and for all weights (weighted
by their counts), the projected time of CDG over every weight of the model, and the largest
difference between engine and naive values (a correctness check at full size, float32).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from lib.core import coordinates, engine
from lib.training.images import image_data
from lib.core.losses import per_sample_loss
from lib.core.models import xnor_resnet18
from lib.experiments.thin_resnet.states import calibrate_batchnorm

EPS = 0.1


def sample(numel: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(numel, generator=gen)[:min(k, numel)].sort().values


@torch.no_grad()
def engine_seconds(model, cache, base, y, loc, coords) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    changes = coordinates.coordinate_loss_changes(model, cache, base, y, "cross_entropy", loc, coords, (EPS, -EPS))
    seconds = time.perf_counter() - t
    return seconds / len(coords), (changes[0] - changes[1]) / (2 * EPS)


@torch.no_grad()
def naive_seconds(model, x, y, param, coords) -> tuple[float, torch.Tensor]:
    index = [tuple(int(v) for v in idx) for idx in zip(*torch.unravel_index(coords, param.shape))]
    values = torch.empty(len(coords), dtype=torch.float64)
    t = time.perf_counter()
    for k, i in enumerate(index):  # a multi-index works for any memory format of the weight
        saved = param[i].clone()
        param[i] = saved + EPS
        plus = F.cross_entropy(model(x), y).item()
        param[i] = saved - EPS
        minus = F.cross_entropy(model(x), y).item()
        param[i] = saved
        values[k] = (plus - minus) / (2 * EPS)
    return (time.perf_counter() - t) / len(coords), values


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def bench(c: int, x: torch.Tensor, y: torch.Tensor, coords_k: int, naive_k: int, binary_weights: bool,
          seed: int) -> dict:
    model = xnor_resnet18(c, act="binary", binary_weights=binary_weights, seed=seed).eval()
    model_cl = xnor_resnet18(c, act="binary", binary_weights=binary_weights, seed=seed).eval()
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    calibrate_batchnorm(model, x, len(x), 1, seed)  # BatchNorm statistics of the batch, eval mode
    model_cl.load_state_dict(model.state_dict())
    t = time.perf_counter()
    cache = engine.forward_cache(model, x)
    base = per_sample_loss(cache[-1], y, "cross_entropy")
    prefix_s = time.perf_counter() - t
    locs = engine.locate_parameters(model)
    params = dict(model.named_parameters())
    params_cl = dict(model_cl.named_parameters())
    binary = model.binary_conv_names()
    order = binary + [n for n in params if n not in binary]
    gen = torch.Generator().manual_seed(seed)
    rows, max_diff, max_layout_diff, scale = [], 0.0, 0.0, []
    for name in order:
        numel = params[name].numel()
        coords = sample(numel, coords_k, gen)
        e_s, e_vals = engine_seconds(model, cache, base, y, locs[name], coords)
        if name in binary:
            nc = coords[:naive_k]
            n_s, n_vals = naive_seconds(model, x, y, params[name], nc)
            ncl_s, ncl_vals = naive_seconds(model_cl, x_cl, y, params_cl[name], nc)
            max_diff = max(max_diff, float((n_vals - e_vals[:len(nc)].double()).abs().max()))
            max_layout_diff = max(max_layout_diff, float((n_vals - ncl_vals).abs().max()))
            scale.append(e_vals.double())
        else:
            n_s = ncl_s = float("nan")
        rows.append({"name": name, "numel": numel, "engine": e_s, "naive": n_s, "naive_cl": ncl_s,
                     "binary": name in binary})
    rms = float(torch.cat(scale).pow(2).mean().sqrt())
    return {"c": c, "rows": rows, "prefix_s": prefix_s, "max_diff": max_diff, "max_layout_diff": max_layout_diff,
            "rms": rms}


def report(res: dict) -> dict:
    rows = res["rows"]
    binary = [r for r in rows if r["binary"]]
    naive = sum(r["naive"] for r in binary) / len(binary)           # ≈ the same for every layer
    naive_cl = sum(r["naive_cl"] for r in binary) / len(binary)
    print(f"\nc = {res['c']}: prefix cache (one forward, once per batch) {res['prefix_s'] * 1e3:.0f} ms")
    print(f"max |engine − naive| = {res['max_diff']:.2e}, max |naive − naive-CL| = {res['max_layout_diff']:.2e} "
          f"(RMS of the CDG values {res['rms']:.2e}): float32 rounding flips near-zero activations, so two "
          "exact evaluations of the same CDG differ by this much")
    print(f"{'parameter':36s} {'numel':>7s} {'engine ms':>10s} {'naive ms':>9s} {'naive-CL ms':>11s} "
          f"{'ratio':>7s} {'vs CL':>7s}")
    for r in binary:
        print(f"{r['name']:36s} {r['numel']:7d} {r['engine'] * 1e3:10.2f} {r['naive'] * 1e3:9.1f} "
              f"{r['naive_cl'] * 1e3:11.1f} {r['naive'] / r['engine']:7.1f} {r['naive_cl'] / r['engine']:7.1f}")
    others = [r for r in rows if not r["binary"]]
    other_numel = sum(r["numel"] for r in others)
    other_s = sum(r["numel"] * r["engine"] for r in others)
    print(f"{'other parameters (stem, BN, shortcut, head)':46s} {other_numel:7d} weights, "
          f"engine {other_s / max(1, other_numel) * 1e3:.2f} ms/coord on average (generic path)")
    uniform = sum(r["engine"] for r in binary) / len(binary)
    total_w = sum(r["numel"] for r in rows)
    engine_all = sum(r["numel"] * r["engine"] for r in rows) + res["prefix_s"]
    naive_all = total_w * naive
    naive_cl_all = total_w * naive_cl
    print(f"same number of coordinates per binary layer (the experiment): engine {uniform * 1e3:.1f} ms/coord, "
          f"naive {naive * 1e3:.1f} ms/coord → ratio {naive / uniform:.1f}× ({naive_cl / uniform:.1f}× vs the "
          "channels-last naive loop)")
    print(f"every weight ({total_w} coordinates): engine {engine_all / total_w * 1e3:.2f} ms/coord → ratio "
          f"{naive_all / engine_all:.1f}× ({naive_cl_all / engine_all:.1f}× vs channels-last naive)")
    print(f"projected CDG over every weight of c = {res['c']}: engine {fmt_time(engine_all)}, naive loop "
          f"{fmt_time(naive_all)} (channels-last naive {fmt_time(naive_cl_all)})")
    return {"c": res["c"], "uniform_ratio": naive / uniform, "all_ratio": naive_all / engine_all,
            "engine_all_s": engine_all, "naive_all_s": naive_all}


def profile_front_layer(c: int, x: torch.Tensor, y: torch.Tensor, coords_k: int, seed: int) -> None:
    """The operators the engine spends its time in for the first binary conv (the front layer, where
    the dense pass through the rest of the network dominates), from ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    model = xnor_resnet18(c, act="binary", seed=seed).eval()
    calibrate_batchnorm(model, x, len(x), 1, seed)
    cache = engine.forward_cache(model, x)
    base = per_sample_loss(cache[-1], y, "cross_entropy")
    name = model.binary_conv_names()[0]
    loc = engine.locate_parameters(model)[name]
    coords = sample(dict(model.named_parameters())[name].numel(), coords_k, torch.Generator().manual_seed(seed))
    engine_seconds(model, cache, base, y, loc, coords)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine_seconds(model, cache, base, y, loc, coords)
    print(f"\nc = {c}, {name}, {len(coords)} coordinates: where the engine's time goes (self CPU time)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--coords", type=int, default=8, help="engine coordinates per parameter")
    parser.add_argument("--naive-coords", type=int, default=2, help="naive-loop coordinates per binary layer")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--binary-weights", action="store_true", help="XNOR binary weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="only profile the first binary conv's CDG")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = image_data("digits", "train", args.batch)
    print(f"thin XNOR-ResNet-18, batch {args.batch} images 3×32×32 (embedded digits), central CDG ε = {EPS}, "
          f"cross-entropy, float32, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"{'XNOR' if args.binary_weights else 'full-precision'} weights")
    if args.profile:
        for c in args.channels:
            profile_front_layer(c, x, y, 2 * args.coords, args.seed)
        return 0
    summaries = []
    for c in args.channels:
        coords = args.coords if c <= 8 else max(2, args.coords // 2)
        summaries.append(report(bench(c, x, y, coords, args.naive_coords, args.binary_weights, args.seed)))
    print("\nsummary:")
    for s in summaries:
        print(f"  c = {s['c']:2d}: ratio {s['uniform_ratio']:.1f}× (same coordinates per layer), "
              f"{s['all_ratio']:.1f}× (every weight); all-weight CDG projected {fmt_time(s['engine_all_s'])} "
              f"vs naive {fmt_time(s['naive_all_s'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
