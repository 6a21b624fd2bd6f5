"""The explorer's figure: lr → loss decrease per estimator, and the cosines with CDG."""
from __future__ import annotations

import io
import math

import numpy as np

from lib.experiments import palette

from .compute import ESTIMATORS, ExplorerResult


# The report's colours (lib.experiments.palette); the STE line takes its variant's colour.
_STYLE = {"cdg": dict(color=palette.CDG, lw=2), "nes": dict(color=palette.NES), "ste": dict(),
          "exact": dict(color=palette.EXACT, ls="--"), "nes_last2": dict(color=palette.NES, ls=":")}


def plot_explorer(result: ExplorerResult, figsize: tuple[float, float] = (11.0, 4.2)):
    """Left: ``lr → ΔL(lr)`` on a log x-axis, one line per estimator, its best point marked.
    Right: cosine similarity with CDG (over all the layers both define) per estimator, and the
    cosine of NES on the last two layers with the exact smoothed gradient. Returns the Figure
    (not shown; the caller displays or closes it)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    fig = Figure(figsize=figsize)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.16, top=0.9, wspace=0.22)
    ax, bx = fig.subplots(1, 2, width_ratios=[1.7, 1])
    for k in ESTIMATORS:
        if k not in result.curves:
            continue
        style = _STYLE[k] if k != "ste" else dict(color=palette.ste_colour(result.params.variant))
        ax.plot(result.lrs, result.curves[k], label=result.labels[k], **style)
        best, lr = result.best[k]
        if math.isfinite(best):
            ax.plot([lr], [best], marker="*", ms=11, color=style["color"], mec="black", mew=0.5, ls="none")
    ax.axhline(0.0, color="grey", lw=0.8)
    # Keep the downhill part readable: loss increases at large lr are clipped at −2 × the best decrease
    # (no clipping when nothing goes downhill).
    top = max([b for b, _ in result.best.values() if math.isfinite(b)], default=float("nan"))
    if math.isfinite(top) and top > 0:
        low = min(float(np.nanmin(c)) for c in result.curves.values())
        ax.set_ylim(max(low, -2.0 * top) - 0.05 * top, 1.15 * top)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10.0))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # no mathtext: faster redraws
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("learning rate")
    p = result.params
    held = p.held_out
    ax.set_ylabel("held-out relative decrease, hidden layers" if held else "in-sample decrease  L(w) − L(w − lr ĝ)")
    state = "pretrained" if p.pretrained else "random init"
    where = f"held out on {p.eval_rows:,} rows" if held else "in-sample"
    ax.set_title(f"num_dim={p.num_dim}, {state}, L={result.base_loss:.3g} ({where}), batch {p.batch_size}"
                 f"  (★ best; {result.wall_s:.2f} s)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)

    bars = [("NES", result.cosines["nes_vs_cdg"]["all"], palette.NES),
            (f"STE\n{p.variant}", result.cosines["ste_vs_cdg"]["all"], palette.ste_colour(p.variant)),
            ("exact\n(last 2)", result.cosines["exact_vs_cdg"]["all"], palette.EXACT)]
    if "nes_last2_vs_exact" in result.cosines:
        bars.append(("NES last 2\nvs exact", result.cosines["nes_last2_vs_exact"]["all"], "white"))
    names = [b[0] for b in bars]
    values = [b[1] if math.isfinite(b[1]) else 0.0 for b in bars]
    patches = bx.bar(names, values, color=[b[2] for b in bars], edgecolor="black")
    if len(bars) == 4:
        patches[-1].set_hatch("//")
    for i, (_, v, _) in enumerate(bars):
        bx.text(i, (v if math.isfinite(v) else 0.0), f"{v:.2f}" if math.isfinite(v) else "nan",
                ha="center", va="bottom" if not math.isfinite(v) or v >= 0 else "top", fontsize=8)
    bx.axhline(0.0, color="grey", lw=0.8)
    bx.set_ylim(min(-0.1, min(values) - 0.1), 1.1)
    bx.set_ylabel("cosine similarity")
    bx.set_title("cosine with CDG" + (" (hatched: with exact)" if len(bars) == 4 else ""), fontsize=10)
    bx.tick_params(axis="x", labelsize=8)
    return fig


def figure_png(fig, dpi: int = 90) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
