"""CDG against the STE variants for one model of the thin ResNet experiment: cosine and magnitude
per layer, single-layer loss decrease (see :mod:`lib.experiments.thin_resnet.run`)."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from lib.core.estimators import cdg, ste
from lib.core.evaluate import best_decrease, cosine, loss_decrease
from lib.core.resnet import XnorResNet

from .params import LOSS


def eps_key(eps: float) -> str:
    """JSON key of an ε value (``0.1`` → ``"0.1"``)."""
    return f"{eps:g}"


def main_eps(eps: Sequence[float]) -> float:
    """The ε shown in the per-layer figures: 0.1 (the notes' default) when swept, else the first."""
    return 0.1 if any(abs(e - 0.1) < 1e-12 for e in eps) else float(eps[0])


def decrease_layers(names: Sequence[str]) -> list[str]:
    """First, middle and last of the binary conv weights."""
    return [names[0], names[len(names) // 2], names[-1]]


def _rms(g: torch.Tensor, mask: torch.Tensor) -> float:
    v = g.flatten()[mask.flatten()].double()
    return float(v.pow(2).mean().sqrt()) if v.numel() else float("nan")


def analyse(model: XnorResNet, p: dict[str, Any], act: str, x: torch.Tensor, y: torch.Tensor,
            device: torch.device, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """CDG vs STE for one model: cosine and magnitude per layer, loss decrease (see the module doc)."""
    names = model.binary_conv_names()
    variants = p["ste_variants"]
    out: dict[str, Any] = {"cosine": {}, "cosine_all": {}, "magnitude": {"cdg": {}, "ste": {}},
                           "timings": {}}
    t0 = time.perf_counter()
    ste_grads: dict[str, dict[str, torch.Tensor]] = {}
    for v in variants:
        if act == "fp" and ste_grads:  # the surrogate is unused: every variant is autograd
            ste_grads[v] = next(iter(ste_grads.values()))
        else:
            ste_grads[v] = ste(model, x, y, loss=LOSS, variant=v, layers=names)
    out["timings"]["ste_s"] = time.perf_counter() - t0

    cdg_grads: dict[str, dict[str, torch.Tensor]] = {}
    for eps in p["eps"]:
        t0 = time.perf_counter()
        g = cdg(model, x, y, loss=LOSS, eps=eps, central=True, layers=names,
                coords_per_layer=p["coords_per_layer"], seed=p["seed"], device=device, budget_mb=p["budget_mb"])
        out["timings"][f"cdg_s_eps_{eps_key(eps)}"] = time.perf_counter() - t0
        log(f"  cdg ε={eps:g}: {time.perf_counter() - t0:.1f}s")
        cdg_grads[eps_key(eps)] = g
        cos_by_variant, all_by_variant = {}, {}
        for v in variants:
            c = cosine(g, ste_grads[v])
            cos_by_variant[v] = [c[n] for n in names]
            all_by_variant[v] = c["all"]
        out["cosine"][eps_key(eps)] = cos_by_variant
        out["cosine_all"][eps_key(eps)] = all_by_variant
        masks = {n: torch.isfinite(g[n]) for n in names}
        out["magnitude"]["cdg"][eps_key(eps)] = [_rms(g[n], masks[n]) for n in names]
        out["sampled"] = [int(masks[n].sum()) for n in names]
    masks = {n: torch.isfinite(next(iter(cdg_grads.values()))[n]) for n in names}
    out["magnitude"]["ste"] = {v: [_rms(ste_grads[v][n], masks[n]) for n in names] for v in variants}
    out["magnitude"]["ste_all_coords"] = {
        v: [float(ste_grads[v][n].double().pow(2).mean().sqrt()) for n in names] for v in variants}

    if act in p["decrease_acts"]:
        t0 = time.perf_counter()
        out["decrease"] = {}
        for layer in decrease_layers(names):
            mask = masks[layer]
            curves: dict[str, Any] = {"cdg": {}, "ste": {}, "best": {}}
            for ek, g in cdg_grads.items():
                c = loss_decrease(model, x, y, {layer: g[layer]}, p["lrs"], p["normalize"], LOSS)
                curves["cdg"][ek] = c.tolist()
                curves["best"][f"cdg_eps_{ek}"] = best_decrease(p["lrs"], c)
            for v in variants:
                d = torch.where(mask, ste_grads[v][layer], torch.zeros_like(ste_grads[v][layer]))
                c = loss_decrease(model, x, y, {layer: d}, p["lrs"], p["normalize"], LOSS)
                curves["ste"][v] = c.tolist()
                curves["best"][v] = best_decrease(p["lrs"], c)
            out["decrease"][layer] = curves
        out["timings"]["decrease_s"] = time.perf_counter() - t0
    return out
