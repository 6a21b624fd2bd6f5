"""Summaries of thin ResNet results: per-stage cosines and the automatically written paragraph."""
from __future__ import annotations

import math
from typing import Any, Sequence


from lib.experiments.cells import PRECISION_TITLES
from lib.experiments.records import only, select
from lib.experiments.stats import finite_mean



def analysis_of(result: dict[str, Any], state: str, act: str) -> dict[str, Any]:
    """The analysis record of one (state, precision)."""
    return only(result["analyses"], state=state, act=act)


def states_of(result: dict[str, Any]) -> list[str]:
    """States of a result that have an analysis, in the order of its parameters."""
    return [s for s in result["parameters"]["states"] if select(result["analyses"], state=s)]


def acts_of(result: dict[str, Any], state: str) -> list[str]:
    """Precisions analysed in ``state``, in the order of the parameters."""
    return [a for a in result["parameters"]["acts"] if select(result["analyses"], state=state, act=a)]


def cosine_of(entry: dict[str, Any], variant: str, eps: float) -> dict[str, Any]:
    """The cosine record of an STE variant against CDG at step ``eps`` (``per_layer``, ``all``)."""
    return only(entry["cosines"], variant=variant, eps=eps)


def stage_mean(result: dict[str, Any], values: Sequence[Any], stage: int, skip_last: bool = False) -> float:
    """Mean of per-layer ``values`` over the layers of ``stage`` (1 = front, 4 = back), optionally
    without the last binary conv."""
    n = len(values)
    return finite_mean([v for i, (v, layer) in enumerate(zip(values, result["layers"]))
                    if layer["stage"] == stage and not (skip_last and i == n - 1)])


def front_back(result: dict[str, Any], state: str, act: str, variant: str,
               eps: float | None = None) -> dict[str, float]:
    """Cosine summary of one (state, precision, STE variant): ``front`` = mean over stage 1,
    ``back`` = mean over stage 4 without the last binary conv, ``last`` = the last binary conv
    (no quantizer after it, so its STE gradient is exact up to the ε-smoothing of CDG),
    ``all`` = the cosine over all 16 layers at once."""
    record = cosine_of(analysis_of(result, state, act), variant, result["eps_main"] if eps is None else eps)
    cos, allc = record["per_layer"], record["all"]
    return {"front": stage_mean(result, cos, 1), "back": stage_mean(result, cos, 4, skip_last=True),
            "last": float("nan") if cos[-1] is None else float(cos[-1]),
            "all": float("nan") if allc is None else float(allc)}


def mean_cosine(result: dict[str, Any], state: str, act: str, eps: float | None = None) -> list[float]:
    """Per-layer cosine averaged over the STE variants."""
    entry = analysis_of(result, state, act)
    eps = result["eps_main"] if eps is None else eps
    per_variant = [cosine_of(entry, v, eps)["per_layer"] for v in result["ste_variants"]]
    return [finite_mean([cos[i] for cos in per_variant]) for i in range(len(result["layers"]))]


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
        for state in states_of(r):
            sentences = []
            if "binary" in acts_of(r, state):
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
                    front = finite_mean([fb["front"] for fb in finite.values()])
                    back = finite_mean([fb["back"] for fb in finite.values()])
                    best_v = max(finite, key=lambda v: finite[v]["all"] if math.isfinite(finite[v]["all"]) else -2)
                    last = finite_mean([fb["last"] for fb in finite.values()])
                    sentences.append(
                        f"with binary activations the cosine of CDG (ε = {r['eps_main']:g}) with the STE is "
                        f"{trend} for {max(n_front, len(finite) - n_front)} of {len(finite)} variants (mean over "
                        f"variants {front:.2f} in front, {back:.2f} at the back); at the last binary conv, "
                        f"which no quantizer follows, it is {last:.2f}; the variant closest to CDG over all "
                        f"layers is {best_v} (cosine {finite[best_v]['all']:.2f})")
            prec = [(a, finite_mean(mean_cosine(r, state, a))) for a in acts_of(r, state)]
            if len(prec) > 1:
                order = sorted(prec, key=lambda t: -t[1] if math.isfinite(t[1]) else 2)
                listing = " > ".join(f"{PRECISION_TITLES.get(a, a)} ({v:.2f})" for a, v in order)
                sentences.append(f"the mean cosine over the 16 layers and the STE variants orders the "
                                 f"activations {listing}")
            for act in acts_of(r, state):
                entry = analysis_of(r, state, act)
                if "decrease" not in entry:
                    continue
                notes = []
                for layer in r["decrease_layers"]:
                    cd = only(entry["decrease"], layer=layer, estimator="cdg", eps=r["eps_main"])["best"]
                    ste_best = [(d["best"], d["variant"]) for d in select(entry["decrease"], layer=layer, estimator="ste")
                                if d["best"] is not None]
                    if cd is None or not ste_best:
                        continue
                    top, top_v = max(ste_best)
                    notes.append(f"layer {layer_label(r, layer)}: CDG {cd:.3g}, {_compare(cd, top)} the best "
                                 f"STE ({top_v}, {top:.3g})")
                if notes:
                    sentences.append(f"best single-layer loss decrease with {PRECISION_TITLES.get(act, act)} "
                                     "activations: " + "; ".join(notes))
            if sentences:
                text = "; ".join(sentences)
                parts.append(f"**c = {c}, {state}**: {text[0].upper()}{text[1:]}.")
    return "\n\n".join(parts) if parts else "No results."


def layer_label(result: dict[str, Any], name: str) -> str:
    """``"1.0.1"`` (stage.block.conv) of a binary conv weight."""
    return next(layer["label"] for layer in result["layers"] if layer["name"] == name)
