"""The NES diagnosis of a toy run: does NES point downhill, and if not, is it variance (too few
samples), smoothing bias (σ too large), both, or neither? See docs/design.md §2 (exact smoothed
gradient).

Everything is compared like with like, on the last hidden layer and the readout, where the exact
gradient of the Gaussian-smoothed loss is NES's infinite-sample limit. Per σ, from the means over
initialisations × batches and their 95% intervals (:mod:`lib.experiments.stats`):

* **smoothing bias**: the exact smoothed gradient decreases the loss by less than half as much as
  CDG on the same two layers, and its interval lies below CDG's (with one repetition, no interval:
  the means alone decide, and the text says n = 1);
* **variance**: NES with the most samples is still far from its limit (cosine with the exact
  smoothed gradient below 0.5), or the cosine rises by more than 0.2 from the fewest to the most
  samples with the two intervals apart;
* **both**, when both hold; **neither** otherwise (NES points downhill about as its limit does).
"""
from __future__ import annotations

import math
from typing import Any

from lib.experiments.records import distinct, only, select
from lib.experiments.stats import rank, separated, with_interval

CAUSES = ("bias", "variance", "both", "neither", "undetermined")  # the verdicts; undetermined: a number is missing
BIAS_RATIO = 0.5  # the exact smoothed gradient reaches less than this share of CDG's decrease
FAR_COSINE = 0.5  # NES with the most samples below this cosine with its limit
RISE = 0.2  # or its cosine rises by more than this from the fewest to the most samples
RULES = (f"*smoothing bias* when the exact smoothed gradient decreases the loss by less than "
         f"{BIAS_RATIO:g} × CDG's on the same two layers and its 95% interval lies below CDG's; *variance* "
         f"when NES with the most samples has cosine < {FAR_COSINE:g} with the exact smoothed gradient, or "
         f"that cosine rises by more than {RISE:g} from the fewest to the most samples with the intervals "
         "apart; *both* when both hold, *neither* otherwise")


def _last_two(curves: list[dict[str, Any]], estimator: str, **fields: Any) -> dict[str, Any]:
    return only(curves, estimator=estimator, layers="last_two", **fields)


def _verdict(exact: dict[str, Any], cdg2: dict[str, Any], lo: dict[str, Any], hi: dict[str, Any]) -> str:
    """The cause at one σ by the rules of the module docstring (``lo``/``hi``: the cosine records of
    NES with the fewest / most samples against the exact smoothed gradient); ``undetermined`` when
    one of the numbers is missing (NaN, stored as null)."""
    if any(rank(v) == -math.inf for v in (exact["best"], cdg2["best"], lo["mean"], hi["mean"])):
        return "undetermined"
    low_share = exact["best"] < BIAS_RATIO * cdg2["best"] if cdg2["best"] > 0 else exact["best"] <= 0
    with_intervals = exact.get("interval") is not None and cdg2.get("interval") is not None
    biased = low_share and (not with_intervals or separated(exact["interval"], cdg2["interval"]))
    rises = hi["mean"] - lo["mean"] > RISE and (
        lo.get("interval") is None or hi.get("interval") is None or separated(lo["interval"], hi["interval"]))
    noisy = hi["mean"] < FAR_COSINE or rises
    return {(True, True): "both", (True, False): "bias", (False, True): "variance"}.get((biased, noisy), "neither")


def diagnose(results: dict[str, Any]) -> dict[str, Any]:
    """Why NES does or does not point downhill, from a toy run's numbers (rules: module docstring).

    Returns ``cdg_best`` (CDG, all layers, best ε), ``cdg_last2`` (``{best, interval}``: CDG at
    ``reference_eps`` on the last two layers), ``n``, ``rules`` (the text of the rules),
    ``per_sigma`` (``[{sigma, cause, exact_best, exact_interval, cos_exact_cdg, by_samples:
    [{samples, cos_nes_exact, cos_interval, nes_best, nes_last2_best, nes_last2_interval}]}]``;
    ``nes_best`` is NES on all layers) and ``best_sigma`` (``[{samples, sigma}]``: where NES on all
    layers does best)."""
    curves, cosines = results["curves"], results["cosines"]
    samples = distinct(curves, "samples", estimator="nes", layers="all")
    cdg2 = _last_two(curves, "cdg")
    per_sigma = []
    for exact in select(curves, estimator="smoothed_exact"):
        sigma = exact["sigma"]
        exact_key = {"estimator": "smoothed_exact", "layers": "last_two", "sigma": sigma}
        cos = {s: only(cosines, estimate={**exact_key, "estimator": "nes", "samples": s}, reference=exact_key)
               for s in samples}
        by_samples = []
        for s in samples:
            nes2 = _last_two(curves, "nes", sigma=sigma, samples=s)
            by_samples.append({"samples": s, "cos_nes_exact": cos[s]["mean"], "cos_interval": cos[s].get("interval"),
                               "nes_best": only(curves, estimator="nes", layers="all", sigma=sigma, samples=s)["best"],
                               "nes_last2_best": nes2["best"], "nes_last2_interval": nes2.get("interval")})
        per_sigma.append({"sigma": sigma, "cause": _verdict(exact, cdg2, cos[samples[0]], cos[samples[-1]]),
                          "exact_best": exact["best"], "exact_interval": exact.get("interval"),
                          "by_samples": by_samples,
                          "cos_exact_cdg": only(cosines, estimate=exact_key, layer="all")["mean"]})
    best_sigma = [{"samples": s, "sigma": max(per_sigma, key=lambda d: rank(_at(d, s)["nes_best"]))["sigma"]}
                  for s in samples]
    return {"cdg_last2": {"best": cdg2["best"], "interval": cdg2.get("interval")}, "n": cdg2.get("n", 0),
            "rules": RULES, "per_sigma": per_sigma, "best_sigma": best_sigma,
            "cdg_best": max((c["best"] for c in select(curves, estimator="cdg", layers="all")), key=rank)}


def _at(per: dict[str, Any], samples: int) -> dict[str, Any]:
    return next(b for b in per["by_samples"] if b["samples"] == samples)


def _cos(value: float | None) -> str:
    return "–" if rank(value) == -math.inf else f"{value:.2f}"


def diagnosis_text(results: dict[str, Any]) -> str:
    """A paragraph (markdown) answering *does NES point downhill, and if not, why* for one run."""
    d = results.get("diagnosis")
    if not d:
        return "_No NES diagnosis in this run (`diagnose = False`)._"
    per = sorted(d["per_sigma"], key=lambda e: e["sigma"])
    samples = [b["samples"] for b in per[0]["by_samples"]]
    lo, hi = samples[0], samples[-1]
    cdg2 = with_interval(d["cdg_last2"]["best"], d["cdg_last2"]["interval"])
    n = f"n = {d['n']}" + ("" if d["n"] > 1 else ": no intervals, the means alone decide")

    def listing(cause: str) -> list[dict[str, Any]]:
        return [e for e in per if e["cause"] == cause]

    def sigmas(entries: list[dict[str, Any]]) -> str:
        return ", ".join(f"{e['sigma']:g}" for e in entries)

    best_nes = max(per, key=lambda e: rank(_at(e, hi)["nes_best"]))
    lines = [f"**num_dim = {results['num_dim']}** ({'pretrained' if results['pretrained'] else 'no pretraining'}"
             f", {n}): best CDG loss decrease {with_interval(d['cdg_best'], None)}; best NES with {hi} samples "
             f"{with_interval(_at(best_nes, hi)['nes_best'], None)} at σ = {best_nes['sigma']:g} (all layers)."]
    for cause, label in (("both", "*Variance and smoothing bias*"), ("bias", "*Smoothing bias*"),
                         ("variance", "*Variance*"), ("neither", "*Neither*"), ("undetermined", "*Undetermined*")):
        entries = listing(cause)
        if not entries:
            continue
        ex = entries[0] if cause in ("variance", "neither") else entries[-1]
        facts = (f"at σ = {ex['sigma']:g} the exact smoothed gradient decreases the loss by "
                 f"{with_interval(ex['exact_best'], ex['exact_interval'])} against {cdg2} for CDG on the same "
                 f"two layers; NES there has cosine {_cos(_at(ex, lo)['cos_nes_exact'])} with it at {lo} samples and "
                 f"{_cos(_at(ex, hi)['cos_nes_exact'])} at {hi}")
        remedy = {"both": "σ is too large and the samples too few", "bias": "σ is too large; more samples cannot help",
                  "variance": "more samples help", "neither": "NES points downhill as its limit does",
                  "undetermined": "a number is missing (an estimate was all zero)"}[cause]
        lines.append(f"{label} at σ ∈ {{{sigmas(entries)}}}: {facts}; {remedy}.")
    return " ".join(lines)
