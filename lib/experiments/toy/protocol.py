"""What the toy's population records support (docs/design.md §2–§3): cross-fitted scores per
estimator family, paired comparisons over initialisations with Holm's correction over a section's
family, and equivalence only within the params file's margin (:mod:`lib.experiments.inference`).

A **family** is an estimator whose free choices (ε for CDG, σ for NES, the variant for "best
STE", and the lr for every one) are made by leave-one-initialisation-out cross-fitting on the
relative held-out decrease ``r(lr)`` of :mod:`.population`: the score of initialisation ``i`` is
its mean over batches at the option that does best on the other initialisations. Everything here
reads the records of :mod:`.population`; nothing in-sample enters a score, except the
``hidden_in_sample`` metric, which the report labels as such.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from lib.experiments.inference import Claim, Difference, Score, corrected, cross_fitted, paired_difference

from .population import ALL, HIDDEN, RANDOM, SHRINK_READOUT, PopulationCurves
from .records import ToyResults as Results
from .records import params_of

LAST_HIDDEN = "fc3.weight"  # the toy's last hidden layer (three hidden layers, docs/design.md §3)


@dataclass(frozen=True)
class Family:
    """An estimator with the choices cross-fitting makes: ``match`` selects its estimates,
    ``option`` names the hyper-parameter part of an option (the lr is always added)."""

    name: str
    match: Callable[[dict[str, Any]], bool]
    option: Callable[[dict[str, Any]], str]


def families(results: Results, metric: str = HIDDEN) -> list[Family]:
    """The families of a run on ``metric``: CDG (over ε), NES per sample count (over σ), the best
    STE (over variants), each STE variant, and the controls; on the last hidden layer the
    diagnosis's estimates on the last two layers (NES per sample count, the exact smoothed gradient)."""
    p = params_of(results)
    out = [Family("CDG", lambda e: e["estimator"] == "cdg" and e["layers"] == "all", lambda e: f"ε={e['eps']:g}")]
    out += [Family(f"NES {s}", lambda e, s=s: e["estimator"] == "nes" and e["layers"] == "all" and e["samples"] == s,
                   lambda e: f"σ={e['sigma']:g}") for s in p.nes_samples]
    out.append(Family("best STE", lambda e: e["estimator"] == "ste", lambda e: e["variant"]))
    out += [Family(f"STE {v}", lambda e, v=v: e["estimator"] == "ste" and e["variant"] == v, lambda e: "")
            for v in p.ste_variants]
    out.append(Family("random direction", lambda e: e["estimator"] == RANDOM, lambda e: ""))
    if metric == ALL:
        out.append(Family("shrink the readout", lambda e: e["estimator"] == SHRINK_READOUT, lambda e: ""))
    if metric == LAST_HIDDEN:
        out.append(Family("exact smoothed", lambda e: e["estimator"] == "smoothed_exact", lambda e: f"σ={e['sigma']:g}"))
        out += [Family(f"NES {s} (last two)", lambda e, s=s: e["estimator"] == "nes" and e["layers"] == "last_two"
                       and e["samples"] == s, lambda e: f"σ={e['sigma']:g}") for s in p.nes_samples]
    return out


def _records(results: Results, metric: str, batch_size: int) -> list[PopulationCurves]:
    return [r for r in results.get("population", {}).get("records", [])
            if r["metric"] == metric and r["batch_size"] == batch_size]


def option_table(results: Results, family: Family, metric: str, batch_size: int,
                 fixed: Callable[[dict[str, Any]], bool] | None = None) -> dict[Hashable, dict[int, float]]:
    """``{option: {init: mean over its batches of r(lr)}}``, an option being (hyper-parameter, lr);
    ``fixed`` narrows the estimates further (a σ, for the diagnosis)."""
    lrs = results["lrs"]
    table: dict[Hashable, dict[int, float]] = {}
    for rec in _records(results, metric, batch_size):
        est = rec["estimate"]
        if not family.match(est) or (fixed is not None and not fixed(est)):
            continue
        curves = np.asarray(rec["curves"], dtype=float)
        inits = np.asarray(rec["inits"])
        for i in sorted(set(rec["inits"])):
            means = curves[inits == i].mean(axis=0)
            for k, lr in enumerate(lrs):
                table.setdefault((family.option(est), f"lr={lr:.6g}"), {})[int(i)] = float(means[k])
    return table


def score(results: Results, family: Family, metric: str, batch_size: int,
          fixed: Callable[[dict[str, Any]], bool] | None = None) -> Score | None:
    """The family's cross-fitted score, ``None`` when the run has no such estimate there."""
    table = option_table(results, family, metric, batch_size, fixed)
    return cross_fitted(family.name, table) if table else None


def scores(results: Results, metric: str = HIDDEN, batch_size: int | None = None) -> dict[str, Score]:
    """``{family name: Score}`` of a run on ``metric`` at ``batch_size`` (default: the notes' batch)."""
    main = params_of(results).batch_size
    n = batch_size or main
    out = {}
    for fam in families(results, metric):
        # the controls use no data: the same directions score every batch size
        s = score(results, fam, metric, main if fam.name in CONTROLS else n)
        if s is not None:
            out[fam.name] = s
    return out


def batch_sizes(results: Results) -> list[int]:
    """The gradient batch sizes of a run's population records, ascending."""
    return sorted({r["batch_size"] for r in results.get("population", {}).get("records", [])})


@dataclass(frozen=True)
class Comparison(Claim):
    """A paired comparison ``a − b`` of cross-fitted scores at one num_dim and batch size
    (:class:`lib.experiments.inference.Claim`: its Holm-corrected p-values over the section's family
    and its verdict)."""

    num_dim: int
    batch_size: int


CONTROLS = ("random direction", "shrink the readout")
# The section's family of claims: (a, b) pairs of family names, at every num_dim and batch size; NES
# only at the notes' batch size (the only one where it runs).
PAIRS = (("CDG", "best STE"), ("best STE", "random direction"), ("CDG", "random direction"))


def section_pairs(results: Results, batch_size: int) -> list[tuple[str, str]]:
    """The pairs a section tests for one run at one batch size."""
    if batch_size != params_of(results).batch_size:
        return list(PAIRS)
    return list(PAIRS) + [(f"NES {s}", "CDG") for s in params_of(results).nes_samples]


def comparisons(runs: Sequence[Results], metric: str = HIDDEN) -> list[Comparison]:
    """Every paired comparison a section claims from, over its runs (num_dim) and batch sizes,
    with Holm's correction over all of them (differences and equivalences each as one family)."""
    raw: list[tuple[int, int, str, str, Difference, float]] = []
    for r in sorted(runs, key=lambda r: r["num_dim"]):
        margin = params_of(r).equivalence_margin
        for n in batch_sizes(r):
            sc = scores(r, metric, n)
            for a, b in section_pairs(r, n):
                if a in sc and b in sc:
                    raw.append((r["num_dim"], n, a, b, paired_difference(sc[a].per_init, sc[b].per_init, margin), margin))
    p, q = corrected([d for *_, d, _ in raw])
    return [Comparison(a=a, b=b, difference=d, p_holm=p[k], p_equivalent_holm=q[k], margin=margin, num_dim=dim,
                       batch_size=n) for k, (dim, n, a, b, d, margin) in enumerate(raw)]


def informative(comps: Sequence[Comparison], num_dim: int, batch_size: int) -> bool:
    """Whether, at this num_dim and batch size, the metric tells a gradient from a data-free
    direction: the reference, CDG, beats the random direction (Holm-corrected). If not, a
    comparison there is uninformative."""
    return any(c.num_dim == num_dim and c.batch_size == batch_size and (c.a, c.b) == ("CDG", "random direction")
               and c.verdict == "CDG > random direction" for c in comps)


def n_inits(results: Results) -> int:
    """The number of initialisations the population records hold."""
    return len({b["init"] for b in results.get("population", {}).get("base_losses", [])})
