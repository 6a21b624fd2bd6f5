"""Can the reference resolve the STE's error on the thin ResNet? (docs/design.md §2, noise ceiling.)

CDG on a batch of N images agrees with CDG on an independent batch at its noise ceiling ``c_CDG``,
an STE variant with itself at its own ``c_STE``. Two batch estimates that are the population
gradient plus noise of their own agree at about ``√(c_STE · c_CDG)`` (the noise-free population
gradient would score ``√c_CDG``), so an STE variant's own error is *resolved* only where its
cross-batch cosine ``cos(STE_A, CDG_B)`` lies below ``√(max(c_STE, 0) · max(c_CDG, 0))``: the
paired difference over the coordinate sets, its 95% interval below 0 after Holm's correction over
every (c, state, precision, variant) of the section. A run that did not record the STE's own
ceiling can show that an error is *not* resolved (the cross-batch cosine is not below √c_CDG, a
higher bar) but never that it is. Same-batch cosines share batch A's sampling noise and are
compared with nothing.

The n here is the number of seeded coordinate sets on **one model and one batch**: the interval
covers the choice of coordinates, not of the model or of the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from lib.experiments.inference import ALPHA, Difference, Estimate, holm, over_inits, paired_difference
from lib.experiments.records import select

from .summary import acts_of, analysis_of, states_of


@dataclass(frozen=True)
class Resolution:
    """One (c, state, precision, variant): CDG's ceiling and √ceiling over all 16 layers, the
    variant's own ceiling (``None``: not recorded), the score of an STE with no error of its own
    (``unbiased``; √ceiling without the own ceiling), the cross-batch STE cosine, their paired gap
    and its Holm-corrected p-value."""

    initial_channels: int
    state: str
    act: str
    batch_size: int
    variant: str
    ceiling: Estimate
    root: Estimate
    own: Estimate | None
    unbiased: Estimate
    cross: Estimate
    gap: Difference
    p_holm: float

    @property
    def resolved(self) -> bool:
        return self.own is not None and self.gap.mean < 0 and self.p_holm < ALPHA


def _all_layers(record: dict[str, Any]) -> dict[int, float]:
    """``{coordinate set: cosine over all layers}`` (finite values only)."""
    sets = record.get("sets") or [record]
    return {k: float(s["all"]) for k, s in enumerate(sets) if s["all"] is not None and math.isfinite(s["all"])}


Batch = tuple[int, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]


def _batches(r: dict[str, Any], entry: dict[str, Any]) -> list[Batch]:
    """``(batch size, ceiling record, cross-batch records, the variants' own ceiling records)`` of
    one analysis: the gradient batch's, then those of ``by_batch``."""
    out = []
    ceilings = select(entry.get("ceiling", []), eps=r["eps_main"])
    if ceilings:
        out.append((r["data"]["batch_size"], ceilings[0], select(entry.get("cross_cosines", []), eps=r["eps_main"]),
                    select(entry.get("ste_ceiling", []), eps=r["eps_main"])))
    out += [(b["batch_size"], b["ceiling"], b["cross"], b.get("ste_ceiling", [])) for b in entry.get("by_batch", [])]
    return out


def resolutions(results: Sequence[dict[str, Any]]) -> list[Resolution]:
    """Every (c, state, precision, batch size, variant) with a noise ceiling and cross-batch cosines."""
    raw = []
    for r in sorted(results, key=lambda r: r["initial_channels"]):
        for state in states_of(r):
            for act in acts_of(r, state):
                for n, ceiling_rec, crosses, owns in _batches(r, analysis_of(r, state, act)):
                    ceiling = _all_layers(ceiling_rec)
                    root = {k: math.sqrt(max(v, 0.0)) for k, v in ceiling.items()}
                    for rec in crosses:
                        cross = _all_layers(rec)
                        own_rec = next((o for o in owns if o["variant"] == rec["variant"]), None)
                        own = None if own_rec is None else _all_layers(own_rec)
                        unbiased = root if own is None else \
                            {k: math.sqrt(max(v, 0.0) * max(own[k], 0.0)) for k, v in ceiling.items() if k in own}
                        raw.append((r["initial_channels"], state, act, n, rec["variant"], over_inits(ceiling),
                                    over_inits(root), None if own is None else over_inits(own), over_inits(unbiased),
                                    over_inits(cross), paired_difference(cross, unbiased)))
    p = holm([entry[-1].p for entry in raw])
    return [Resolution(*entry, p_holm=p[k]) for k, entry in enumerate(raw)]


# ----------------------------------------------------------------------------- the N an answer needs

@dataclass(frozen=True)
class Projection:
    """How many images a resolved answer needs, from the ceiling at the largest N measured.

    The estimate on a batch of ``N`` images is the population gradient ``G`` plus noise of variance
    ``σ²/N`` per coordinate, so two independent batches agree at ``ceiling(N) ≈ 1 / (1 + k/N)``
    with ``k = σ² d / |G|²`` images. The 95% upper bound ``c⁺`` of the ceiling at ``N`` bounds
    ``k ≥ N (1/c⁺ − 1)`` (``∞`` when ``c⁺ ≤ 0``); a ceiling ``c`` then needs ``N ≥ k c / (1 − c)``.
    ``seconds_per_coordinate_image`` is CDG's measured cost (central, one ε) in this run."""

    initial_channels: int
    state: str
    act: str
    batch_size: int
    ceiling: Estimate
    k_lower: float
    seconds_per_coordinate_image: float
    coordinates: int  # sampled coordinates over the run's coordinate sets

    def images_for(self, ceiling: float) -> float:
        """The fewest images per batch that reach ``ceiling`` (a lower bound)."""
        return self.k_lower * ceiling / (1 - ceiling)

    def core_hours_for(self, ceiling: float) -> float:
        """CDG on two batches of :meth:`images_for` images at this run's coordinates, one ε."""
        return 2 * self.images_for(ceiling) * self.coordinates * self.seconds_per_coordinate_image / 3600


def k_lower_bound(batch_size: int, ceiling_upper: float) -> float:
    """``N (1/c⁺ − 1)`` (:class:`Projection`); ``∞`` for ``c⁺ ≤ 0``, 0 for ``c⁺ ≥ 1``."""
    if ceiling_upper <= 0:
        return math.inf
    return max(0.0, batch_size * (1 / ceiling_upper - 1))


def projections(results: Sequence[dict[str, Any]]) -> list[Projection]:
    """Per (c, state, precision) with a ceiling: the :class:`Projection` from its largest N."""
    out = []
    for r in sorted(results, key=lambda r: r["initial_channels"]):
        for state in states_of(r):
            for act in acts_of(r, state):
                entry = analysis_of(r, state, act)
                measured = _batches(r, entry)
                if not measured:
                    continue
                n, ceiling_rec, _, _ = max(measured, key=lambda t: t[0])
                ceiling = over_inits(_all_layers(ceiling_rec))
                upper = ceiling.interval[1] if ceiling.interval else ceiling.mean
                coords = sum(sum(s) for s in entry["sampled"])
                seconds = next(t["seconds"] for t in entry["timings"]["cdg_s"] if t["eps"] == r["eps_main"])
                out.append(Projection(r["initial_channels"], state, act, n, ceiling, k_lower_bound(n, upper),
                                      seconds / (coords * r["data"]["batch_size"]), coords))
    return out
