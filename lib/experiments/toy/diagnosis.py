"""The in-sample view of the NES diagnosis, for its figure: on the last hidden layer and the
readout, the cosine of NES with the exact gradient of the Gaussian-smoothed loss there (its
infinite-sample limit) as the samples grow, and the in-sample best loss decreases of NES, of that
limit and of CDG on the same two layers (docs/design.md §2, exact smoothed gradient).

These numbers give no verdict: a cosine that rises with the samples says nothing about a shortfall
in loss decrease, and the decreases are in-sample. The verdicts (variance, smoothing bias) come
from held-out decreases in :mod:`lib.experiments.toy.nes_diagnosis`.
"""
from __future__ import annotations

from typing import Any

from lib.experiments.records import distinct, only, select
from lib.experiments.stats import rank


def _last_two(curves: list[dict[str, Any]], estimator: str, **fields: Any) -> dict[str, Any]:
    return only(curves, estimator=estimator, layers="last_two", **fields)


def diagnose(results: dict[str, Any]) -> dict[str, Any]:
    """The in-sample numbers of the diagnosis figure, from a toy run's curves and cosines.

    Returns ``cdg_best`` (CDG, all layers, best ε), ``cdg_last2`` (``{best, interval}``: CDG at
    ``reference_eps`` on the last two layers), ``n``, ``per_sigma`` (``[{sigma, exact_best,
    exact_interval, cos_exact_cdg, by_samples: [{samples, cos_nes_exact, cos_interval, nes_best,
    nes_last2_best, nes_last2_interval}]}]``; ``nes_best`` is NES on all layers) and ``best_sigma``
    (``[{samples, sigma}]``: where NES on all layers does best, in-sample)."""
    curves, cosines = results["curves"], results["cosines"]
    samples = distinct(curves, "samples", estimator="nes", layers="all")
    cdg2 = _last_two(curves, "cdg")
    per_sigma = []
    for exact in select(curves, estimator="smoothed_exact"):
        sigma = exact["sigma"]
        exact_key = {"estimator": "smoothed_exact", "layers": "last_two", "sigma": sigma}
        by_samples = []
        # every sample count with the grid; after a σ search, only those this σ was chosen for
        for s in distinct(curves, "samples", estimator="nes", layers="last_two", sigma=sigma):
            nes2 = _last_two(curves, "nes", sigma=sigma, samples=s)
            cos = only(cosines, estimate={**exact_key, "estimator": "nes", "samples": s}, reference=exact_key)
            by_samples.append({"samples": s, "cos_nes_exact": cos["mean"], "cos_interval": cos.get("interval"),
                               "nes_best": only(curves, estimator="nes", layers="all", sigma=sigma, samples=s)["best"],
                               "nes_last2_best": nes2["best"], "nes_last2_interval": nes2.get("interval")})
        per_sigma.append({"sigma": sigma, "exact_best": exact["best"], "exact_interval": exact.get("interval"),
                          "by_samples": by_samples,
                          "cos_exact_cdg": only(cosines, estimate=exact_key, layer="all")["mean"]})
    best_sigma = [{"samples": s, "sigma": max(having, key=lambda d: rank(_at(d, s)["nes_best"]))["sigma"]}
                  for s in samples if (having := [d for d in per_sigma if _at(d, s) is not None])]
    return {"cdg_last2": {"best": cdg2["best"], "interval": cdg2.get("interval")}, "n": cdg2.get("n", 0),
            "per_sigma": per_sigma, "best_sigma": best_sigma,
            "cdg_best": max((c["best"] for c in select(curves, estimator="cdg", layers="all")), key=rank)}


def _at(per: dict[str, Any], samples: int) -> dict[str, Any] | None:
    return next((b for b in per["by_samples"] if b["samples"] == samples), None)
