"""The toy's sentences for the report's Findings, all from held-out, hidden-layer scores over
initialisations with paired, Holm-corrected comparisons (:mod:`.population_report`,
:mod:`.nes_diagnosis`): the notes' difficulty (NES against CDG), their question (why NES does not
point downhill after pretraining), the STE against CDG and the readout control; and which runs a
section compares (:func:`is_pretrained`, :func:`one_setting`)."""
from __future__ import annotations

from typing import Any, Sequence

from lib.common.files import canonical_json
from lib.experiments.cells import anchor
from lib.experiments.schema import defaults

from .nes_diagnosis import VERDICTS, diagnose_section
from .population_report import comparison_finding, readout_finding
from .sigma_search import HEADING as SEARCH_HEADING
from .sigma_search import search_finding
from .sigma_tuning_report import tuning_finding
from .params import ToyParams
from .records import params_of

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
        p = params_of(item[1][0])
        binary = (p.act, p.teacher_act) == ("binary", "binary")
        return not binary, -len(item[1]), item[0]

    return min(groups.items(), key=preference)[1]


def setting_differences(shown: dict[str, Any], others: Sequence[dict[str, Any]]) -> list[str]:
    """The parameters in which the runs ``others`` differ from the run ``shown``."""
    mine = _setting(shown)
    return sorted({k for r in others for k, v in _setting(r).items() if mine.get(k) != v})


def question_finding(ok: Sequence[dict[str, Any]]) -> str:
    """The held-out NES diagnosis across num_dim: for each verdict, the (num_dim, σ) where it holds."""
    verdicts = diagnose_section(ok)
    if not verdicts:
        return ""
    parts = []
    for verdict in VERDICTS:
        where = {}
        for v in verdicts:
            if v.verdict == verdict:
                where.setdefault(v.num_dim, []).append(f"{v.sigma:g}")
        if where:
            parts.append(f"*{verdict}* at " + ", ".join(f"num_dim {d} (σ ∈ {{{', '.join(s)}}})" for d, s in where.items()))
    n = min(v.exact.estimate.n for v in verdicts)
    return (f"**Question** ([NES after pretraining](#{anchor(SEARCH_2, 'Question')})): on held-out rows, a step on "
            f"the last hidden layer, {'; '.join(parts)} (n = {n} initialisations; paired, Holm over "
            f"{sum(len(v.tests) for v in verdicts)} tests).")


def findings(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The toy's sentences for the report's Findings (markdown, with links to their evidence)."""
    ok = [r["results"] for r in runs if r["results"] is not None]
    plain = one_setting([r for r in ok if not r["pretrained"]])
    pre = one_setting([r for r in ok if r["pretrained"]])
    sections = (SEARCH_1, SEARCH_2)
    out = []
    for runs_, pretrained in ((plain, False), (pre, True)):
        if not runs_:
            continue
        largest = max(params_of(runs_[0]).nes_samples)
        if pretrained:
            out.append(question_finding(runs_))
        out += [comparison_finding(runs_, pretrained, sections, "STE against CDG", [("CDG", "best STE")]),
                comparison_finding(runs_, pretrained, sections, "NES against CDG" if pretrained else "Difficulty",
                                   [(f"NES {largest}", "CDG")]),
                search_finding(runs_, anchor(sections[1] if pretrained else sections[0], SEARCH_HEADING))
                or tuning_finding(runs_, anchor(sections[1] if pretrained else sections[0], SEARCH_HEADING),
                                  [r for r in ok if r["pretrained"] == pretrained]),
                readout_finding(runs_, pretrained, sections)]
    return [s for s in out if s]
