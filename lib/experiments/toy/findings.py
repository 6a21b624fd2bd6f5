"""The toy's answers, for the report's sections and its Findings: the notes' difficulty (is one NES
σ better than the best CDG at every num_dim?), their question (why NES does not point downhill
after pretraining) and the STE against CDG, each from the means and 95% intervals of the runs;
and which runs a section compares (:func:`is_pretrained`, :func:`one_setting`)."""
from __future__ import annotations

from typing import Any, Sequence

from lib.common.files import canonical_json
from lib.experiments.cells import anchor
from lib.experiments.records import distinct, only
from lib.experiments.schema import defaults
from lib.experiments.stats import rank, separated, with_interval

from . import tables
from .diagnosis import CAUSES
from .params import ToyParams

# The headings the findings link to (the sections' English headings).
SEARCH_1 = "Hyper-parameter search (epsilon for CDG & sigma for NES) - 1"
SEARCH_2 = "Hyper-parameter search (epsilon for CDG & sigma for NES) - 2"


def is_pretrained(run: dict[str, Any]) -> bool:
    """Whether a run (``{id, entry, results}``) is of the pretrained section: as its results say,
    else as its manifest entry's parameters (the schema's default when they leave it out)."""
    if run["results"] is not None:
        return bool(run["results"]["pretrained"])
    return bool(run["entry"].get("parameters", {}).get("pretrained", defaults(ToyParams)["pretrained"]))


# Parameters that differ between the runs a section compares, or that change no number.
NOT_SETTING = ("num_dim", "pretrained", "device", "cache_dir")


def _setting(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r["parameters"].items() if k not in NOT_SETTING}


def one_setting(ok: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs a section compares: one group of runs that share every parameter but num_dim
    (the sections compare num_dim), namely the group of the notes' binary / binary pair when there
    is one, else the largest, ties broken by the sorted setting."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault(canonical_json(_setting(r)), []).append(r)
    if len(groups) <= 1:
        return ok

    def preference(item: tuple[str, list[dict[str, Any]]]) -> tuple[bool, int, str]:
        p = item[1][0]["parameters"]
        binary = (p.get("act", "binary"), p.get("teacher_act", "binary")) == ("binary", "binary")
        return not binary, -len(item[1]), item[0]

    return min(groups.items(), key=preference)[1]


def setting_differences(shown: dict[str, Any], others: Sequence[dict[str, Any]]) -> list[str]:
    """The parameters in which the runs ``others`` differ from the run ``shown``."""
    mine = _setting(shown)
    return sorted({k for r in others for k, v in _setting(r).items() if mine.get(k) != v})


def nes_against_cdg(ok: Sequence[dict[str, Any]], samples: int) -> tuple[list[float], list[float]]:
    """``(above, sure)``: the σ at which NES with ``samples`` directions has a best loss decrease
    above the best CDG's at every num_dim, and those where the 95% intervals also separate."""
    cdg = tables.best_by_dim(ok)["CDG"]
    dims = sorted(r["num_dim"] for r in ok)
    by_dim = {r["num_dim"]: r for r in ok}
    above, sure = [], []
    for sg in distinct(ok[0]["curves"], "sigma", estimator="nes", layers="all", samples=samples):
        nes = {d: only(by_dim[d]["curves"], estimator="nes", layers="all", samples=samples, sigma=sg) for d in dims}
        if all(rank(nes[d]["best"]) > rank(cdg[d].value) for d in dims):
            above.append(sg)
            if all(separated(nes[d].get("interval"), cdg[d].interval) for d in dims):
                sure.append(sg)
    return above, sure


def nes_sentence(ok: Sequence[dict[str, Any]], samples: int) -> str:
    """One clause on :func:`nes_against_cdg`."""
    above, sure = nes_against_cdg(ok, samples)
    if sure:
        return (f"with {samples} samples, NES at σ = {', '.join(f'{sg:g}' for sg in sure)} beats the best CDG at "
                "every num_dim (95% intervals separate)")
    if above:
        return (f"with {samples} samples, NES at σ = {', '.join(f'{sg:g}' for sg in above)} is above the best CDG "
                "at every num_dim, but not distinguishable from it at some num_dim (95% intervals overlap, or n = 1)")
    return f"with {samples} samples, no single σ is above the best CDG at every num_dim"


def _n(ok: Sequence[dict[str, Any]]) -> str:
    n = min(c["n"] for r in ok for c in r["curves"])
    return f"n = {n}" + ("" if n > 1 else ", no intervals")


def difficulty_finding(ok: Sequence[dict[str, Any]]) -> str:
    by_dim = sorted(ok, key=lambda r: r["num_dim"])
    s = tables.nes_samples(by_dim[0])[-1]
    big = by_dim[-1]
    return (f"**Difficulty** ([without pretraining](#{anchor(SEARCH_1, 'Difficulty')})): {nes_sentence(by_dim, s)} "
            f"({_n(by_dim)}); at num_dim {big['num_dim']} one NES σ costs {big['seconds']['nes']:.3g} s against "
            f"{big['seconds']['cdg']:.3g} s per CDG ε.")


def ste_finding(ok: Sequence[dict[str, Any]], pretrained: bool) -> str:
    """The best STE variant against the best CDG, per num_dim."""
    best = tables.best_by_dim(ok)
    dims = sorted(best["CDG"])
    parts, below, apart = [], 0, 0
    for d in dims:
        cdg = best["CDG"][d]
        name, ste = max(((k, v[d]) for k, v in best.items() if k.startswith("STE") and d in v),
                        key=lambda kv: rank(kv[1].value))
        below += rank(ste.value) < rank(cdg.value)
        apart += rank(ste.value) < rank(cdg.value) and separated(ste.interval, cdg.interval)
        parts.append(f"num_dim {d}: {name} {with_interval(ste.value, ste.interval)} against CDG "
                     f"{with_interval(cdg.value, cdg.interval)}")
    where = anchor(SEARCH_2 if pretrained else SEARCH_1, "best loss decrease - num_dim plot")
    intervals = any(b.interval for by in best.values() for b in by.values())
    claim = (f"below CDG's with the 95% intervals apart at {apart} of {len(dims)} num_dim" if intervals else
             f"below CDG's at {below} of {len(dims)} num_dim by the means alone")
    return (f"**STE against CDG** ([{'after' if pretrained else 'without'} pretraining](#{where})): the best STE "
            f"variant's best loss decrease is {claim} ({'; '.join(parts)}; {_n(ok)}).")


def question_finding(ok: Sequence[dict[str, Any]]) -> str:
    """The NES diagnosis across num_dim: for each cause, the σ at which it holds."""
    by_dim = sorted((r for r in ok if r.get("diagnosis")), key=lambda r: r["num_dim"])
    if not by_dim:
        return ""
    names = {"bias": "smoothing bias", "variance": "variance", "both": "both", "neither": "neither",
             "undetermined": "undetermined"}
    parts = []
    for cause in CAUSES:
        where = []
        for r in by_dim:
            sigmas = [f"{e['sigma']:g}" for e in r["diagnosis"]["per_sigma"] if e["cause"] == cause]
            if sigmas:
                where.append(f"{r['num_dim']} (σ ∈ {{{', '.join(sigmas)}}})")
        if where:
            parts.append(f"*{names[cause]}* at num_dim {', '.join(where)}")
    return (f"**Question** ([NES after pretraining](#{anchor(SEARCH_2, 'Question')})): the diagnosis on the last two "
            f"layers finds {'; '.join(parts)} ({_n(by_dim)}).")


def findings(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The toy's sentences for the report's Findings (markdown, with links to their evidence)."""
    ok = [r["results"] for r in runs if r["results"] is not None]
    plain = one_setting([r for r in ok if not r["pretrained"]])
    pre = one_setting([r for r in ok if r["pretrained"]])
    out = [difficulty_finding(plain), ste_finding(plain, False)] if plain else []
    if pre:
        out += [question_finding(pre), ste_finding(pre, True)]
    return [s for s in out if s]
