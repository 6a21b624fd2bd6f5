"""Figures of the toy experiments, drawn from results dicts (a run's JSON), never from notebook
outputs: the run notebooks, the summary notebook and the static report share them.

Small multiples: each figure takes the runs of one section (or one run, as a list) and draws one
panel per num_dim side by side on a shared y axis (NES: a num_dim × sample-count grid), with one
legend beside the panels. Colours come from :mod:`lib.experiments.palette`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from lib.experiments import palette
from lib.experiments.records import select
from lib.experiments.stats import t_quantile

from .records import ToyResults as Results
from .records import params_of
from .tables import at_lr_edge, best_by_dim, best_of, nes_samples

STAR_NOTE = "★ best lr of a curve (hollow: the largest lr of the grid, a longer step might do better)"


def _by(records: Sequence[Mapping[str, Any]], field: str) -> dict[str, Mapping[str, Any]]:
    """``{f"{value:g}": record}`` of curve records, sorted by the value of ``field`` (ε, σ): the
    legend's labels."""
    return {f"{r[field]:g}": r for r in sorted(records, key=lambda r: r[field])}


def _log_x(ax: "plt.Axes") -> None:
    """Log x-axis without minor tick labels (many hidden labels make layout slow)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def band_halfwidth(std: np.ndarray, n: int) -> np.ndarray | None:
    """Half-width of the 95% t-interval of a mean curve from its spread over ``n`` repetitions:
    ``t_{0.975, n−1} · s / √n`` with the sample deviation ``s = std · √(n / (n − 1))`` (``std``
    is the population one the results store); ``None`` for n < 2."""
    if n < 2:
        return None
    return t_quantile(n - 1) * std * np.sqrt(n / (n - 1)) / np.sqrt(n)


def lr_curves(ax: "plt.Axes", lrs: Sequence[float], stats: Mapping[str, Mapping[str, Any]],
              colours: Mapping[str, Any], label_fmt: str = "{}") -> None:
    """lr → loss decrease, one line per entry of ``stats`` in ``colours[key]`` (mean over the
    ``n`` initialisations × batches, shaded: its 95% t-interval, none for n = 1), its best point
    starred (hollow when it is the largest lr of the grid), log x-axis."""
    lrs = np.asarray(lrs, dtype=float)
    for key, s in stats.items():
        mean = np.asarray([np.nan if v is None else v for v in s["mean"]], dtype=float)
        std = np.asarray([0.0 if v is None else v for v in s["std"]], dtype=float)
        colour = colours[key]
        ax.plot(lrs, mean, marker=".", ms=3, color=colour, label=label_fmt.format(key),
                lw=2.0 if key.startswith("CDG") else 1.2)
        half = band_halfwidth(std, s.get("n", 0))
        if half is not None:
            ax.fill_between(lrs, mean - half, mean + half, color=colour, alpha=0.15, linewidth=0)
        if s.get("best") is not None and s.get("best_lr") is not None:
            ax.plot([s["best_lr"]], [s["best"]], marker="*", markersize=10, ls="none",
                    color="white" if at_lr_edge(s, lrs) else colour, markeredgecolor=colour if at_lr_edge(s, lrs)
                    else "black", markeredgewidth=0.8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    _log_x(ax)
    ax.grid(True, which="both", alpha=0.3)


def _setting(runs: Sequence[Results]) -> str:
    r = runs[0]
    p = params_of(r)
    return (f"{'pretrained' if r['pretrained'] else 'no pretraining'}, batch {p.batch_size}, "
            f"n = {p.num_init}×{p.num_batch} initialisations × batches (band: 95% interval)")


def _panels(rows: int, cols: int, width: float = 3.3, height: float = 2.7):
    return plt.subplots(rows, cols, figsize=(width * cols + 1.9, height * rows + 0.9), squeeze=False,
                        sharex=True, sharey=True, layout="constrained")


def _finish(fig: "plt.Figure", axes: np.ndarray, tops: Sequence[float], title: str,
            legend_title: str = "") -> None:
    """Shared labels, the y range from a bit below 0 to above the best mean of every panel,
    one legend beside the panels (each label once) and the title."""
    for ax in axes[-1]:
        ax.set_xlabel("learning rate")
    for row in axes:
        row[0].set_ylabel("L(w) − L(w − lr·ĝ)")
    top = max((t for t in tops if t is not None and math.isfinite(t)), default=0.0)
    if top > 0:
        axes[0][0].set_ylim(-0.6 * top, 1.25 * top)
    labels: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    fig.legend(list(labels.values()), list(labels), loc="outside right upper", fontsize=8, title=legend_title or None,
               title_fontsize=8)
    fig.suptitle(title, fontsize=10)


def _tops(stats: Mapping[str, Mapping[str, Any]]) -> list[float]:
    return [s["best"] for s in stats.values() if s.get("best") is not None]


def _by_dim(runs: Sequence[Results]) -> list[Results]:
    return sorted(runs, key=lambda r: r["num_dim"])


def cdg_figure(runs: Sequence[Results]) -> "plt.Figure":
    """CDG lr → loss decrease, one panel per num_dim, one curve per ε."""
    runs = _by_dim(runs)
    fig, axes = _panels(1, len(runs))
    tops: list[float] = []
    for ax, r in zip(axes[0], runs):
        stats = _by(select(r["curves"], estimator="cdg", layers="all"), "eps")
        lr_curves(ax, r["lrs"], stats, dict(zip(stats, palette.shades("cdg", len(stats)))), "ε = {}")
        ax.set_title(f"num_dim = {r['num_dim']}", fontsize=10)
        tops += _tops(stats)
    _finish(fig, axes, tops, f"CDG (central): lr → loss decrease, {_setting(runs)}", "CDG")
    return fig


def nes_figure(runs: Sequence[Results]) -> "plt.Figure":
    """NES lr → loss decrease: rows = num_dim, columns = sample counts (2 loss evaluations per
    sample), one curve per σ."""
    runs = _by_dim(runs)
    samples = nes_samples(runs[0])
    fig, axes = _panels(len(runs), len(samples), height=2.4)
    every = _by([c for r in runs for c in select(r["curves"], estimator="nes", layers="all")], "sigma")
    colours = dict(zip(every, palette.shades("nes", len(every))))  # one colour per σ in every panel
    tops: list[float] = []
    for row, r in zip(axes, runs):
        for ax, s in zip(row, samples):
            stats = _by(select(r["curves"], estimator="nes", layers="all", samples=s), "sigma")
            lr_curves(ax, r["lrs"], stats, {k: colours[k] for k in stats}, "σ = {}")
            chosen = f", σ = {next(iter(stats))}" if len(stats) == 1 else ""  # the σ search's choice
            ax.set_title(f"num_dim = {r['num_dim']}, {s} samples{chosen}", fontsize=9)
            tops += _tops(stats)
    _finish(fig, axes, tops, f"NES (antithetic): lr → loss decrease, {_setting(runs)}", "NES")
    return fig


def ste_figure(runs: Sequence[Results]) -> "plt.Figure":
    """The STE variants against the best CDG curve, one panel per num_dim."""
    runs = _by_dim(runs)
    fig, axes = _panels(1, len(runs))
    tops: list[float] = []
    for ax, r in zip(axes[0], runs):
        stats: dict[str, Mapping[str, Any]] = {f"STE {c['variant']}": c for c in select(r["curves"], estimator="ste")}
        colours = {k: palette.ste_colour(c["variant"]) for k, c in stats.items()}
        stats["CDG (best ε)"] = best_of(r, estimator="cdg", layers="all")
        colours["CDG (best ε)"] = palette.CDG
        lr_curves(ax, r["lrs"], stats, colours)
        ax.set_title(f"num_dim = {r['num_dim']}, CDG ε = {stats['CDG (best ε)']['eps']:g}", fontsize=10)
        tops += _tops(stats)
    _finish(fig, axes, tops, f"STE variants against the best CDG, {_setting(runs)}")
    return fig


def pretrain_figure(runs: Sequence[Results]) -> "plt.Figure | None":
    """Pretraining loss curves, one panel per num_dim, one line per initialisation, log y-axis;
    ``None`` without pretraining."""
    runs = [r for r in _by_dim(runs) if r.get("pretrain")]
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(3.3 * len(runs) + 0.8, 2.8), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, r in zip(axes[0], runs):
        for info in r["pretrain"]:
            curve = np.asarray(info["curve"], dtype=float)
            ax.plot(np.arange(1, len(curve) + 1), curve, linewidth=0.8, color="0.3")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"num_dim = {r['num_dim']} ({len(r['pretrain'])} init.)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("MSE (training batch)")
    fig.suptitle("Pretraining of the evaluated model (one line per initialisation)", fontsize=10)
    return fig


def _variance_panel(ax: "plt.Axes", per: Sequence[Mapping[str, Any]]) -> None:
    for e, colour in zip(per, palette.shades("nes", len(per))):
        ax.plot([b["samples"] for b in e["by_samples"]], [b["cos_nes_exact"] for b in e["by_samples"]], marker="o",
                ms=3, color=colour, label=f"σ = {e['sigma']:g}")
    _log_x(ax)
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("NES samples")
    ax.grid(True, which="both", alpha=0.3)


def _bias_panel(ax: "plt.Axes", r: Results, per: Sequence[Mapping[str, Any]], cdg2: Mapping[str, Any]) -> None:
    xs = [e["sigma"] for e in per]
    samples = nes_samples(r)
    for s, colour in zip(samples, palette.shades("nes", len(samples))):
        at = [(e["sigma"], b["nes_last2_best"]) for e in per for b in e["by_samples"] if b["samples"] == s]
        ax.plot([x for x, _ in at], [v for _, v in at], marker=".", color=colour, label=f"NES {s} samples")
    ax.plot(xs, [e["exact_best"] for e in per], marker="s", ms=4, color=palette.EXACT, label="exact smoothed (∞ samples)")
    bars = [e for e in per if e.get("exact_interval")]
    if bars:
        ax.errorbar([e["sigma"] for e in bars], [e["exact_best"] for e in bars], fmt="none", ecolor=palette.EXACT,
                    yerr=[[e["exact_best"] - e["exact_interval"][0] for e in bars],
                          [e["exact_interval"][1] - e["exact_best"] for e in bars]], capsize=3, lw=0.8)
    ax.axhline(cdg2["best"], color=palette.CDG, linestyle="--", label="CDG (band: 95%)")
    if cdg2.get("interval"):
        ax.axhspan(*cdg2["interval"], color=palette.CDG, alpha=0.1, lw=0)
    _log_x(ax)
    ax.set_xlabel("σ")
    ax.grid(True, which="both", alpha=0.3)


def diagnosis_figure(runs: Sequence[Results]) -> "plt.Figure | None":
    """The NES diagnosis, one column per num_dim. Top: cosine of NES (last two layers) with the
    exact smoothed gradient against the sample count, per σ (variance). Bottom: best loss decrease
    against σ on the last two layers, like with like: NES per sample count, the exact smoothed
    gradient (its infinite-sample limit; 95% intervals) and CDG (band: 95% interval) (bias).
    ``None`` when no run has a diagnosis."""
    runs = [r for r in _by_dim(runs) if r.get("diagnosis")]
    if not runs:
        return None
    fig, axes = plt.subplots(2, len(runs), figsize=(3.3 * len(runs) + 2.4, 5.8), squeeze=False, sharey="row",
                             layout="constrained")
    for j, r in enumerate(runs):
        d = r["diagnosis"]
        per = sorted(d["per_sigma"], key=lambda e: e["sigma"])
        _variance_panel(axes[0][j], per)
        _bias_panel(axes[1][j], r, per, d["cdg_last2"])
        axes[0][j].set_title(f"num_dim = {r['num_dim']}", fontsize=10)
    axes[0][0].set_ylabel("cos(NES, exact smoothed)")
    axes[1][0].set_ylabel(f"best loss decrease, last 2 layers\n(n = {runs[0]['diagnosis'].get('n', 0)})")
    for row, where in ((0, "upper"), (1, "lower")):
        handles, labels = axes[row][-1].get_legend_handles_labels()
        fig.legend(handles, labels, loc=f"outside right {where}", fontsize=7)
    fig.suptitle(f"NES diagnosis ({'pretrained' if runs[0]['pretrained'] else 'no pretraining'}): variance (top, "
                 "NES against its infinite-sample limit) and bias (bottom, does the smoothed gradient go downhill?)",
                 fontsize=10)
    return fig


def _estimator_colour(name: str, nes_names: Sequence[str]) -> Any:
    if name == "CDG":
        return palette.CDG
    if name.startswith("NES"):
        return palette.shades("nes", len(nes_names))[nes_names.index(name)]
    return palette.ste_colour(name.removeprefix("STE "))


def best_vs_dim_figure(runs: Sequence[Results], title: str = "") -> "plt.Figure":
    """Best loss decrease → num_dim, one line per estimator with its 95% interval (the table
    beside it says at which ε, σ or lr)."""
    table = best_by_dim(runs)
    nes_names = [name for name in table if name.startswith("NES")]
    fig, ax = plt.subplots(figsize=(8.5, 4.4), layout="constrained")
    for i, (name, by_dim) in enumerate(table.items()):
        dims = sorted(by_dim)
        colour = _estimator_colour(name, nes_names)
        dodge = 2 ** ((i - (len(table) - 1) / 2) * 0.02)  # side by side at each num_dim, so the bars stay apart
        xs = [d * dodge for d in dims]
        ax.plot(xs, [by_dim[d].value for d in dims], ":" if name.startswith("STE") else "-", marker="o", ms=4,
                label=name, color=colour, lw=2.0 if name == "CDG" else 1.2)
        bars = [(x, by_dim[d]) for x, d in zip(xs, dims) if by_dim[d].interval is not None]
        if bars:  # the 95% intervals over initialisations × batches
            ax.errorbar([x for x, _ in bars], [b.value for _, b in bars], fmt="none", ecolor=colour,
                        yerr=[[b.value - b.interval[0] for _, b in bars], [b.interval[1] - b.value for _, b in bars]],
                        capsize=3, lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["num_dim"] for r in runs}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("num_dim")
    n = max((b.n for by in table.values() for b in by.values()), default=0)
    ax.set_ylabel(f"best loss decrease (mean, n = {n}; bars: 95% interval)" if n > 1 else
                  "best loss decrease (n = 1: no interval)")
    ax.set_title(title or "best loss decrease → num_dim", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig
