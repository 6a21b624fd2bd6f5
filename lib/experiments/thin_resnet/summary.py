"""Summaries of thin ResNet results: per-stage cosines and the automatically written paragraph."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence


from lib.experiments.cells import PRECISION_TITLES
from lib.experiments.records import only, select
from lib.experiments.stats import finite, finite_mean, interval, with_interval

from .records import params_of

STAGE_KEYS = ("front", "back", "last", "all")


def analysis_of(result: dict[str, Any], state: str, act: str) -> dict[str, Any]:
    """The analysis record of one (state, precision)."""
    return only(result["analyses"], state=state, act=act)


def states_of(result: dict[str, Any]) -> list[str]:
    """States of a result that have an analysis, in the order of its parameters."""
    return [s for s in params_of(result).states if select(result["analyses"], state=s)]


def acts_of(result: dict[str, Any], state: str) -> list[str]:
    """Precisions analysed in ``state``, in the order of the parameters."""
    return [a for a in params_of(result).acts if select(result["analyses"], state=state, act=a)]


def cosine_of(entry: dict[str, Any], variant: str, eps: float) -> dict[str, Any]:
    """The cosine record of an STE variant against CDG at step ``eps`` (``per_layer``, ``all``)."""
    return only(entry["cosines"], variant=variant, eps=eps)


def stage_mean(result: dict[str, Any], values: Sequence[Any], stage: int, skip_last: bool = False) -> float:
    """Mean of per-layer ``values`` over the layers of ``stage`` (1 = front, 4 = back), optionally
    without the last binary conv."""
    n = len(values)
    return finite_mean([v for i, (v, layer) in enumerate(zip(values, result["layers"]))
                    if layer["stage"] == stage and not (skip_last and i == n - 1)])


def _stages(result: dict[str, Any], per_layer: Sequence[Any], allc: Any) -> dict[str, float]:
    return {"front": stage_mean(result, per_layer, 1), "back": stage_mean(result, per_layer, 4, skip_last=True),
            "last": float("nan") if per_layer[-1] is None else float(per_layer[-1]),
            "all": float("nan") if allc is None else float(allc)}


def _sets(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-coordinate-set values of a record (the record itself for results without sets)."""
    return record.get("sets") or [record]


def front_back_sets(result: dict[str, Any], state: str, act: str, variant: str | None,
                    eps: float | None = None) -> list[dict[str, float]]:
    """Cosine summary of one (state, precision, STE variant) per coordinate set: ``front`` = mean
    over stage 1, ``back`` = mean over stage 4 without the last binary conv, ``last`` = the last
    binary conv (no quantizer after it, so its STE gradient is exact up to the ε-smoothing of
    CDG), ``all`` = the cosine over all 16 layers at once. ``variant=None``: CDG's noise ceiling
    (``[]`` when the run has none)."""
    eps = result["eps_main"] if eps is None else eps
    entry = analysis_of(result, state, act)
    if variant is None:
        found = select(entry.get("ceiling", []), eps=eps)
        return [_stages(result, s["per_layer"], s["all"]) for s in _sets(found[0])] if found else []
    return [_stages(result, s["per_layer"], s["all"]) for s in _sets(cosine_of(entry, variant, eps))]


def front_back(result: dict[str, Any], state: str, act: str, variant: str | None,
               eps: float | None = None) -> dict[str, tuple[float, list[float] | None]]:
    """``{front, back, last, all}`` of :func:`front_back_sets` as ``(mean, 95% interval)`` over the
    coordinate sets (interval ``None`` for one set)."""
    sets = front_back_sets(result, state, act, variant, eps)
    return {k: measure([fb[k] for fb in sets]) for k in STAGE_KEYS}


def measure(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """The mean of the finite values and its 95% t-interval."""
    m = finite_mean(values)
    return m, interval(m, values)


def mean_cosine(result: dict[str, Any], state: str, act: str, eps: float | None = None) -> list[float]:
    """Per-layer cosine averaged over the STE variants."""
    entry = analysis_of(result, state, act)
    eps = result["eps_main"] if eps is None else eps
    per_variant = [cosine_of(entry, v, eps)["per_layer"] for v in result["ste_variants"]]
    return [finite_mean([cos[i] for cos in per_variant]) for i in range(len(result["layers"]))]


def _per_set_over_variants(result: dict[str, Any], state: str, act: str,
                           fn: Callable[[dict[str, float]], float]) -> list[float]:
    """Per coordinate set: the mean over the STE variants of ``fn(stage summary)``."""
    per_variant = [front_back_sets(result, state, act, v) for v in result["ste_variants"]]
    return [finite_mean(fn(sets[k]) for sets in per_variant) for k in range(len(per_variant[0]))]


def front_back_phrase(r: dict[str, Any], state: str) -> str:
    """Binary activations, mean over the STE variants: front, back and their difference with 95%
    intervals over the coordinate sets, and which is higher where the difference's interval excludes 0."""
    diff = _per_set_over_variants(r, state, "binary", lambda fb: fb["front"] - fb["back"])
    front = measure(_per_set_over_variants(r, state, "binary", lambda fb: fb["front"]))
    back = measure(_per_set_over_variants(r, state, "binary", lambda fb: fb["back"]))
    d, iv = measure(diff)
    n = len(finite(diff))
    if iv is not None and iv[0] > 0:
        trend = "higher on the front stage (stage 1) than on the back stage (stage 4 without the last conv)"
    elif iv is not None and iv[1] < 0:
        trend = "higher on the back stage (stage 4 without the last conv) than on the front stage (stage 1)"
    else:
        trend = f"not distinguishable between the front and the back stage at n = {n} coordinate set(s)"
    return (f"{trend}: front {with_interval(*front)}, back {with_interval(*back)}, difference "
            f"{with_interval(d, iv)} (95% intervals over n = {n} coordinate sets)")


def _decrease_note(r: dict[str, Any], entry: dict[str, Any], layer: str) -> str | None:
    """CDG and the best STE variant on one layer, described: the n is coordinate sets of one model
    and one batch, so nothing is claimed between them."""
    dec = entry["decrease"]
    cd = only(dec, layer=layer, estimator="cdg", eps=r["eps_main"])
    stes = [d for d in select(dec, layer=layer, estimator="ste") if d["best"] is not None]
    if cd["best"] is None or not stes:
        return None
    top = max(stes, key=lambda d: d["best"])
    return (f"layer {layer_label(r, layer)}: CDG {with_interval(cd['best'], cd.get('interval'))}, the best STE "
            f"({top['variant']}) {with_interval(top['best'], top.get('interval'))}")


def summary_text(results: Sequence[dict[str, Any]]) -> str:
    """An automatically written paragraph per (c, state): front vs back layers for binary
    activations and the precisions by their agreement (same-batch cosines, bounded by the
    reference's noise), and the single-layer loss decrease. The intervals are over coordinate sets
    of one model and one batch; the STE's error itself is judged in :mod:`.resolution`."""
    parts: list[str] = []
    for r in sorted(results, key=lambda r: r["initial_channels"]):
        for state in states_of(r):
            sentences = []
            if "binary" in acts_of(r, state):
                sentences.append(f"with binary activations the cosine of CDG (ε = {r['eps_main']:g}) with the STE "
                                 f"(mean over the variants) is {front_back_phrase(r, state)}")
            prec = [(a, measure(_per_set_over_variants(r, state, a, lambda fb: fb["all"]))) for a in acts_of(r, state)]
            if len(prec) > 1:
                order = sorted(prec, key=lambda t: -t[1][0] if math.isfinite(t[1][0]) else 2)
                listing = " > ".join(f"{PRECISION_TITLES.get(a, a)} ({with_interval(*m)})" for a, m in order)
                sentences.append("the cosine over all 16 layers, mean over the STE variants, orders the "
                                 f"activations {listing} (by mean; an order holds where the intervals separate)")
            for act in acts_of(r, state):
                entry = analysis_of(r, state, act)
                notes = [n for n in (_decrease_note(r, entry, layer) for layer in r["decrease_layers"]) if n] \
                    if "decrease" in entry else []
                if notes:
                    sentences.append(f"best single-layer loss decrease (in-sample) with {PRECISION_TITLES.get(act, act)} "
                                     "activations, described, not compared: " + "; ".join(notes))
            if sentences:
                text = "; ".join(sentences)
                parts.append(f"**c = {r['initial_channels']}, {state}**: {text[0].upper()}{text[1:]}.")
    return "\n\n".join(parts) if parts else "No results."


def layer_label(result: dict[str, Any], name: str) -> str:
    """``"1.0.1"`` (stage.block.conv) of a binary conv weight."""
    return next(layer["label"] for layer in result["layers"] if layer["name"] == name)
