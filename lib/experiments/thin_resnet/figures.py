"""Figures of thin ResNet results (drawn from a results dict, never from notebook outputs)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lib.experiments import palette
from lib.experiments.cells import PRECISION_TITLES
from lib.experiments.records import select

from .records import params_of
from .summary import acts_of, analysis_of, cosine_of, layer_label, mean_cosine, states_of


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _layer_axis(ax, result: dict[str, Any]) -> None:
    n = len(result["layers"])
    ax.set_xticks(range(1, n + 1))
    ax.set_xticklabels([layer["label"] for layer in result["layers"]], rotation=90, fontsize=7)
    for i in range(1, n):
        if result["layers"][i]["stage"] != result["layers"][i - 1]["stage"]:
            ax.axvline(i + 0.5, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("binary conv layer (stage.block.conv), front → back")


def _grid(rows: int, cols: int, width: float = 3.6, height: float = 2.9, sharey: bool = True):
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 2.2, height * rows + 0.6), layout="constrained",
                             squeeze=False, sharey=sharey)
    return fig, axes


def plot_cosine(result: dict[str, Any], eps: float | None = None):
    """Cosine of CDG with each STE variant per layer, front to back: rows = states, columns = precisions."""
    eps = result["eps_main"] if eps is None else eps
    states = states_of(result)
    acts = acts_of(result, states[0])
    fig, axes = _grid(len(states), len(acts))
    xs = np.arange(1, len(result["layers"]) + 1)
    for i, state in enumerate(states):
        for j, act in enumerate(acts):
            ax = axes[i][j]
            entry = analysis_of(result, state, act)
            for v in result["ste_variants"]:
                ax.plot(xs, _nan(cosine_of(entry, v, eps)["per_layer"]), marker="o", ms=3, label=v,
                        color=palette.ste_colour(v))
            ax.axhline(0, color="0.5", lw=0.6)
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(f"{state}, {PRECISION_TITLES.get(act, act)}", fontsize=10)
            _layer_axis(ax, result)
            if j == 0:
                ax.set_ylabel("cos(CDG, STE)")
    _legend(fig, axes, "STE variant")
    fig.suptitle(f"c = {result['initial_channels']}: cosine of CDG (ε = {eps:g}, "
                 f"{_sampled_text(result)}) with each STE variant, per layer")
    return fig


def _sampled_text(result: dict[str, Any]) -> str:
    p = params_of(result)
    return f"{p.coords_per_layer} sampled coordinates per layer, mean over n = {p.coord_sets} seeded sets"


def plot_magnitude(result: dict[str, Any]):
    """RMS of CDG (each ε) and of each STE variant per layer, log scale; rows = states, columns = precisions."""
    states = states_of(result)
    acts = acts_of(result, states[0])
    fig, axes = _grid(len(states), len(acts))
    xs = np.arange(1, len(result["layers"]) + 1)
    reds = palette.shades("cdg", len(result["eps"]))
    for i, state in enumerate(states):
        for j, act in enumerate(acts):
            ax = axes[i][j]
            mags = analysis_of(result, state, act)["magnitudes"]
            for m, col in zip(select(mags, estimator="cdg"), reds):
                ax.plot(xs, _pos(m["per_layer"]), color=col, lw=2.2, label=f"CDG ε={m['eps']:g}")
            for m in select(mags, estimator="ste"):
                ax.plot(xs, _pos(m["per_layer"]), lw=1, marker=".", ms=3, label=f"STE {m['variant']}",
                        color=palette.ste_colour(m["variant"]))
            ax.set_yscale("log")
            ax.set_title(f"{state}, {PRECISION_TITLES.get(act, act)}", fontsize=10)
            _layer_axis(ax, result)
            if j == 0:
                ax.set_ylabel("RMS gradient (sampled coords)")
    _legend(fig, axes)
    fig.suptitle(f"c = {result['initial_channels']}: gradient magnitude per layer, CDG vs STE ({_sampled_text(result)})")
    return fig


def _pos(values: Sequence[Any]) -> list[float]:
    return [v if v is not None and v > 0 else np.nan for v in values]


def plot_precisions(result: dict[str, Any]):
    """Per-layer cosine averaged over the STE variants, one line per precision; one panel per state."""
    states = states_of(result)
    fig, axes = _grid(1, len(states), width=4.6, height=3.2)
    xs = np.arange(1, len(result["layers"]) + 1)
    for j, state in enumerate(states):
        ax = axes[0][j]
        for act in acts_of(result, state):
            ax.plot(xs, mean_cosine(result, state, act), marker="o", ms=3, label=PRECISION_TITLES.get(act, act),
                    color=palette.PRECISION.get(act))
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(state, fontsize=10)
        _layer_axis(ax, result)
        if j == 0:
            ax.set_ylabel("cos(CDG, STE), mean over variants")
    _legend(fig, axes, "activation")
    fig.suptitle(f"c = {result['initial_channels']}: binary vs ternary vs 2-bit vs full precision\n"
                 f"(ε = {result['eps_main']:g}, {_sampled_text(result)})")  # two lines: two panels are narrow
    return fig


def plot_decrease(result: dict[str, Any]):
    """Single-layer lr → loss decrease, CDG (each ε) vs the STE variants; rows = (state, precision),
    columns = first, middle, last binary layer; in-sample, on the gradient batch (the notes'
    measurement). ``None`` when no precision had the analysis."""
    rows = [(s, a) for s in states_of(result) for a in acts_of(result, s) if "decrease" in analysis_of(result, s, a)]
    if not rows:
        return None
    layers = result["decrease_layers"]
    fig, axes = _grid(len(rows), len(layers), sharey=False)
    lrs = result["lrs"]
    reds = palette.shades("cdg", len(result["eps"]))
    for i, (state, act) in enumerate(rows):
        entry = analysis_of(result, state, act)
        dec = entry["decrease"]
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            for d, col in zip(select(dec, layer=layer, estimator="cdg"), reds):
                ax.plot(lrs, _nan(d["curve"]), color=col, lw=2.2, marker="o", ms=3, label=f"CDG ε={d['eps']:g}")
            for d in select(dec, layer=layer, estimator="ste"):
                ax.plot(lrs, _nan(d["curve"]), lw=1, marker=".", label=f"STE {d['variant']}",
                        color=palette.ste_colour(d["variant"]))
            ax.axhline(0, color="0.5", lw=0.6)
            ax.set_xscale("log")
            ax.set_title(f"{state}, {PRECISION_TITLES.get(act, act)}: layer {layer_label(result, layer)}", fontsize=9)
            ax.set_xlabel("lr (step on the layer-normalised gradient)")
            if j == 0:
                ax.set_ylabel("loss decrease L(w) − L(w − lr ĝ)")
    _legend(fig, axes)
    fig.suptitle(f"c = {result['initial_channels']}: single-layer loss decrease, in-sample (on the gradient "
                 f"batch; {_sampled_text(result)} of the layer)")
    return fig


def _legend(fig, axes, title: str = "") -> None:
    """One legend beside the panels, off the data."""
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title=title or None, title_fontsize=7)


def _nan(values: Sequence[Any]) -> list[float]:
    return [np.nan if v is None else v for v in values]


def plot_training(results: Sequence[dict[str, Any]] | dict[str, Any]):
    """Training loss curves of the trained states (one line per c and precision); ``None`` if none."""
    plt = _plt()
    results = [results] if isinstance(results, dict) else list(results)
    lines = [(r["initial_channels"], e["act"], e["state_info"]["curve"])
             for r in results for e in select(r["analyses"], state="trained") if e["state_info"].get("curve")]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    for c, act, curve in lines:
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=1, label=f"c={c}, {PRECISION_TITLES.get(act, act)}")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (train batch)")
    ax.set_title("STE + Adam training of the 'trained' states")
    ax.legend(fontsize=7)
    return fig
