"""NES's σ found by successive halving on tuning initialisations (docs/design.md §3): the notes'
difficulty, paid once per run instead of on every initialisation.

With sample counts ``S_1 < … < S_m`` and a σ grid of ``k`` values, on each tuning initialisation
``t`` (``TUNING_INIT + j``: never reported; its own gradient batch and evaluation set):

* rung ``j < m``: NES at ``S_j`` for the candidates ``K_j`` (``K_1``: every σ), each scored by the
  relative held-out decrease ``r_t(σ, lr)`` of a step on the hidden layers (:mod:`.population`);
* the score of σ at rung ``j``: ``max_lr mean_t r_t(σ, lr)``; ``K_{j+1}``: the better ``⌈|K_j|/2⌉``
  of ``K_j`` (one at the last rung, :func:`rung_sizes`);
* the choice ``σ*(S_j)``: the best σ of rung ``j``; ``σ*(S_m)``: the one σ ``K_m`` holds (the best
  of rung ``m − 1``), which the tuning initialisations never run at ``S_m``. With a single sample
  count, one rung at it chooses.

The reported initialisations then run NES only at ``(σ*(S_j), S_j)``. Directions: ``Σ_{j<m} |K_j| S_j``
per tuning initialisation and at most ``Σ_j S_j`` per reported one (a σ chosen for several counts
pays only for its largest: one direction stream), against ``k · S_m`` per initialisation for the
grid (``sigma_search: grid``, whose prefixes give every ``S_j``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, TypedDict

import numpy as np

from .params import ToyParams


class Rung(TypedDict):
    """One rung of the search: its candidates at one sample count, and their curves per tuning
    initialisation (in the order of ``tuning_inits``), ``r(lr)`` over the run's lrs."""

    samples: int
    sigmas: list[float]
    curves: list[list[list[float]]]  # [σ][tuning initialisation][lr]


class SigmaSearchRecord(TypedDict):
    """What a run records of its σ search (``results["sigma_search"]``)."""

    mode: str                      # "halving" or "grid"
    tuning_inits: list[int]
    rungs: list[Rung]
    chosen: list[dict[str, Any]]   # [{samples, sigma}]: the σ each sample count runs at (grid: none)
    directions: dict[str, int]     # tuning (all tuning initialisations), reported and grid (per initialisation)


def mode(results: Mapping[str, Any]) -> str:
    """How a run found σ: ``halving`` or ``grid`` (runs that predate the search: the grid)."""
    return results.get("sigma_search", {}).get("mode", "grid")


def sigma_searched(results: Mapping[str, Any]) -> bool:
    """Whether NES's σ came from the σ search on the tuning initialisations (halving) rather than
    from cross-fitting over the reported ones (grid)."""
    return mode(results) == "halving"


def rung_sizes(k: int, rungs: int) -> list[int]:
    """σ evaluated at each of ``rungs`` sample counts: ``k``, then halved (rounded up), one at the last."""
    sizes = [k]
    for _ in range(rungs - 2):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes + [1] if rungs > 1 else sizes


def score(curves: list[list[float]]) -> float:
    """``max_lr mean_t r_t(lr)`` over the tuning initialisations' curves (NaN where none is finite)."""
    values = np.asarray(curves, dtype=float).reshape(len(curves), -1)
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    mean = np.where(finite, values, 0.0).sum(axis=0) / np.maximum(counts, 1)
    return float(mean[counts > 0].max()) if (counts > 0).any() else math.nan


def ranked(rung: Rung) -> list[float]:
    """The rung's σ, best first (NaN scores last, ties by grid order)."""
    scores = [score(c) for c in rung["curves"]]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i] if math.isfinite(scores[i]) else math.inf, i))
    return [rung["sigmas"][i] for i in order]


def candidates(p: ToyParams, rungs: list[Rung]) -> list[float]:
    """The σ of the next rung: every σ first, then the better part of the last finished rung."""
    if not rungs:
        return list(p.sigma_grid)
    keep = rung_sizes(len(p.sigma_grid), len(p.nes_samples))[len(rungs)]
    return ranked(rungs[-1])[:keep]


def rungs_of(p: ToyParams) -> int:
    """Rungs the tuning initialisations run: ``m − 1`` (the last choice needs no rung of its own),
    one when there is a single sample count."""
    return max(1, len(p.nes_samples) - 1)


def chosen(p: ToyParams, rungs: list[Rung]) -> dict[int, float]:
    """``{S_j: σ*(S_j)}`` once the search is complete; ``σ*(S_m) = σ*(S_{m−1})``, the one σ the
    last halving keeps."""
    samples = sorted(p.nes_samples)
    if len(rungs) != rungs_of(p):
        raise RuntimeError(f"σ search: {len(rungs)} of {rungs_of(p)} rungs finished")
    out = {s: ranked(r)[0] for s, r in zip(samples, rungs)}
    out[samples[-1]] = ranked(rungs[-1])[0]
    return out


def plan(p: ToyParams, rungs: list[Rung]) -> dict[float, list[int]]:
    """``{σ: [sample counts]}`` each reported initialisation runs, in grid order."""
    if p.sigma_search == "grid":
        return {sigma: sorted(p.nes_samples) for sigma in p.sigma_grid}
    pairs = chosen(p, rungs)
    return {sigma: [s for s in sorted(pairs) if pairs[s] == sigma] for sigma in p.sigma_grid if sigma in pairs.values()}


def tuning_steps(p: ToyParams) -> int:
    """Steps of the search: one per (rung, tuning initialisation); none for the grid."""
    return 0 if p.sigma_search == "grid" else rungs_of(p) * p.tune_inits


Curves = Callable[[int, list[float], int], dict[float, list[float]]]


def tuning_step(p: ToyParams, rungs: list[Rung], step: int, curves_of: Curves) -> str:
    """Step ``step`` of the search (rung-major: every tuning initialisation of a rung, then the
    next rung), appended to ``rungs`` in place. ``curves_of(init, sigmas, samples)`` computes NES at
    each σ with ``samples`` directions on tuning initialisation ``init`` and returns ``{σ: r(lr)}``.
    Returns what was done, for the progress line."""
    j, t = divmod(step, p.tune_inits)
    if t == 0:
        sigmas = candidates(p, rungs)
        rungs.append(Rung(samples=sorted(p.nes_samples)[j], sigmas=sigmas, curves=[[] for _ in sigmas]))
    rung = rungs[j]
    init = p.tuning_inits()[t]
    got = curves_of(init, rung["sigmas"], rung["samples"])
    for k, sigma in enumerate(rung["sigmas"]):
        rung["curves"][k].append([float(v) for v in got[sigma]])
    return f"σ search: {len(rung['sigmas'])} σ at {rung['samples']} directions, tuning init {init}"


def record(p: ToyParams, rungs: list[Rung]) -> SigmaSearchRecord:
    """The run's :class:`SigmaSearchRecord`."""
    samples = sorted(p.nes_samples)
    grid = len(p.sigma_grid) * samples[-1]
    if p.sigma_search == "grid":
        return SigmaSearchRecord(mode="grid", tuning_inits=[], rungs=[], chosen=[],
                                 directions={"tuning": 0, "reported": grid, "grid": grid})
    pairs = chosen(p, rungs)
    return SigmaSearchRecord(
        mode="halving", tuning_inits=p.tuning_inits(), rungs=rungs,
        chosen=[{"samples": s, "sigma": pairs[s]} for s in samples],
        directions={"tuning": p.tune_inits * sum(len(r["sigmas"]) * r["samples"] for r in rungs),
                    "reported": sum(max(ss) for ss in plan(p, rungs).values()), "grid": grid})
