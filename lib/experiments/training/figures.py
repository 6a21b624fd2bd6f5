"""Figures of the training experiment: population loss against step and against CPU seconds, one
panel per (state, num_dim), one figure per batch size."""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from lib.experiments import palette
from lib.experiments.stats import interval

from .analysis import Block
from .arms import Arm
from .records import Results, arm_of, number, relative

CONTROL_STYLE = {"readout_only": dict(color="#7f7f7f", ls="--"), "random": dict(color="#7f7f7f", ls=":")}


def arm_style(arm: Arm, block: Block) -> dict:
    """Colour and weight of an arm's line: the best STE bold, the other variants thin, CDG red, NES
    blue (darker: more samples), the controls grey."""
    if arm.estimator == "ste":
        best = arm == block.best_ste
        return dict(color=palette.ste_colour(arm.variant), lw=2.2 if best else 0.8, alpha=1 if best else 0.7)
    if arm.estimator in CONTROL_STYLE:
        return dict(lw=1.2, **CONTROL_STYLE[arm.estimator])
    if arm.estimator.startswith("cdg"):
        return dict(color=palette.CDG, lw=2.2, ls="-" if arm.estimator == "cdg" else "-.")
    nes = sorted({a.arm.samples for a in block.arms if a.arm.estimator == "nes"})
    return dict(color=palette.shades("nes", len(nes))[nes.index(arm.samples)], lw=1.8)


def mean_curve(results: Results, block: Block, arm: Arm, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Over the reported initialisations: ``x`` (``step``, or the mean CPU seconds of the estimates so
    far), the mean ``L_t / L_0`` and its 95% interval."""
    recs = [r for r in results["records"] if r["phase"] == "report" and r["batch_size"] == block.batch_size
            and arm_of(r) == arm]
    curves = np.array([relative(r) for r in recs])
    xs = np.array(recs[0]["steps"], dtype=float) if x == "step" else \
        np.mean([[number(v) for v in r["estimate_cpu_s"]] for r in recs], axis=0)
    mean = np.nanmean(curves, axis=0)
    bands = [interval(m, col) or [math.nan, math.nan] for m, col in zip(mean, curves.T)]
    return xs, mean, np.array([b[0] for b in bands]), np.array([b[1] for b in bands])


def training_figure(pairs: Sequence[tuple[Results, Block]], x: str = "step") -> "plt.Figure":
    """``L_t / L_0`` on the held-out rows against ``x`` (``step``, or ``cpu``: the CPU seconds of the
    estimates, log scale) for every arm, mean over the reported initialisations; bands (95%) for the
    best STE, CDG and NES. Rows: from initialisation, pretrained; columns: num_dim. One batch size."""
    states = sorted({b.pretrained for _, b in pairs})
    dims = sorted({b.num_dim for _, b in pairs})
    fig, axes = plt.subplots(len(states), len(dims), figsize=(max(3.4 * len(dims) + 1.8, 7.0), 2.9 * len(states) + 1.1),
                             squeeze=False, layout="constrained")
    handles: dict[str, object] = {}
    for results, b in pairs:
        ax = axes[states.index(b.pretrained)][dims.index(b.num_dim)]
        for score in b.arms:
            xs, mean, lo, hi = mean_curve(results, b, score.arm, x)
            style = arm_style(score.arm, b)
            label = score.arm.label + (" (best STE)" if score.arm == b.best_ste else "")
            (line,) = ax.plot(xs, mean, label=label, **style)
            handles.setdefault(label.replace(" (best STE)", ""), line)
            if score.arm == b.best_ste or score.arm.estimator in ("cdg", "nes"):
                ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.12, linewidth=0)
        if x == "cpu":
            ax.set_xscale("symlog", linthresh=1e-2)
        ax.grid(True, alpha=0.3)
        n = len(b.arms[0].final)
        ax.set_title(f"num_dim {b.num_dim}, {b.state} (n = {n}); best STE: {b.best_ste.variant}", fontsize=9)
        ax.set_xlabel("step" if x == "step" else "CPU seconds of the estimates (one core)")
        ax.set_ylabel("held-out loss / loss at start")
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=8)
    n_rows = pairs[0][1].batch_size
    fig.suptitle(f"Training the toy with each hidden-layer gradient, batches of {n_rows} rows:\n"
                 f"population loss (held-out rows) against {'step' if x == 'step' else 'compute'}, each arm at the "
                 "lr chosen\non other initialisations; bands: 95% over initialisations", fontsize=10)
    return fig
