"""Figures of the reference-convergence experiment (drawn from a results dict)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np

from lib.experiments import palette
from lib.experiments.cells import PRECISION_TITLES
from lib.experiments.records import select
from lib.experiments.stats import finite

from .records import ConvergenceResults as Results
from .records import params_of
from .run import CEILING, LAYER_MEAN, ste_estimate



def series(r: Results, precision: str, eps: float, estimate: Mapping[str, Any], layer: str = LAYER_MEAN) -> list[dict]:
    """The records of one estimate across the batch sizes, by ascending N."""
    return sorted(select(r["cosines"], precision=precision, eps=eps, layer=layer, estimate=dict(estimate)),
                  key=lambda c: c["batch_size"])


def _line(ax, recs: list[dict], band: bool = False, **style: Any) -> None:
    """Mean against N; with ``band``, its 95% interval (clipped to the cosine's range) shaded."""
    ns = [c["batch_size"] for c in recs]
    mean = [c["mean"] if c["mean"] is not None and math.isfinite(c["mean"]) else np.nan for c in recs]
    ax.plot(ns, mean, marker="o", ms=3, **style)
    if band:
        lo = [max(-1.0, c["interval"][0]) if c.get("interval") else np.nan for c in recs]
        hi = [min(1.0, c["interval"][1]) if c.get("interval") else np.nan for c in recs]
        ax.fill_between(ns, lo, hi, color=style.get("color"), alpha=0.12, linewidth=0)


def convergence_figure(r: Results) -> "plt.Figure":
    """Mean per-layer cosine against the batch size N (log x): the noise ceiling of CDG (dashed)
    with its 95% band over initialisations, √ceiling (dotted: what the population gradient would
    score against CDG on an independent batch), and each STE variant against CDG on an independent
    batch (one colour per variant; their intervals are in the section's table); rows = ε, columns
    = precisions."""
    p = params_of(r)
    eps_list, precisions = p.eps, p.precisions
    fig, axes = plt.subplots(len(eps_list), len(precisions), figsize=(3.3 * len(precisions) + 1.2,
                             2.9 * len(eps_list) + 0.8), squeeze=False, sharex=True, sharey=True,
                             layout="constrained")
    for i, eps in enumerate(eps_list):
        for j, precision in enumerate(precisions):
            ax = axes[i][j]
            ceiling = series(r, precision, eps, CEILING)
            _line(ax, ceiling, band=True, color=palette.CEILING, ls="--", label="CDG noise ceiling (band: 95%)")
            roots = [np.mean([math.sqrt(max(v, 0.0)) for v in finite(c.get("values", []))] or [np.nan]) for c in ceiling]
            ax.plot([c["batch_size"] for c in ceiling], roots, color=palette.CEILING, ls=":", lw=1.5,
                    label="√ceiling: the population gradient's score")
            for v in p.ste_variants:
                _line(ax, series(r, precision, eps, ste_estimate(v, "independent")), color=palette.ste_colour(v), lw=1,
                      label=f"STE {v}")
            ax.set_xscale("log")
            ax.set_ylim(-0.05, 1.02)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{PRECISION_TITLES.get(precision, precision)}, ε = {eps:g}", fontsize=10)
            if i == len(eps_list) - 1:
                ax.set_xlabel("rows per gradient batch N")
            if j == 0:
                ax.set_ylabel("cosine, mean over layers")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(f"Reference convergence, num_dim {p.num_dim}: CDG against itself (independent batches)\n"
                 f"and each STE against CDG on an independent batch; n = {p.num_init} initialisations", fontsize=10)
    return fig
