"""Figures of the toy experiments, drawn from results dicts (a run's JSON), never from notebook
outputs: the run notebooks, the summary notebook and the static report share them."""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import matplotlib
import numpy as np

import matplotlib.pyplot as plt

from lib.experiments.records import distinct, only, select
from lib.experiments.stats import rank, t_quantile

Results = Mapping[str, Any]


def _by(records: Sequence[Mapping[str, Any]], field: str) -> dict[str, Mapping[str, Any]]:
    """``{f"{value:g}": record}`` of curve records, sorted by the value of ``field`` (ε, σ): the
    legend's labels."""
    return {f"{r[field]:g}": r for r in sorted(records, key=lambda r: r[field])}


def _log_x(ax: "plt.Axes") -> None:
    """Log x-axis without minor tick labels (many hidden labels make layout slow)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


EDGE_MARK = " †"  # the best hyper-parameter is the smallest or largest of its grid
LR_EDGE_MARK = " ‡"  # the best learning rate is the largest of the lr grid


def at_lr_edge(stats: Mapping[str, Any], lrs: Sequence[float]) -> bool:
    """Whether a curve's best lr is the largest lr of the grid (a longer step might do better)."""
    return len(lrs) > 1 and stats.get("best_lr") is not None and math.isclose(stats["best_lr"], max(lrs))


def lr_curves(ax: "plt.Axes", lrs: Sequence[float], stats: Mapping[str, Mapping[str, Any]],
              title: str, label_fmt: str = "{}") -> None:
    """lr → loss decrease, one line per entry (mean over the ``n`` initialisations × batches,
    shaded: its 95% t-interval, none for n = 1), best point marked, log x-axis. A curve whose
    best lr is the largest of the grid gets :data:`LR_EDGE_MARK` in the legend."""
    lrs = np.asarray(lrs, dtype=float)
    cmap = plt.get_cmap("viridis")
    keys = list(stats)
    for i, key in enumerate(keys):
        s = stats[key]
        mean = np.asarray([np.nan if v is None else v for v in s["mean"]], dtype=float)
        std = np.asarray([0.0 if v is None else v for v in s["std"]], dtype=float)
        color = cmap(i / max(1, len(keys) - 1)) if len(keys) > 1 else "C0"
        label = label_fmt.format(key) + (LR_EDGE_MARK if at_lr_edge(s, lrs) else "")
        ax.plot(lrs, mean, marker=".", color=color, label=label)
        half = band_halfwidth(std, s.get("n", 0))
        if half is not None:
            ax.fill_between(lrs, mean - half, mean + half, color=color, alpha=0.15, linewidth=0)
        if s.get("best") is not None and s.get("best_lr") is not None:
            ax.plot([s["best_lr"]], [s["best"]], marker="*", color=color, markersize=11,
                    markeredgecolor="black", markeredgewidth=0.5)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    _log_x(ax)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss decrease  L(w) − L(w − lr·ĝ)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def band_halfwidth(std: np.ndarray, n: int) -> np.ndarray | None:
    """Half-width of the 95% t-interval of a mean curve from its spread over ``n`` repetitions:
    ``t_{0.975, n−1} · s / √n`` with the sample deviation ``s = std · √(n / (n − 1))`` (``std``
    is the population one the results store); ``None`` for n < 2."""
    if n < 2:
        return None
    return t_quantile(n - 1) * std * np.sqrt(n / (n - 1)) / np.sqrt(n)


def _clip_view(ax: "plt.Axes", stats: Mapping[str, Mapping[str, Any]]) -> None:
    """Keep the interesting range visible: from a bit below 0 to above the best mean."""
    bests = [s["best"] for s in stats.values() if s.get("best") is not None and math.isfinite(s["best"])]
    if bests:
        top = max(bests)
        if top > 0:
            ax.set_ylim(-0.6 * top, 1.25 * top)


def _setting(r: Results) -> str:
    p = r["parameters"]
    return (f"num_dim={r['num_dim']}, {'pretrained' if r['pretrained'] else 'no pretraining'}, "
            f"batch {p['batch_size']}, n = {p['num_init']}×{p['num_batch']} reps (band: 95% interval)")


def cdg_figure(r: Results) -> "plt.Figure":
    """CDG lr → loss decrease, one curve per ε."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    stats = _by(select(r["curves"], estimator="cdg", layers="all"), "eps")
    lr_curves(ax, r["lrs"], stats, f"CDG (central)\n{_setting(r)}", "ε = {}")
    _clip_view(ax, stats)
    fig.tight_layout()
    return fig


def nes_samples(r: Results) -> list[int]:
    """The NES sample counts of a run, ascending."""
    return distinct(r["curves"], "samples", estimator="nes", layers="all")


def nes_figure(r: Results, samples: int) -> "plt.Figure":
    """NES with ``samples`` directions (2·samples loss evaluations): one curve per σ."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    stats = _by(select(r["curves"], estimator="nes", layers="all", samples=samples), "sigma")
    lr_curves(ax, r["lrs"], stats, f"NES, {samples} samples ({2 * samples} loss evaluations)\n{_setting(r)}",
              "σ = {}")
    _clip_view(ax, stats)
    fig.tight_layout()
    return fig


def ste_figure(r: Results) -> "plt.Figure":
    """The STE variants against the best CDG curve."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    stats = {c["variant"]: c for c in select(r["curves"], estimator="ste")}
    best_cdg = best_of(r, estimator="cdg", layers="all")
    stats[f"CDG ε={best_cdg['eps']:g}"] = best_cdg
    lr_curves(ax, r["lrs"], stats, f"STE variants vs best CDG\n{_setting(r)}")
    _clip_view(ax, stats)
    fig.tight_layout()
    return fig


def best_of(r: Results, **fields: Any) -> Mapping[str, Any]:
    """The curve record with the best loss decrease among those with ``fields``."""
    return max(select(r["curves"], **fields), key=lambda c: rank(c["best"]))


def pretrain_figure(r: Results) -> "plt.Figure | None":
    """Pretraining loss curves (one per initialisation), log y-axis."""
    if not r.get("pretrain"):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for info in r["pretrain"]:
        curve = np.asarray(info["curve"], dtype=float)
        ax.plot(np.arange(1, len(curve) + 1), curve, linewidth=0.8, label=f"init {info['init']}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (training batch)")
    ax.set_title(f"Pretraining of the evaluated model, num_dim={r['num_dim']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def diagnosis_figure(r: Results) -> "plt.Figure | None":
    """Left: cosine of NES (last two layers) with the exact smoothed gradient vs samples, per σ.
    Right: best loss decrease vs σ on the last two layers, like with like: NES per sample count,
    the exact smoothed gradient (infinite samples; 95% intervals) and CDG (band: 95% interval)."""
    d = r.get("diagnosis")
    if not d:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    per = sorted(d["per_sigma"], key=lambda e: e["sigma"])
    cmap = plt.get_cmap("viridis")
    for i, e in enumerate(per):
        a1.plot([b["samples"] for b in e["by_samples"]], [b["cos_nes_exact"] for b in e["by_samples"]], marker="o",
                color=cmap(i / max(1, len(per) - 1)), label=f"σ = {e['sigma']:g}")
    _log_x(a1)
    a1.set_ylim(-0.1, 1.05)
    a1.set_xlabel("NES samples")
    a1.set_ylabel("cosine(NES, exact smoothed)")
    a1.set_title("Variance: NES vs its infinite-sample limit")
    a1.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=8)
    xs = [e["sigma"] for e in per]
    for s in nes_samples(r):
        a2.plot(xs, [next(b["nes_last2_best"] for b in e["by_samples"] if b["samples"] == s) for e in per],
                marker=".", label=f"NES {s}")
    a2.plot(xs, [e["exact_best"] for e in per], marker="s", color="black", label="exact smoothed (∞ samples)")
    bars = [e for e in per if e.get("exact_interval")]
    if bars:
        a2.errorbar([e["sigma"] for e in bars], [e["exact_best"] for e in bars], fmt="none", ecolor="black",
                    yerr=[[e["exact_best"] - e["exact_interval"][0] for e in bars],
                          [e["exact_interval"][1] - e["exact_best"] for e in bars]], capsize=3, lw=0.8)
    cdg2 = d["cdg_last2"]
    a2.axhline(cdg2["best"], color="C3", linestyle="--", label="CDG")
    if cdg2.get("interval"):
        a2.axhspan(*cdg2["interval"], color="C3", alpha=0.1, lw=0)
    _log_x(a2)
    a2.set_xlabel("σ")
    a2.set_ylabel(f"best loss decrease, last 2 layers (n = {d.get('n', 0)})")
    a2.set_title("Bias: does the smoothed gradient itself go downhill?")
    a2.grid(True, which="both", alpha=0.3)
    a2.legend(fontsize=7)
    fig.suptitle(f"NES diagnosis, num_dim={r['num_dim']}, {'pretrained' if r['pretrained'] else 'no pretraining'}")
    fig.tight_layout()
    return fig


class Best(NamedTuple):
    """The best loss decrease of an estimator at one num_dim: its ``value``, where it is (``at``:
    ``"ε=0.1"``, ``"σ=0.3 †"``, ``"lr=0.316"``), its 95% ``interval`` (or ``None``) and ``n``."""

    value: float
    at: str
    interval: list[float] | None = None
    n: int = 0


def best_by_dim(runs: Sequence[Results]) -> dict[str, dict[int, Best]]:
    """``{estimator: {num_dim: Best}}`` over the given runs: CDG best over ε, NES per sample count
    best over σ, each STE variant. A best ε or σ at the edge of its grid is marked with
    :data:`EDGE_MARK`, a best lr at the top of the lr grid with :data:`LR_EDGE_MARK` (either grid
    should be widened)."""
    def at(symbol: str, value: float, grid: Sequence[float]) -> str:
        edge = len(grid) > 1 and value in (min(grid), max(grid))
        return f"{symbol}={value:g}{EDGE_MARK if edge else ''}"

    table: dict[str, dict[int, Best]] = {}
    for r in runs:
        d = r["num_dim"]

        def best(c: Mapping[str, Any], where: str) -> Best:
            edge = LR_EDGE_MARK if at_lr_edge(c, r["lrs"]) else ""
            return Best(c["best"], where + edge, c.get("interval"), c.get("n", 0))

        cdg = best_of(r, estimator="cdg", layers="all")
        eps_grid = distinct(r["curves"], "eps", estimator="cdg", layers="all")
        table.setdefault("CDG", {})[d] = best(cdg, at("ε", cdg["eps"], eps_grid))
        for s in nes_samples(r):
            nes = best_of(r, estimator="nes", layers="all", samples=s)
            sigma_grid = distinct(r["curves"], "sigma", estimator="nes", layers="all", samples=s)
            table.setdefault(f"NES {s}", {})[d] = best(nes, at("σ", nes["sigma"], sigma_grid))
        for st in select(r["curves"], estimator="ste"):
            table.setdefault(f"STE {st['variant']}", {})[d] = best(st, f"lr={st['best_lr']:.3g}")
    return table


def ste_cosine_layers(r: Results) -> list[str]:
    """The layers of a run's STE-vs-CDG cosines, front to back (``fc1.weight`` … ``readout.weight``)."""
    layers = {c["layer"] for c in r["cosines"] if c["estimate"]["estimator"] == "ste" and c["layer"] != "all"}
    return sorted(layers, key=lambda name: (name.startswith("readout"), name))


def cosine_with_cdg(runs: Sequence[Results]) -> dict[str, dict[int, str]]:
    """``{estimator: {num_dim: cell}}``: the cosine similarity with CDG at ``reference_eps``
    (means over initialisations × batches, the overall one with its 95% interval when there is
    one). STE variants: ``"all (layer / layer / …)"``, over all weights then per layer front to
    back; NES per sample count: ``"all (σ=…)"`` at the σ with the best loss decrease."""
    def fmt(v: float | None) -> str:
        return "–" if v is None or not math.isfinite(v) else f"{v:.2f}"

    def fmt_iv(c: Mapping[str, Any]) -> str:  # the mean and, when there is one, its 95% interval
        iv = c.get("interval")
        return fmt(c["mean"]) + (f" [{iv[0]:.2f}, {iv[1]:.2f}]" if iv else "")

    table: dict[str, dict[int, str]] = {}
    for r in runs:
        d, cos = r["num_dim"], r["cosines"]
        reference = {"estimator": "cdg", "layers": "all", "eps": r["parameters"]["reference_eps"]}
        layers = ste_cosine_layers(r)
        ceiling = {c["layer"]: c for c in select(cos, estimate={"estimator": "cdg", "layers": "all", "batch": "independent",
                                                                 "eps": reference["eps"]}, reference=reference)}
        if ceiling:  # the reference's own agreement with itself on another batch: what the rows below can reach
            table.setdefault("CDG noise ceiling", {})[d] = \
                f"{fmt_iv(ceiling['all'])} ({' / '.join(fmt(ceiling[k]['mean']) for k in layers)})"
        for st in select(r["curves"], estimator="ste"):
            mine = select(cos, estimate={"estimator": "ste", "layers": "all", "variant": st["variant"]},
                          reference=reference)
            by_layer = {c["layer"]: c for c in mine}
            table.setdefault(f"STE {st['variant']}", {})[d] = \
                f"{fmt_iv(by_layer['all'])} ({' / '.join(fmt(by_layer[k]['mean']) for k in layers)})"
        for s in nes_samples(r):
            nes = best_of(r, estimator="nes", layers="all", samples=s)
            key = {"estimator": "nes", "layers": "all", "sigma": nes["sigma"], "samples": s}
            table.setdefault(f"NES {s}", {})[d] = \
                f"{fmt_iv(only(cos, estimate=key, reference=reference))} (σ={nes['sigma']:g})"
    return table


def best_vs_dim_figure(runs: Sequence[Results], title: str = "") -> "plt.Figure":
    """Best loss decrease → num_dim, one line per estimator; CDG and the NES with the most samples
    are annotated with their best ε / σ (the table beside it has all of them)."""
    table = best_by_dim(runs)
    nes_names = [name for name in table if name.startswith("NES")]
    annotated = {"CDG", *nes_names[-1:]}  # the hyper-parameters of CDG and of the largest NES
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, (name, by_dim) in enumerate(table.items()):
        dims = sorted(by_dim)
        vals = [by_dim[d].value for d in dims]
        dodge = 2 ** ((i - (len(table) - 1) / 2) * 0.02)  # side by side at each num_dim, so the bars stay apart
        style = "-" if not name.startswith("STE") else ":"
        ax.plot([d * dodge for d in dims], vals, style, marker="o", label=name, color=f"C{i % 10}")
        bars = [(d, by_dim[d]) for d in dims if by_dim[d].interval is not None]
        if bars:  # the 95% intervals over initialisations × batches
            ax.errorbar([d * dodge for d, _ in bars], [b.value for _, b in bars], fmt="none", ecolor=f"C{i % 10}",
                        yerr=[[b.value - b.interval[0] for _, b in bars], [b.interval[1] - b.value for _, b in bars]],
                        capsize=3, lw=0.8)
        if name in annotated:
            for d, v in zip(dims, vals):
                ax.annotate(by_dim[d].at, (d * dodge, v), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=f"C{i % 10}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["num_dim"] for r in runs}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("num_dim")
    n = max((b.n for by in table.values() for b in by.values()), default=0)
    ax.set_ylabel(f"best loss decrease (mean, n = {n}; bars: 95% interval)" if n > 1 else
                  "best loss decrease (n = 1: no interval)")
    ax.set_title(title or "best loss decrease → num_dim")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
