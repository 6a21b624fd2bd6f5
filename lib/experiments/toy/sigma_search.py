"""The notes' difficulty, answered: a σ search for NES that spends directions where they matter
(successive halving), against the brute-force grid, on the held-out metric (docs/design.md §3).

A toy run with ``sigma_search: grid`` holds NES at every σ of its grid and every sample count
``S_1 < … < S_m``, drawn from one seeded stream of directions (NES at ``S_j`` is the first ``S_j``
directions of NES at ``S_m``). Successive halving reads those records the way a search would spend
them. For each initialisation ``i``, on the **other** initialisations only:

* rung 1: every σ at ``S_1``; keep the better half (``⌈k/2⌉``), each σ judged by its best mean over
  the lr grid of the relative held-out decrease ``r(lr)``;
* rung ``j``: the kept σ at ``S_j``; keep the better half; at ``S_{m−1}`` keep the best one;
* that σ at ``S_m``, its lr again chosen on the other initialisations, scores initialisation ``i``.

The brute-force search is NES ``S_m`` over every σ and lr, cross-fitted the same way
(:func:`lib.experiments.toy.protocol.score`). Directions spent: ``Σ_j k_j S_j`` (``k_j`` σ at rung
``j``, one at ``S_m``) against ``k · S_m``. The two are compared paired over initialisations, Holm
over the section's num_dims, "equivalent" within the run's ``equivalence_margin`` (TOST). Where the
section's reference, CDG, does not beat the random direction at the notes' batch size
(:func:`lib.experiments.toy.protocol.informative`), the comparison is *uninformative*: two
estimates that both decrease nothing agree trivially.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

from lib.experiments.inference import Claim, Estimate, best_on, corrected, over_inits, paired_difference
from lib.experiments.stats import with_interval

from . import protocol as PR
from .population import HIDDEN
from .sigma_tuning import mode, rung_sizes
from .records import params_of

Table = Mapping[Hashable, Mapping[int, float]]


@dataclass(frozen=True)
class SigmaSearch:
    """Successive halving against the brute-force σ grid at one num_dim (module docstring)."""

    num_dim: int
    search: Estimate
    brute: Estimate
    claim: Claim  # "σ search" − "every σ", Holm-corrected over the section
    chosen: str  # the σ most initialisations' searches ended on
    directions: int  # per search
    brute_directions: int
    informative: bool  # CDG beats the random direction at this num_dim (the section's rule)


def halving(tables: Sequence[Table], init: int, inits: Sequence[int]) -> tuple[str, float]:
    """The σ the search ends on for ``init`` and that initialisation's score there: ``tables`` holds
    ``{(σ label, lr label): {init: r}}`` per sample count, ascending; every choice is made on the
    initialisations other than ``init``."""
    others = [j for j in inits if j != init] or [init]
    candidates = sorted({option[0] for option in tables[0]})
    for table, keep in zip(tables[:-1], rung_sizes(len(candidates), len(tables))[1:]):
        ranked = sorted(candidates, key=lambda s: best_on(table, others, _of_sigma(table, s))[1], reverse=True)
        candidates = ranked[:keep]
    sigma = candidates[0]
    option, _ = best_on(tables[-1], others, _of_sigma(tables[-1], sigma))
    return sigma, tables[-1][option].get(init, math.nan) if option is not None else math.nan


def _of_sigma(table: Table, sigma: str) -> list[Hashable]:
    """The options (σ, lr) of ``table`` at ``sigma``."""
    return [option for option in table if option[0] == sigma]


def _tables(results: PR.Results, metric: str) -> list[Table]:
    p = params_of(results)
    n = p.batch_size
    return [PR.option_table(results, next(f for f in PR.families(results, metric) if f.name == f"NES {s}"), metric, n)
            for s in sorted(p.nes_samples)]


def searches(runs: Sequence[PR.Results], metric: str = HIDDEN) -> list[SigmaSearch]:
    """The search against the brute force at every num_dim of a section, Holm over them."""
    comps = PR.comparisons(runs)
    raw = []
    for r in sorted((r for r in runs if mode(r) == "grid"), key=lambda r: r["num_dim"]):
        samples = sorted(params_of(r).nes_samples)
        tables = _tables(r, metric)
        if not all(tables):
            continue
        inits = sorted({i for per in tables[-1].values() for i in per})
        picks = {i: halving(tables, i, inits) for i in inits}
        search = {i: score for i, (_, score) in picks.items() if math.isfinite(score)}
        brute = PR.score(r, next(f for f in PR.families(r, metric) if f.name == f"NES {samples[-1]}"), metric,
                         params_of(r).batch_size)
        sigmas = [s for s, _ in picks.values()]
        k = len({option[0] for option in tables[0]})
        spent = sum(size * s for size, s in zip(rung_sizes(k, len(samples)), samples))
        margin = params_of(r).equivalence_margin
        raw.append((r["num_dim"], over_inits(search), brute.estimate,
                    paired_difference(search, brute.per_init, margin), margin,
                    max(set(sigmas), key=sigmas.count), spent, k * samples[-1],
                    PR.informative(comps, r["num_dim"], params_of(r).batch_size)))
    p, q = corrected([d for _, _, _, d, *_ in raw])
    return [SigmaSearch(dim, s, b, Claim("σ search", "every σ", d, p[k], q[k], margin), chosen, spent, brute_cost, ok)
            for k, (dim, s, b, d, margin, chosen, spent, brute_cost, ok) in enumerate(raw)]


HEADING = "Finding σ at a fraction of the cost (beyond the notes)"
UNINFORMATIVE = "uninformative"


MARKS = {"equivalent": "≈", "not distinguishable": "n.d."}


def difference_cell(s: SigmaSearch | Any) -> str:
    """``≈ 0.001 [−0.01, 0.01]``: a comparison's verdict mark and paired difference (anything with a
    ``claim`` and ``informative``), bracketed where uninformative."""
    d = s.claim.difference
    text = f"{MARKS.get(s.claim.verdict, s.claim.verdict)} {with_interval(d.mean, d.interval)}"
    return text if s.informative else f"({text})"


def search_markdown(runs: Sequence[PR.Results]) -> str:
    """The section's searches as a table with its explanation (markdown), or ``""`` without NES records."""
    found = searches([r for r in runs if r.get("population")])
    if not found:
        return ""
    rows = "\n".join(
        f"| {s.num_dim} | {with_interval(s.search.mean, s.search.interval)} ({s.chosen}) | "
        f"{with_interval(s.brute.mean, s.brute.interval)} | {difference_cell(s)} | "
        f"{s.directions:,} / {s.brute_directions:,} ({s.brute_directions / s.directions:.1f}× fewer) |" for s in found)
    samples = sorted(params_of(runs[0]).nes_samples)
    return (f"**{HEADING}.** Successive halving over σ: every σ at {samples[0]:,} directions, the better half "
            f"at each larger count, the best at {samples[-1]:,} (lr chosen there), every choice made on the other "
            "initialisations; against the brute-force grid, every σ at "
            f"{samples[-1]:,}, cross-fitted the same way. Relative held-out decrease of a step on the hidden "
            f"layers, n = {found[0].claim.difference.n} initialisations; search − brute force paired, Holm over "
            f"the section's {len(found)} num_dims; ≈: equivalent within ±{found[0].claim.margin:g} (TOST). Both "
            "are read from the brute-force records (a search's rungs are prefixes of the same direction stream). "
            "In brackets: uninformative, CDG does not beat the random direction at that num_dim.\n\n"
            "| num_dim | σ search (its σ) | every σ | search − every σ | directions per search |\n"
            "|---|---|---|---|---|\n" + rows)


def search_finding(runs: Sequence[PR.Results], link: str) -> str:
    """The Findings sentence: how the search fares against the brute force, and at what cost."""
    found = searches([r for r in runs if r.get("population")])
    if not found:
        return ""
    groups: dict[str, list[str]] = {}
    for s in found:
        d = s.claim.difference
        groups.setdefault(s.claim.verdict if s.informative else UNINFORMATIVE, []).append(
            f"{s.num_dim} ({with_interval(d.mean, d.interval)})")
    words = {"equivalent": f"equivalent to the brute force within ±{found[0].claim.margin:g} at num_dim",
             "not distinguishable": f"not distinguishable from it at n = {found[0].claim.difference.n} at num_dim",
             UNINFORMATIVE: "uninformative (CDG does not beat the random direction) at num_dim"}
    parts = [f"{words.get(v, v + ' at num_dim')} {', '.join(where)}" for v, where in groups.items()]
    return (f"**σ search** ([{HEADING.lower()}](#{link})): successive halving spends {found[0].directions:,} NES "
            f"directions where the brute-force σ grid spends {found[0].brute_directions:,} "
            f"({found[0].brute_directions / found[0].directions:.1f}× fewer); its held-out decrease is "
            + "; ".join(parts) + " (search − brute force, paired, Holm).")
