"""The NES diagnosis of a toy run: does NES point downhill, and if not, is it variance (too few
samples) or smoothing bias (σ too large)? See docs/design.md §2 (exact smoothed gradient)."""
from __future__ import annotations

from typing import Any

from lib.experiments.records import distinct, only, select


def diagnose(results: dict[str, Any]) -> dict[str, Any]:
    """Why NES does or does not point downhill, from a toy run's numbers.

    For each σ: ``variance`` when the exact smoothed gradient (the infinite-sample NES on the last
    two layers) decreases the loss but NES with the largest sample count stays far from it
    (cosine < 0.5) or improves markedly with more samples; ``bias`` when the exact smoothed
    gradient itself decreases the loss less than half as much as CDG on the same two layers;
    ``fine`` otherwise. Returns ``cdg_best`` (CDG, all layers, best ε), ``cdg_last2_best``,
    ``per_sigma`` (``[{sigma, cause, exact_best, cos_exact_cdg, by_samples: [{samples,
    cos_nes_exact, nes_best}]}]``) and ``best_sigma`` (``[{samples, sigma}]``: where NES on all
    layers does best).
    """
    curves, cosines = results["curves"], results["cosines"]
    samples = distinct(curves, "samples", estimator="nes", layers="all")
    cdg2 = only(curves, estimator="cdg", layers="last_two")["best"]
    per_sigma = []
    for exact in select(curves, estimator="smoothed_exact"):
        sigma = exact["sigma"]
        exact_key = {"estimator": "smoothed_exact", "layers": "last_two", "sigma": sigma}
        by_samples = [{"samples": s,
                       "cos_nes_exact": only(cosines, estimate={"estimator": "nes", "layers": "last_two", "sigma": sigma,
                                                                "samples": s}, reference=exact_key)["mean"],
                       "nes_best": only(curves, estimator="nes", layers="all", sigma=sigma, samples=s)["best"]}
                      for s in samples]
        exact_best = exact["best"]
        biased = not (exact_best > 0.5 * cdg2) if cdg2 > 0 else exact_best <= 0
        cos_lo, cos_hi = by_samples[0]["cos_nes_exact"], by_samples[-1]["cos_nes_exact"]
        noisy = cos_hi < 0.5 or (cos_hi - cos_lo > 0.2)
        cause = "bias" if biased else ("variance" if noisy else "fine")
        per_sigma.append({"sigma": sigma, "cause": cause, "exact_best": exact_best, "by_samples": by_samples,
                          "cos_exact_cdg": only(cosines, estimate=exact_key, layer="all")["mean"]})
    best_sigma = [{"samples": s, "sigma": max(per_sigma, key=lambda d: _at(d, s)["nes_best"])["sigma"]}
                  for s in samples]
    return {"cdg_last2_best": cdg2, "per_sigma": per_sigma, "best_sigma": best_sigma,
            "cdg_best": max(c["best"] for c in select(curves, estimator="cdg", layers="all"))}


def _at(per: dict[str, Any], samples: int) -> dict[str, Any]:
    return next(b for b in per["by_samples"] if b["samples"] == samples)


def diagnosis_text(results: dict[str, Any]) -> str:
    """A paragraph (markdown) answering *does NES point downhill, and if not, why* for one run."""
    d = results.get("diagnosis")
    if not d:
        return "_No NES diagnosis in this run (`diagnose = False`)._"
    per = sorted(d["per_sigma"], key=lambda e: e["sigma"])
    samples = [b["samples"] for b in per[0]["by_samples"]]
    lo, hi = samples[0], samples[-1]

    def sigmas(cause: str) -> list[dict[str, Any]]:
        return [e for e in per if e["cause"] == cause]

    def listing(entries: list[dict[str, Any]]) -> str:
        return ", ".join(f"{e['sigma']:g}" for e in entries)

    best_nes = max(per, key=lambda e: _at(e, hi)["nes_best"])
    lines = [f"**num_dim = {results['num_dim']}**"
             f" ({'pretrained' if results['pretrained'] else 'no pretraining'}): "
             f"best CDG loss decrease {d['cdg_best']:.4g}; best NES with {hi} samples "
             f"{_at(best_nes, hi)['nes_best']:.4g} at σ = {best_nes['sigma']:g}."]
    noisy, biased, fine = sigmas("variance"), sigmas("bias"), sigmas("fine")
    if noisy:
        ex = noisy[0]
        lines.append(f"*Variance* dominates at σ ∈ {{{listing(noisy)}}}: on the last two layers NES has cosine "
                     f"{_at(ex, lo)['cos_nes_exact']:.2f} with its infinite-sample limit at {lo} samples and "
                     f"{_at(ex, hi)['cos_nes_exact']:.2f} at {hi} (σ = {ex['sigma']:g}), while the exact smoothed "
                     f"gradient itself decreases the loss by {ex['exact_best']:.4g} (CDG on the same layers: "
                     f"{d['cdg_last2_best']:.4g}). More samples fix it.")
    if biased:
        ex = biased[-1]
        lines.append(f"*Smoothing bias* dominates at σ ∈ {{{listing(biased)}}}: even the exact smoothed gradient "
                     f"(infinite samples) decreases the loss by only {ex['exact_best']:.4g} at σ = {ex['sigma']:g}, "
                     f"against {d['cdg_last2_best']:.4g} for CDG on the same layers (cosine with CDG "
                     f"{ex['cos_exact_cdg']:.2f}): σ is too large, more samples cannot help.")
    if fine:
        lines.append(f"At σ ∈ {{{listing(fine)}}} NES points downhill "
                     f"(cosine with the exact smoothed gradient ≥ 0.5 at {hi} samples).")
    return " ".join(lines)
