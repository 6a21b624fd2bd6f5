"""Summaries of thin ResNet results: per-stage cosines and the automatically written paragraph."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .analysis import eps_key

ACT_TITLES = {"binary": "binary", "ternary": "ternary", "2bit": "2-bit", "fp": "full precision"}


def states_of(result: dict[str, Any]) -> list[str]:
    """States of a result in the order of its parameters (a JSON round trip may sort the keys)."""
    return [s for s in result["parameters"]["states"] if s in result["states"]]


def acts_of(result: dict[str, Any], state: str) -> list[str]:
    return [a for a in result["parameters"]["acts"] if a in result["states"][state]]


def eps_keys(result: dict[str, Any]) -> list[str]:
    return [eps_key(e) for e in result["eps"]]


def nanmean(values: Sequence[Any]) -> float:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def stage_mean(result: dict[str, Any], values: Sequence[Any], stage: int, skip_last: bool = False) -> float:
    """Mean of per-layer ``values`` over the layers of ``stage`` (1 = front, 4 = back), optionally
    without the last binary conv."""
    n = len(values)
    return nanmean([v for i, (v, s) in enumerate(zip(values, result["layer_stage"]))
                     if s == stage and not (skip_last and i == n - 1)])


def front_back(result: dict[str, Any], state: str, act: str, variant: str,
               eps: float | None = None) -> dict[str, float]:
    """Cosine summary of one (state, precision, STE variant): ``front`` = mean over stage 1,
    ``back`` = mean over stage 4 without the last binary conv, ``last`` = the last binary conv
    (no quantizer after it, so its STE gradient is exact up to the ε-smoothing of CDG),
    ``all`` = the cosine over all 16 layers at once."""
    ek = eps_key(result["eps_main"] if eps is None else eps)
    entry = result["states"][state][act]
    cos = entry["cosine"][ek][variant]
    allc = entry["cosine_all"][ek][variant]
    return {"front": stage_mean(result, cos, 1), "back": stage_mean(result, cos, 4, skip_last=True),
            "last": float("nan") if cos[-1] is None else float(cos[-1]),
            "all": float("nan") if allc is None else float(allc)}


def mean_cosine(result: dict[str, Any], state: str, act: str, eps: float | None = None) -> list[float]:
    """Per-layer cosine averaged over the STE variants."""
    ek = eps_key(result["eps_main"] if eps is None else eps)
    curves = result["states"][state][act]["cosine"][ek]
    return [nanmean([curves[v][i] for v in result["ste_variants"]]) for i in range(len(result["layers"]))]


def _compare(a: float, b: float, rel: float = 1e-3) -> str:
    if abs(a - b) <= rel * max(abs(a), abs(b)):
        return "equal to"
    return "above" if a > b else "below"


def summary_text(results: Sequence[dict[str, Any]]) -> str:
    """An automatically written paragraph per (c, state): front vs back layers for binary
    activations, the precisions ordered by their agreement, and the single-layer loss decrease."""
    parts: list[str] = []
    for r in sorted(results, key=lambda r: r["initial_channels"]):
        c = r["initial_channels"]
        ek = eps_key(r["eps_main"])
        for state in states_of(r):
            by_act = r["states"][state]
            sentences = []
            if "binary" in by_act:
                rows = {v: front_back(r, state, "binary", v) for v in r["ste_variants"]}
                finite = {v: fb for v, fb in rows.items() 
                          if math.isfinite(fb["front"]) and math.isfinite(fb["back"])}
                if finite:
                    n_front = sum(fb["front"] > fb["back"] for fb in finite.values())
                    half = len(finite) / 2
                    trend = ("higher on the front stage (stage 1) than on the back stage (stage 4 without the "
                             "last conv)" if n_front > half else
                             "higher on the back stage (stage 4 without the last conv) than on the front stage "
                             "(stage 1)" if n_front < half else "no clearer on the front than on the back stage")
                    front = nanmean([fb["front"] for fb in finite.values()])
                    back = nanmean([fb["back"] for fb in finite.values()])
                    best_v = max(finite, key=lambda v: finite[v]["all"] if math.isfinite(finite[v]["all"]) else -2)
                    last = nanmean([fb["last"] for fb in finite.values()])
                    sentences.append(
                        f"with binary activations the cosine of CDG (ε = {r['eps_main']:g}) with the STE is "
                        f"{trend} for {max(n_front, len(finite) - n_front)} of {len(finite)} variants (mean over "
                        f"variants {front:.2f} in front, {back:.2f} at the back); at the last binary conv, "
                        f"which no quantizer follows, it is {last:.2f}; the variant closest to CDG over all "
                        f"layers is {best_v} (cosine {finite[best_v]['all']:.2f})")
            prec = [(a, nanmean(mean_cosine(r, state, a))) for a in acts_of(r, state)]
            if len(prec) > 1:
                order = sorted(prec, key=lambda t: -t[1] if math.isfinite(t[1]) else 2)
                listing = " > ".join(f"{ACT_TITLES.get(a, a)} ({v:.2f})" for a, v in order)
                sentences.append(f"the mean cosine over the 16 layers and the STE variants orders the "
                                 f"activations {listing}")
            for act in acts_of(r, state):
                entry = by_act[act]
                if "decrease" not in entry:
                    continue
                notes = []
                for layer in r["decrease_layers"]:
                    best = entry["decrease"][layer]["best"]
                    cd = best.get(f"cdg_eps_{ek}", [None])[0]
                    ste_best = [(best[v][0], v) for v in r["ste_variants"] if best[v][0] is not None]
                    if cd is None or not ste_best:
                        continue
                    top, top_v = max(ste_best)
                    notes.append(f"layer {layer_label(r, layer)}: CDG {cd:.3g}, {_compare(cd, top)} the best "
                                 f"STE ({top_v}, {top:.3g})")
                if notes:
                    sentences.append(f"best single-layer loss decrease with {ACT_TITLES.get(act, act)} "
                                     "activations: " + "; ".join(notes))
            if sentences:
                text = "; ".join(sentences)
                parts.append(f"**c = {c}, {state}**: {text[0].upper()}{text[1:]}.")
    return "\n\n".join(parts) if parts else "No results."


def layer_label(result: dict[str, Any], name: str) -> str:
    return result["layer_labels"][result["layers"].index(name)]
