"""What the thin ResNet's held-out single-layer decreases support (docs/design.md §4): cross-fitted
scores over gradient batches, paired comparisons with Holm's correction over the section, and
equivalence only within the run's ``equivalence_margin`` (:mod:`lib.experiments.inference`).

Per (c, state, precision, layer), the **families** are CDG (its ε and lr chosen), each STE variant
(its lr), the best STE (variant and lr) and the random control (its lr). Every choice is made by
leave-one-batch-out cross-fitting on the relative held-out decrease ``r_b(lr)`` of
:mod:`.held_out`: batch ``b`` is scored at the option that does best on the other batches. The
**pairs**: each STE variant and the best STE against CDG, and CDG against the control. A pair
where CDG does not beat the control is *uninformative*: the metric does not tell a gradient from a
data-free direction there.

The batches share one model: n is gradient batches of one initialisation, and a verdict speaks
for that model, not for the architecture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lib.experiments.inference import Claim, Difference, Score, corrected, cross_fitted, paired_difference
from lib.experiments.records import select

from .held_out import CDG, RANDOM, STE, HeldOutCurves
from .records import params_of
from .summary import acts_of, analysis_of, states_of

BEST_STE = "best STE"
CONTROL = "random direction"


def ste_family(variant: str) -> str:
    return f"STE {variant}"


def _table(records: Sequence[HeldOutCurves], lrs: Sequence[float], option) -> dict[tuple[str, ...], dict[int, float]]:
    """``{(option, lr): {batch: r_b(lr)}}`` over ``records``, ``option(record)`` naming its part."""
    table: dict[tuple[str, ...], dict[int, float]] = {}
    for rec in records:
        for b, curve in enumerate(rec["curves"]):
            for k, lr in enumerate(lrs):
                table.setdefault((option(rec), f"lr={lr:.6g}"), {})[b] = float(curve[k])
    return table


def family_scores(held: dict[str, Any], lrs: Sequence[float], layer: str) -> dict[str, Score]:
    """``{family: cross-fitted Score}`` of one model's held-out decreases on ``layer``."""
    mine = select(held["records"], layer=layer)
    stes = select(mine, estimator=STE)
    out = {"CDG": cross_fitted("CDG", _table(select(mine, estimator=CDG), lrs, lambda r: f"ε={r['eps']:g}")),
           BEST_STE: cross_fitted(BEST_STE, _table(stes, lrs, lambda r: r["variant"]))}
    for rec in stes:
        out[ste_family(rec["variant"])] = cross_fitted(ste_family(rec["variant"]), _table([rec], lrs, lambda r: ""))
    out[CONTROL] = cross_fitted(CONTROL, _table(select(mine, estimator=RANDOM), lrs, lambda r: ""))
    return out


def pairs(variants: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs a section tests per (c, state, precision, layer)."""
    return [(ste_family(v), "CDG") for v in variants] + [(BEST_STE, "CDG"), ("CDG", CONTROL)]


@dataclass(frozen=True)
class DecreaseClaim(Claim):
    """A paired comparison of cross-fitted held-out decreases on one layer of one model."""

    initial_channels: int
    state: str
    act: str
    layer: str


def models(results: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], str, str, dict[str, Any]]]:
    """``(result, state, precision, held-out record)`` of every model with held-out decreases."""
    return [(r, state, act, analysis_of(r, state, act)["held_out"])
            for r in sorted(results, key=lambda r: r["initial_channels"])
            for state in states_of(r) for act in acts_of(r, state) if "held_out" in analysis_of(r, state, act)]


def claims(results: Sequence[dict[str, Any]]) -> list[DecreaseClaim]:
    """Every pair of :func:`pairs` on every decrease layer of every model, Holm-corrected over all."""
    raw: list[tuple[dict[str, Any], str, str, str, str, str, Difference]] = []
    for r, state, act, held in models(results):
        margin = params_of(r).equivalence_margin
        for layer in r["decrease_layers"]:
            sc = family_scores(held, r["lrs"], layer)
            raw += [(r, state, act, layer, a, b, paired_difference(sc[a].per_init, sc[b].per_init, margin))
                    for a, b in pairs(r["ste_variants"])]
    p, q = corrected([d for *_, d in raw])
    return [DecreaseClaim(a=a, b=b, difference=d, p_holm=p[k], p_equivalent_holm=q[k],
                          margin=params_of(r).equivalence_margin,
                          initial_channels=r["initial_channels"], state=state, act=act, layer=layer)
            for k, (r, state, act, layer, a, b, d) in enumerate(raw)]


def informative(found: Sequence[DecreaseClaim], where: tuple[int, str, str, str]) -> bool:
    """Whether CDG beats the random control (Holm-corrected) at ``(c, state, precision, layer)``."""
    return any((c.initial_channels, c.state, c.act, c.layer) == where and (c.a, c.b) == ("CDG", CONTROL)
               and c.verdict == f"CDG > {CONTROL}" for c in found)
