"""The toy's tables, from results dicts: the best loss decrease per estimator and num_dim, and the
cosines with CDG. The report's sections, its findings and the summary notebook share them."""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

from lib.experiments.records import distinct, only, select
from lib.experiments.stats import rank, with_interval

from .records import ToyResults as Results
from .records import params_of


EDGE_MARK = " †"  # the best hyper-parameter is the smallest or largest of its grid
LR_EDGE_MARK = " ‡"  # the best learning rate is the largest of the lr grid


def at_lr_edge(stats: Mapping[str, Any], lrs: Sequence[float]) -> bool:
    """Whether a curve's best lr is the largest lr of the grid (a longer step might do better)."""
    return len(lrs) > 1 and stats.get("best_lr") is not None and math.isclose(stats["best_lr"], max(lrs))


def nes_samples(r: Results) -> list[int]:
    """The NES sample counts of a run, ascending."""
    return distinct(r["curves"], "samples", estimator="nes", layers="all")


def best_of(r: Results, **fields: Any) -> Mapping[str, Any]:
    """The curve record with the best loss decrease among those with ``fields``."""
    return max(select(r["curves"], **fields), key=lambda c: rank(c["best"]))


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


class Cosine(NamedTuple):
    """A cell of the cosine table: its ``text`` and the mean over all weights it starts with."""

    text: str
    mean: float | None


def cosine_with_cdg(runs: Sequence[Results]) -> dict[str, dict[int, Cosine]]:
    """``{estimator: {num_dim: Cosine}}``: the cosine similarity with CDG at ``reference_eps``
    (means over initialisations × batches, the overall one with its 95% interval when there is
    one). STE variants: ``"all (layer / layer / …)"``, over all weights then per layer front to
    back; NES per sample count: ``"all (σ=…)"`` at the σ with the best loss decrease."""
    def fmt(v: float | None) -> str:
        return with_interval(v, None)

    def fmt_iv(c: Mapping[str, Any]) -> str:  # the mean and, when there is one, its 95% interval
        return with_interval(c["mean"], c.get("interval"))

    table: dict[str, dict[int, Cosine]] = {}
    for r in runs:
        d, cos = r["num_dim"], r["cosines"]
        reference = {"estimator": "cdg", "layers": "all", "eps": params_of(r).reference_eps}
        layers = ste_cosine_layers(r)
        ceiling = {c["layer"]: c for c in select(cos, estimate={"estimator": "cdg", "layers": "all", "batch": "independent",
                                                                 "eps": reference["eps"]}, reference=reference)}
        if ceiling:  # the reference's own agreement with itself on another batch: what the rows below can reach
            table.setdefault("CDG noise ceiling", {})[d] = Cosine(
                f"{fmt_iv(ceiling['all'])} ({' / '.join(fmt(ceiling[k]['mean']) for k in layers)})", ceiling["all"]["mean"])
        for st in select(r["curves"], estimator="ste"):
            mine = select(cos, estimate={"estimator": "ste", "layers": "all", "variant": st["variant"]},
                          reference=reference)
            by_layer = {c["layer"]: c for c in mine}
            table.setdefault(f"STE {st['variant']}", {})[d] = Cosine(
                f"{fmt_iv(by_layer['all'])} ({' / '.join(fmt(by_layer[k]['mean']) for k in layers)})",
                by_layer["all"]["mean"])
        for s in nes_samples(r):
            nes = best_of(r, estimator="nes", layers="all", samples=s)
            key = {"estimator": "nes", "layers": "all", "sigma": nes["sigma"], "samples": s}
            rec = only(cos, estimate=key, reference=reference)
            table.setdefault(f"NES {s}", {})[d] = Cosine(f"{fmt_iv(rec)} (σ={nes['sigma']:g})", rec["mean"])
    return table
