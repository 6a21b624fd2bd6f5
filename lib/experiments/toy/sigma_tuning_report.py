"""The σ search of runs with ``sigma_search: halving`` (:mod:`.sigma_tuning`) in the report: the σ
it chose for each sample count on the tuning initialisations, its rung scores, what NES reaches
there on the reported initialisations (held out, lr cross-fitted) and the directions it spent
against the grid's. Where the folder also holds a grid run of the same num_dim and otherwise the
same parameters (``params/toy_grid.yaml``), the search is compared with that brute force, paired
over the initialisations both ran (the same seeds give the same batches and evaluation rows), Holm
over the section's num_dims, TOST within ``equivalence_margin``. Grid runs alone are compared with
the search read from their own records in :mod:`.sigma_search`."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from lib.experiments.inference import Claim, Estimate, corrected, paired_difference
from lib.experiments.stats import with_interval

from . import protocol as PR
from .population import HIDDEN
from .records import params_of
from .sigma_search import HEADING, difference_cell
from .sigma_tuning import mode, ranked, score


@dataclass(frozen=True)
class Tuned:
    """One halving run's search, at one num_dim."""

    num_dim: int
    tune_inits: int
    chosen: dict[int, float]              # sample count → σ
    rungs: list[list[tuple[float, float]]]  # per rung, (σ, score) best first
    nes: Estimate | None                  # NES at the largest count and its σ, held out, lr cross-fitted
    cdg: Estimate | None
    n: int                                # reported initialisations
    tuning_directions: int                # all tuning initialisations together
    reported_directions: int              # per reported initialisation
    grid_directions: int                  # per initialisation, for the grid

    @property
    def saving(self) -> float:
        """The grid's directions over the run's: ``n · grid / (tuning + n · reported)``."""
        return self.n * self.grid_directions / (self.tuning_directions + self.n * self.reported_directions)


def tuned(runs: Sequence[PR.Results]) -> list[Tuned]:
    """The searches of a section's halving runs, by num_dim."""
    out = []
    for r in sorted((r for r in runs if mode(r) == "halving" and r.get("population")), key=lambda r: r["num_dim"]):
        p, search = params_of(r), r["sigma_search"]
        largest = max(p.nes_samples)
        sc = PR.scores(r, HIDDEN)
        out.append(Tuned(r["num_dim"], len(search["tuning_inits"]), {c["samples"]: c["sigma"] for c in search["chosen"]},
                         [[(s, score(rung["curves"][rung["sigmas"].index(s)])) for s in ranked(rung)]
                          for rung in search["rungs"]],
                         sc[f"NES {largest}"].estimate if f"NES {largest}" in sc else None,
                         sc["CDG"].estimate if "CDG" in sc else None, PR.n_inits(r),
                         search["directions"]["tuning"], search["directions"]["reported"], search["directions"]["grid"]))
    return out


def _estimate(e: Estimate | None) -> str:
    return "–" if e is None else with_interval(e.mean, e.interval)


def tuning_markdown(runs: Sequence[PR.Results]) -> str:
    """The halving runs' searches as a table with its explanation (markdown), or ``""`` without any."""
    found = tuned(runs)
    if not found:
        return ""
    samples = sorted(found[0].chosen)
    rows = "\n".join(
        f"| {t.num_dim} | {' / '.join(f'{t.chosen[s]:g}' for s in samples)} | "
        + " · ".join(", ".join(f"{s:g}: {v:.3g}" for s, v in rung) for rung in t.rungs)
        + f" | {_estimate(t.nes)} | {_estimate(t.cdg)} | {t.tuning_directions:,} + {t.n} × {t.reported_directions:,}"
        f" against {t.n} × {t.grid_directions:,} ({t.saving:.1f}× fewer) |" for t in found)
    return (f"**{HEADING}.** NES's σ found by successive halving on {found[0].tune_inits} tuning initialisations "
            f"that are never reported: every σ at {samples[0]:,} directions, the better half at each larger count "
            f"up to {samples[-2] if len(samples) > 1 else samples[0]:,}; the σ for each count is the best of its "
            f"rung, and {samples[-1]:,} directions take the last rung's best. Scores: the relative held-out "
            "decrease of a step on the hidden layers, at its best lr, mean over the tuning initialisations. The "
            "reported initialisations run NES only at the chosen σ; NES and CDG below are their cross-fitted "
            f"held-out decreases (n = {found[0].n} initialisations). Directions: the search plus each reported "
            "initialisation's, against every σ at the largest count on every initialisation (the grid, "
            "`sigma_search: grid`, which also compares the search with the brute force).\n\n"
            f"| num_dim | σ at {' / '.join(f'{s:,}' for s in samples)} | rung scores (σ: score, best first) | "
            f"NES {samples[-1]:,} at its σ | CDG | NES directions |\n|---|---|---|---|---|---|\n" + rows)


def tuning_finding(runs: Sequence[PR.Results], link: str, every: Sequence[PR.Results] = ()) -> str:
    """The Findings sentence for the halving runs: the σ chosen, the directions saved, and how the
    search fares against the brute force where grid twins of its runs are in ``every``."""
    found = tuned(runs)
    if not found:
        return ""
    largest = max(found[0].chosen)
    sigmas = " / ".join(f"{t.chosen[largest]:g}" for t in found)
    dims = " / ".join(str(t.num_dim) for t in found)
    savings = sorted({f"{t.saving:.1f}" for t in found}, key=float)
    saved = savings[0] if len(savings) == 1 else f"{savings[0]}–{savings[-1]}"
    return (f"**σ search** ([{HEADING.lower()}](#{link})): successive halving on {found[0].tune_inits} tuning "
            f"initialisations chose σ = {sigmas} for NES {largest:,} at num_dim {dims}; run only there on the "
            f"reported initialisations, NES took {saved}× fewer directions than every σ on every initialisation."
            + _against_grid_sentence(against_grid(runs, every)))


def _against_grid_sentence(found: Sequence[AgainstGrid]) -> str:
    if not found:
        return ""
    parts = [f"num_dim {a.num_dim}: {a.claim.verdict if a.informative else 'uninformative'} "
             f"({with_interval(a.claim.difference.mean, a.claim.difference.interval)})" for a in found]
    return (f" Against the brute force of the grid runs (paired, n = {found[0].claim.difference.n}, Holm, "
            f"±{found[0].claim.margin:g}): " + "; ".join(parts) + ".")


TWIN_FREE = ("sigma_search", "tune_inits", "device", "cache_dir")  # parameters a grid twin may differ in


def _twin(r: PR.Results, others: Sequence[PR.Results]) -> PR.Results | None:
    """The grid run among ``others`` whose parameters equal ``r``'s but for :data:`TWIN_FREE`."""
    def key(x: PR.Results) -> dict:
        return {k: v for k, v in asdict(params_of(x)).items() if k not in TWIN_FREE}

    return next((g for g in others if mode(g) == "grid" and g.get("population") and key(g) == key(r)), None)


@dataclass(frozen=True)
class AgainstGrid:
    """A halving run's NES at the largest count against its grid twin's brute force (all σ)."""

    num_dim: int
    search: Estimate
    brute: Estimate
    claim: Claim  # "σ search" − "every σ", Holm-corrected over the section's num_dims
    informative: bool  # CDG beats the random direction at this num_dim (the section's rule)


def against_grid(shown: Sequence[PR.Results], every: Sequence[PR.Results]) -> list[AgainstGrid]:
    """Each halving run of ``shown`` with a grid twin in ``every``, compared paired."""
    comps = PR.comparisons(shown)
    raw = []
    for r in sorted((r for r in shown if mode(r) == "halving"), key=lambda r: r["num_dim"]):
        twin = _twin(r, every)
        if twin is None:
            continue
        p = params_of(r)
        family = f"NES {max(p.nes_samples)}"
        a, b = (PR.score(x, next(f for f in PR.families(x) if f.name == family), HIDDEN, p.batch_size) for x in (r, twin))
        if a is None or b is None:
            continue
        raw.append((r["num_dim"], a.estimate, b.estimate, paired_difference(a.per_init, b.per_init,
                    p.equivalence_margin), p.equivalence_margin, PR.informative(comps, r["num_dim"], p.batch_size)))
    pv, qv = corrected([d for _, _, _, d, _, _ in raw])
    return [AgainstGrid(dim, s, b, Claim("σ search", "every σ", d, pv[k], qv[k], margin), ok)
            for k, (dim, s, b, d, margin, ok) in enumerate(raw)]


def against_grid_markdown(found: Sequence[AgainstGrid]) -> str:
    """The comparison with the grid twins (:func:`against_grid`) as markdown, or ``""`` without any."""
    if not found:
        return ""
    rows = "\n".join(f"| {a.num_dim} | {_estimate(a.search)} | {_estimate(a.brute)} | {difference_cell(a)} |"
                     for a in found)
    return ("**Against the brute force.** The grid runs of the same setting (every σ on every initialisation, σ "
            "and lr cross-fitted) beside this search's NES at the largest count, paired over the "
            f"n = {found[0].claim.difference.n} initialisations both ran, "
            + (f"Holm over {len(found)} num_dims" if len(found) > 1 else "one num_dim, no correction") + "; ≈: "
            f"equivalent within ±{found[0].claim.margin:g} (TOST); in brackets: uninformative (CDG does not beat "
            "the random direction there).\n\n| num_dim | σ search | every σ | search − every σ |\n|---|---|---|---|\n"
            + rows)
