"""The NES diagnosis of a toy run: does NES point downhill, and if not, is it variance (too few
samples) or smoothing bias (σ too large)? See docs/design.md §2 (exact smoothed gradient)."""
from __future__ import annotations

from typing import Any


def diagnose(results: dict[str, Any]) -> dict[str, Any]:
    """Why NES does or does not point downhill, from a toy run's numbers.

    For each σ: ``variance`` when the exact smoothed gradient (the infinite-sample NES on the last
    two layers) decreases the loss but NES with the largest sample count stays far from it
    (cosine < 0.5) or improves markedly with more samples; ``bias`` when the exact smoothed
    gradient itself decreases the loss less than half as much as CDG on the same two layers;
    ``fine`` otherwise. The verdict names the dominant cause at the σ where NES does best.
    """
    curves, cosines = results["curves"], results["cosines"]
    samples = sorted((k.split(":")[1] for k in curves if k.startswith("nes:")), key=int)
    cdg2 = next(iter(curves["cdg_last2"].values()))["best"]
    per_sigma = {}
    for sigma, exact in curves["exact_smoothed"].items():
        cos_by_s = {s: cosines[f"nes_last2_vs_exact:{s}"][sigma]["mean"] for s in samples}
        best_by_s = {s: curves[f"nes:{s}"][sigma]["best"] for s in samples}
        exact_best = exact["best"]
        biased = not (exact_best > 0.5 * cdg2) if cdg2 > 0 else exact_best <= 0
        noisy = cos_by_s[samples[-1]] < 0.5 or (cos_by_s[samples[-1]] - cos_by_s[samples[0]] > 0.2)
        cause = "bias" if biased else ("variance" if noisy else "fine")
        per_sigma[sigma] = {"cause": cause, "exact_best": exact_best, "cos_nes_exact": cos_by_s,
                            "nes_best": best_by_s, "cos_exact_cdg": cosines["exact_vs_cdg"][sigma]["mean"]}
    best_sigma = {s: max(per_sigma, key=lambda sg: per_sigma[sg]["nes_best"][s]) for s in samples}
    return {"cdg_last2_best": cdg2, "per_sigma": per_sigma, "best_sigma": best_sigma,
            "cdg_best": max(c["best"] for c in curves["cdg"].values())}


def diagnosis_text(results: dict[str, Any]) -> str:
    """A paragraph (markdown) answering *does NES point downhill, and if not, why* for one run."""
    d = results.get("diagnosis")
    if not d:
        return "_No NES diagnosis in this run (`diagnose = False`)._"
    per = d["per_sigma"]
    samples = sorted(next(iter(per.values()))["cos_nes_exact"], key=int)
    lo, hi = samples[0], samples[-1]
    causes = {sg: per[sg]["cause"] for sg in per}
    biased = sorted((sg for sg, c in causes.items() if c == "bias"), key=float)
    noisy = sorted((sg for sg, c in causes.items() if c == "variance"), key=float)
    best_nes = max((per[sg]["nes_best"][hi], sg) for sg in per)
    lines = [f"**num_dim = {results['num_dim']}**"
             f" ({'pretrained' if results['pretrained'] else 'no pretraining'}): "
             f"best CDG loss decrease {d['cdg_best']:.4g}; best NES with {hi} samples "
             f"{best_nes[0]:.4g} at σ = {best_nes[1]}."]
    if noisy:
        ex = noisy[0]
        lines.append(f"*Variance* dominates at σ ∈ {{{', '.join(noisy)}}}: on the last two layers NES has cosine "
                     f"{per[ex]['cos_nes_exact'][lo]:.2f} with its infinite-sample limit at {lo} samples and "
                     f"{per[ex]['cos_nes_exact'][hi]:.2f} at {hi} (σ = {ex}), while the exact smoothed gradient "
                     f"itself decreases the loss by {per[ex]['exact_best']:.4g} (CDG on the same layers: "
                     f"{d['cdg_last2_best']:.4g}). More samples fix it.")
    if biased:
        ex = biased[-1]
        lines.append(f"*Smoothing bias* dominates at σ ∈ {{{', '.join(biased)}}}: even the exact smoothed gradient "
                     f"(infinite samples) decreases the loss by only {per[ex]['exact_best']:.4g} at σ = {ex}, "
                     f"against {d['cdg_last2_best']:.4g} for CDG on the same layers (cosine with CDG "
                     f"{per[ex]['cos_exact_cdg']:.2f}): σ is too large, more samples cannot help.")
    fine = sorted((sg for sg, c in causes.items() if c == "fine"), key=float)
    if fine:
        lines.append(f"At σ ∈ {{{', '.join(fine)}}} NES points downhill "
                     f"(cosine with the exact smoothed gradient ≥ 0.5 at {hi} samples).")
    return " ".join(lines)
