"""CDG against the STE variants for one model of the thin ResNet experiment: cosine and magnitude
per layer, CDG's noise ceiling, single-layer loss decrease (see :mod:`lib.experiments.thin_resnet.run`).

CDG is computed on ``coord_sets`` independent seeded sets of ``coords_per_layer`` coordinates per
layer (set ``k`` drawn with seed :func:`coord_seed`); every number below is the mean over the sets,
and ``sets`` keeps each set's own, from which the report takes its 95% intervals (n = the sets).
The records :func:`analyse` returns (:mod:`lib.experiments.records`), per-layer lists front to back:

* ``cosines``: ``{variant, eps, per_layer, all, sets: [{per_layer, all}]}``: the STE variant
  against CDG at step ε;
* ``ceiling`` (with a reference batch; at the main ε, :func:`main_eps`): ``{eps, per_layer, all,
  sets}``: CDG on the gradient batch against CDG on an independent batch of the same size, on the
  same coordinates: how well the reference agrees with itself at this batch size;
* ``cross_cosines`` (with a reference batch, at the main ε): ``{variant, eps, per_layer, all,
  sets}``: the STE variant on the gradient batch against CDG on the independent batch, sharing no
  sampling noise, read against √(c_STE · c_CDG) (docs/design.md §2);
* ``ste_ceiling`` (with a reference batch, at the main ε): ``{variant, eps, per_layer, all, sets}``:
  the STE variant on the gradient batch against itself on the independent batch, on each set's
  coordinates (its own noise ceiling c_STE);
* ``magnitudes``: ``{estimator: "cdg", eps, per_layer}`` and ``{estimator: "ste", variant,
  per_layer, all_coordinates}``: RMS on the sampled coordinates (and, for the STE, on all);
* ``decrease`` (precisions in ``decrease_acts``): ``{layer, estimator, eps or variant, curve,
  best, best_lr, interval, n, sets: [{curve, best, best_lr}]}``: the single-layer lr →
  loss-decrease curve over ``lrs`` (mean over the sets), its best, and the 95% interval of the
  sets' values at that lr, **in-sample** (on the gradient batch);
* ``by_batch`` (binary activations, with ``resolution_batch_sizes``): ``{batch_size, eps,
  ceiling: {per_layer, all, sets}, cross: [{variant, per_layer, all, sets}]}``: the noise ceiling
  and the cross-batch STE cosines again on two fresh disjoint batches of each size, at the main ε;
* ``sampled`` (coordinates per layer and set) and ``timings`` (``ste_s``, ``cdg_s`` as ``[{eps,
  seconds}]``, ``decrease_s``).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from lib.core.estimators import cdg, ste
from lib.core.evaluate import best_decrease, cosine, loss_decrease, restrict
from lib.core.resnet import XnorResNet
from lib.experiments.stats import finite_mean, interval

from .params import LOSS, ThinResNetParams


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


def coord_seed(p: ThinResNetParams, k: int) -> int:
    """The seed of coordinate set ``k`` (set 0: the run's own ``seed``)."""
    return int(p.seed) + 7919 * k


def _over_sets(per_set: list[dict[str, Any]]) -> dict[str, Any]:
    """``{per_layer, all}`` as the means over the sets, with the sets themselves."""
    layers = len(per_set[0]["per_layer"])
    return {"per_layer": [finite_mean(s["per_layer"][i] for s in per_set) for i in range(layers)],
            "all": finite_mean(s["all"] for s in per_set), "sets": per_set}


def _cosine_record(c: dict[str, float], names: list[str]) -> dict[str, Any]:
    return {"per_layer": [c[n] for n in names], "all": c["all"]}


def analyse(model: XnorResNet, p: ThinResNetParams, act: str, x: torch.Tensor, y: torch.Tensor,
            device: torch.device, log: Callable[[str], None] = lambda s: None,
            reference: tuple[torch.Tensor, torch.Tensor] | None = None,
            resolution: Sequence[tuple[int, tuple, tuple]] = ()) -> dict[str, Any]:
    """CDG vs STE for one model on the batch ``(x, y)`` (see the module doc); with ``reference``,
    an independent batch of the same size, CDG's noise ceiling and the cross-batch STE cosines
    too; with binary activations and ``resolution`` batches, ``by_batch``."""
    names = model.binary_conv_names()
    variants = p.ste_variants
    sets = range(p.coord_sets)
    out: dict[str, Any] = {"cosines": [], "ceiling": [], "cross_cosines": [], "ste_ceiling": [], "magnitudes": [],
                           "timings": {"cdg_s": []}}
    t0 = time.perf_counter()
    ste_grads = _ste_gradients(model, act, variants, x, y, names)
    out["timings"]["ste_s"] = time.perf_counter() - t0

    def cdg_on(xb: torch.Tensor, yb: torch.Tensor, eps: float, k: int) -> dict[str, torch.Tensor]:
        return _cdg_on_set(model, p, xb, yb, eps, k, names, device)

    cdg_grads: dict[float, list[dict[str, torch.Tensor]]] = {}
    for eps in p.eps:
        t0 = time.perf_counter()
        gs = cdg_grads[eps] = [cdg_on(x, y, eps, k) for k in sets]
        out["timings"]["cdg_s"].append({"eps": eps, "seconds": time.perf_counter() - t0})
        log(f"  cdg ε={eps:g}, {len(gs)} coordinate set(s): {time.perf_counter() - t0:.1f}s")
        for v in variants:
            out["cosines"].append({"variant": v, "eps": eps,
                                   **_over_sets([_cosine_record(cosine(g, ste_grads[v]), names) for g in gs])})
        if reference is not None and eps == main_eps(p.eps):  # the ε of the tables and figures
            other = [cdg_on(*reference, eps, k) for k in sets]
            out["ceiling"].append({"eps": eps, **_over_sets(
                [_cosine_record(cosine(g, gb), names) for g, gb in zip(gs, other)])})
            out["cross_cosines"] += [{"variant": v, "eps": eps, **_over_sets(
                [_cosine_record(cosine(gb, ste_grads[v]), names) for gb in other])} for v in variants]
            out["ste_ceiling"] += _ste_ceiling(model, act, variants, ste_grads, reference, names, gs, eps)
        out["magnitudes"].append({"estimator": "cdg", "eps": eps, "per_layer": [
            finite_mean(_rms(g[n], torch.isfinite(g[n])) for g in gs) for n in names]})
    masks = [{n: torch.isfinite(g[n]) for n in names} for g in next(iter(cdg_grads.values()))]
    out["sampled"] = [[int(m[n].sum()) for n in names] for m in masks]
    out["magnitudes"] += [{"estimator": "ste", "variant": v,
                           "per_layer": [finite_mean(_rms(ste_grads[v][n], m[n]) for m in masks) for n in names],
                           "all_coordinates": [float(ste_grads[v][n].double().pow(2).mean().sqrt()) for n in names]}
                          for v in variants]
    if act == "binary" and resolution:
        t0 = time.perf_counter()
        out["by_batch"] = [_at_batch(model, p, n, a, b, names) for n, a, b in resolution]
        out["timings"]["by_batch_s"] = time.perf_counter() - t0
    if act in p.decrease_acts:
        t0 = time.perf_counter()
        out["decrease"] = _decrease(model, p, (x, y), names, cdg_grads, ste_grads, masks)
        out["timings"]["decrease_s"] = time.perf_counter() - t0
    return out


def _cdg_on_set(model: XnorResNet, p: ThinResNetParams, x: torch.Tensor, y: torch.Tensor, eps: float, k: int,
                names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Central CDG at ``eps`` on coordinate set ``k`` (seed :func:`coord_seed`) of the binary convs."""
    return cdg(model, x, y, loss=LOSS, eps=eps, central=True, layers=names, coords_per_layer=p.coords_per_layer,
               seed=coord_seed(p, k), device=device, budget_mb=p.budget_mb)


def _at_batch(model: XnorResNet, p: ThinResNetParams, n: int, a: tuple[torch.Tensor, torch.Tensor],
              b: tuple[torch.Tensor, torch.Tensor], names: list[str]) -> dict[str, Any]:
    """The noise ceiling ``cos(CDG_a, CDG_b)`` and each variant's ``cos(STE_a, CDG_b)`` on two
    disjoint batches of ``n`` images, at the main ε, on the run's coordinate sets."""
    eps = main_eps(p.eps)
    device = next(model.parameters()).device
    a = tuple(t.to(device) for t in a)
    b = tuple(t.to(device) for t in b)
    sets = range(p.coord_sets)
    ga = [_cdg_on_set(model, p, *a, eps, k, names, device) for k in sets]
    gb = [_cdg_on_set(model, p, *b, eps, k, names, device) for k in sets]
    stes = _ste_gradients(model, "binary", p.ste_variants, *a, names)
    return {"batch_size": n, "eps": eps,
            "ceiling": _over_sets([_cosine_record(cosine(x, y), names) for x, y in zip(ga, gb)]),
            "cross": [{"variant": v, **_over_sets([_cosine_record(cosine(g, stes[v]), names) for g in gb])}
                      for v in p.ste_variants],
            "ste_ceiling": _ste_ceiling(model, "binary", p.ste_variants, stes, b, names, ga, eps)}


def _ste_ceiling(model: XnorResNet, act: str, variants: Sequence[str], on_a: dict[str, dict[str, torch.Tensor]],
                 b: tuple[torch.Tensor, torch.Tensor], names: list[str], sets: Sequence[dict[str, torch.Tensor]],
                 eps: float) -> list[dict[str, Any]]:
    """Each variant's own noise ceiling ``cos(STE_a, STE_b)`` on each coordinate set (``sets``: CDG
    on them), which with CDG's gives the score of an STE with no error of its own
    (:mod:`lib.experiments.thin_resnet.resolution`)."""
    on_b = _ste_gradients(model, act, variants, *b, names)
    return [{"variant": v, "eps": eps, **_over_sets([_cosine_record(cosine(restrict(on_a[v], g), restrict(on_b[v], g)),
                                                                     names) for g in sets])} for v in variants]


def _decrease(model: XnorResNet, p: ThinResNetParams, scored_on: tuple[torch.Tensor, torch.Tensor], names: list[str],
              cdg_grads: dict[float, list[dict[str, torch.Tensor]]], ste_grads: dict[str, dict[str, torch.Tensor]],
              masks: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """Single-layer loss decrease of the first, middle and last binary layer, per coordinate set,
    on the images ``scored_on``: CDG (each ε) and each STE variant restricted to that set's
    coordinates of the layer."""
    out = []
    for layer in decrease_layers(names):
        keys = [{"estimator": "cdg", "eps": eps} for eps in cdg_grads] + \
               [{"estimator": "ste", "variant": v} for v in p.ste_variants]
        for key in keys:
            per_set = []
            for k, mask in enumerate(masks):
                if key["estimator"] == "cdg":
                    d = cdg_grads[key["eps"]][k][layer]
                else:
                    g = ste_grads[key["variant"]][layer]
                    d = torch.where(mask[layer], g, torch.zeros_like(g))
                c = loss_decrease(model, *scored_on, {layer: d}, p.lrs, p.normalize, LOSS).tolist()
                best, best_lr = best_decrease(p.lrs, c)
                per_set.append({"curve": c, "best": best, "best_lr": best_lr})
            out.append({"layer": layer, **key, **_mean_curve(p.lrs, per_set)})
    return out


def _mean_curve(lrs: list[float], per_set: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean curve over the sets, its best and lr, and the 95% interval of the sets' values there."""
    curve = [finite_mean(s["curve"][i] for s in per_set) for i in range(len(lrs))]
    best, best_lr = best_decrease(lrs, curve)
    at = [s["curve"][lrs.index(best_lr)] for s in per_set] if best_lr in lrs else []
    return {"curve": curve, "best": best, "best_lr": best_lr, "interval": interval(best, at), "n": len(at),
            "sets": per_set}
