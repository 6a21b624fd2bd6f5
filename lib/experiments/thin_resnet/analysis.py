"""CDG against the STE variants for one model of the thin ResNet experiment: cosine and magnitude
per layer, single-layer loss decrease (see :mod:`lib.experiments.thin_resnet.run`).

The records :func:`analyse` returns (:mod:`lib.experiments.records`), per-layer lists front to back:

* ``cosines``: ``{variant, eps, per_layer, all}``: the STE variant against CDG at step ε;
* ``magnitudes``: ``{estimator: "cdg", eps, per_layer}`` and ``{estimator: "ste", variant,
  per_layer, all_coordinates}``: RMS on the sampled coordinates (and, for the STE, on all);
* ``decrease`` (precisions in ``decrease_acts``): ``{layer, estimator, eps or variant, curve,
  best, best_lr}``, the single-layer lr → loss-decrease curve over ``lrs``;
* ``sampled`` (coordinates per layer) and ``timings`` (``ste_s``, ``cdg_s`` as ``[{eps,
  seconds}]``, ``decrease_s``).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from lib.core.estimators import cdg, ste
from lib.core.evaluate import best_decrease, cosine, loss_decrease
from lib.core.resnet import XnorResNet

from .params import LOSS


def main_eps(eps: Sequence[float]) -> float:
    """The ε shown in the per-layer figures: 0.1 (the notes' default) when swept, else the first."""
    return next((float(e) for e in eps if abs(e - 0.1) < 1e-12), float(eps[0]))


def decrease_layers(names: Sequence[str]) -> list[str]:
    """First, middle and last of the binary conv weights."""
    return [names[0], names[len(names) // 2], names[-1]]


def _rms(g: torch.Tensor, mask: torch.Tensor) -> float:
    v = g.flatten()[mask.flatten()].double()
    return float(v.pow(2).mean().sqrt()) if v.numel() else float("nan")


def _ste_gradients(model: XnorResNet, act: str, variants: Sequence[str], x: torch.Tensor, y: torch.Tensor,
                   names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for v in variants:
        if act == "fp" and out:  # the surrogate is unused: every variant is autograd
            out[v] = next(iter(out.values()))
        else:
            out[v] = ste(model, x, y, loss=LOSS, variant=v, layers=names)
    return out


def analyse(model: XnorResNet, p: dict[str, Any], act: str, x: torch.Tensor, y: torch.Tensor,
            device: torch.device, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """CDG vs STE for one model: cosine and magnitude per layer, loss decrease (see the module doc)."""
    names = model.binary_conv_names()
    variants = p["ste_variants"]
    out: dict[str, Any] = {"cosines": [], "magnitudes": [], "timings": {"cdg_s": []}}
    t0 = time.perf_counter()
    ste_grads = _ste_gradients(model, act, variants, x, y, names)
    out["timings"]["ste_s"] = time.perf_counter() - t0
    cdg_grads: dict[float, dict[str, torch.Tensor]] = {}
    for eps in p["eps"]:
        t0 = time.perf_counter()
        g = cdg(model, x, y, loss=LOSS, eps=eps, central=True, layers=names,
                coords_per_layer=p["coords_per_layer"], seed=p["seed"], device=device, budget_mb=p["budget_mb"])
        out["timings"]["cdg_s"].append({"eps": eps, "seconds": time.perf_counter() - t0})
        log(f"  cdg ε={eps:g}: {time.perf_counter() - t0:.1f}s")
        cdg_grads[eps] = g
        for v in variants:
            c = cosine(g, ste_grads[v])
            out["cosines"].append({"variant": v, "eps": eps, "per_layer": [c[n] for n in names], "all": c["all"]})
        masks = {n: torch.isfinite(g[n]) for n in names}
        out["magnitudes"].append({"estimator": "cdg", "eps": eps, "per_layer": [_rms(g[n], masks[n]) for n in names]})
        out["sampled"] = [int(masks[n].sum()) for n in names]
    masks = {n: torch.isfinite(next(iter(cdg_grads.values()))[n]) for n in names}
    out["magnitudes"] += [{"estimator": "ste", "variant": v, "per_layer": [_rms(ste_grads[v][n], masks[n]) for n in names],
                           "all_coordinates": [float(ste_grads[v][n].double().pow(2).mean().sqrt()) for n in names]}
                          for v in variants]
    if act in p["decrease_acts"]:
        t0 = time.perf_counter()
        out["decrease"] = _decrease(model, p, x, y, names, cdg_grads, ste_grads, masks)
        out["timings"]["decrease_s"] = time.perf_counter() - t0
    return out


def _decrease(model: XnorResNet, p: dict[str, Any], x: torch.Tensor, y: torch.Tensor, names: list[str],
              cdg_grads: dict[float, dict[str, torch.Tensor]], ste_grads: dict[str, dict[str, torch.Tensor]],
              masks: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Single-layer loss decrease of the first, middle and last binary layer: CDG (each ε) and
    each STE variant restricted to that layer's sampled coordinates."""
    out = []
    for layer in decrease_layers(names):
        directions = [({"estimator": "cdg", "eps": eps}, g[layer]) for eps, g in cdg_grads.items()]
        directions += [({"estimator": "ste", "variant": v},
                        torch.where(masks[layer], ste_grads[v][layer], torch.zeros_like(ste_grads[v][layer])))
                       for v in p["ste_variants"]]
        for key, d in directions:
            c = loss_decrease(model, x, y, {layer: d}, p["lrs"], p["normalize"], LOSS)
            best, best_lr = best_decrease(p["lrs"], c)
            out.append({"layer": layer, **key, "curve": c.tolist(), "best": best, "best_lr": best_lr})
    return out
