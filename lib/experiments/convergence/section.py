"""The "Reference convergence" section of the static report."""
from __future__ import annotations

from typing import Any, Sequence

from lib.experiments.cells import PRECISION_TITLES, anchor, failed_runs_note, figure, heading, md, table
from lib.experiments.stats import rank, separated, with_interval

from .figures import convergence_figure, series
from .run import CEILING, ste_estimate

HEADING = "Reference convergence"  # beyond the notes: no heading of theirs beside it
RULE = ("CDG stops being the limiting factor at the first N where its noise ceiling lies above the best STE "
        "variant's (mean per-layer) cosine with CDG on an independent batch, both 95% intervals apart: from "
        "there on, CDG agrees with itself better than any STE agrees with it, so a low STE–CDG cosine "
        "measures the STE")


def ste_records(r: dict[str, Any], precision: str, eps: float, n: int, reference_batch: str) -> list[dict[str, Any]]:
    """The records of every STE variant's mean per-layer cosine with CDG at batch size ``n`` (CDG on
    the STE's own batch: ``same``; on the other one: ``independent``), highest mean first."""
    return sorted((c for v in r["parameters"]["ste_variants"]
                   for c in series(r, precision, eps, ste_estimate(v, reference_batch)) if c["batch_size"] == n),
                  key=lambda c: -rank(c["mean"]))


def best_ste(r: dict[str, Any], precision: str, eps: float, n: int, reference_batch: str) -> dict[str, Any]:
    """The record of the STE variant with the highest mean (see :func:`ste_records`)."""
    return ste_records(r, precision, eps, n, reference_batch)[0]


def limiting_until(r: dict[str, Any], precision: str, eps: float) -> int | None:
    """The first batch size at which the reference no longer limits (see :data:`RULE`); ``None``
    when it limits at every N of the run."""
    ceiling = {c["batch_size"]: c for c in series(r, precision, eps, CEILING)}
    for n in sorted(ceiling):
        ste = best_ste(r, precision, eps, n, "independent")
        if rank(ceiling[n]["mean"]) > rank(ste["mean"]) and separated(ceiling[n].get("interval"), ste.get("interval")):
            return n
    return None


def _table(r: dict[str, Any], eps: float) -> list:
    rows = []
    for precision in r["parameters"]["precisions"]:
        for ceil in series(r, precision, eps, CEILING):
            n = ceil["batch_size"]
            best = {kind: best_ste(r, precision, eps, n, kind) for kind in ("same", "independent")}
            rows.append([PRECISION_TITLES.get(precision, precision), n, with_interval(ceil["mean"], ceil["interval"]),
                         f"{with_interval(best['same']['mean'], best['same']['interval'])} "
                         f"({best['same']['estimate']['variant']})",
                         f"{with_interval(best['independent']['mean'], best['independent']['interval'])} "
                         f"({best['independent']['estimate']['variant']})"])
    return [table(["activation", "N", "CDG noise ceiling", "best STE, same batch", "best STE, independent batch"],
                  rows)]


def report_cells(runs: Sequence[dict[str, Any]]) -> list:
    """The section from the convergence runs of a report folder (``{id, entry, results}``)."""
    cells = [md(heading(3, HEADING))]
    for r in [run["results"] for run in runs if run["results"] is not None]:
        p = r["parameters"]
        coords = "every weight" if not p["coords_per_layer"] else f"{p['coords_per_layer']} sampled weights per layer"
        cells.append(md(f"The toy with 3 hidden layers of {p['num_dim']} units; the student's activation varies, the "
                        f"teacher's is {'the same' if p['teacher_act'] == 'same' else p['teacher_act']}. CDG "
                        f"(central, on {coords}) on two independent batches of N rows gives the reference's noise "
                        f"ceiling; each STE variant is compared with CDG on its own batch (the lab's measure) and on "
                        f"the other one. Mean over n = {p['num_init']} initialisations, 95% t-intervals. {RULE}."))
        cells.append(figure(convergence_figure(r), "reference convergence"))
        notes = []
        for eps in p["eps"]:
            for precision in p["precisions"]:
                n = limiting_until(r, precision, eps)
                name = PRECISION_TITLES.get(precision, precision)
                notes.append(f"{name}, ε = {eps:g}: " + (f"from N = {n}" if n else
                             f"limiting at every N up to {max(p['batch_sizes'])}"))
        cells.append(md("**Where the reference stops limiting:** " + "; ".join(notes) + "."))
        cells.append(md(f"Mean per-layer cosine at ε = {p['eps'][0]:g} (mean over initialisations [95% interval]; "
                        "the variant in brackets is the best one):"))
        cells += _table(r, p["eps"][0])
    return cells + failed_runs_note(runs)


def findings(runs: Sequence[dict[str, Any]]) -> list[str]:
    """At the largest batch of each run: CDG's noise ceiling and the best STE's cosine with CDG on an
    independent batch per precision, and whether the reference still limits."""
    out = []
    for r in [run["results"] for run in runs if run["results"] is not None]:
        p = r["parameters"]
        eps, n_max = p["eps"][0], max(p["batch_sizes"])
        parts = []
        for precision in p["precisions"]:
            ceiling = next(c for c in series(r, precision, eps, CEILING) if c["batch_size"] == n_max)
            stes = ste_records(r, precision, eps, n_max, "independent")
            best, worst = stes[0], stes[-1]
            n = limiting_until(r, precision, eps)
            parts.append(f"{PRECISION_TITLES.get(precision, precision)}: ceiling "
                         f"{with_interval(ceiling['mean'], ceiling['interval'])}, STE from "
                         f"{with_interval(best['mean'], best['interval'])} ({best['estimate']['variant']}) down to "
                         f"{with_interval(worst['mean'], worst['interval'])} ({worst['estimate']['variant']}); "
                         + (f"the reference stops limiting at N = {n}" if n else "the reference still limits"))
        out.append(f"**Reference convergence** ([section](#{anchor(HEADING)})): how wrong the STE is against CDG "
                   f"on an independent batch at N = {n_max}, ε = {eps:g}, mean per-layer cosine: {'; '.join(parts)} "
                   f"(n = {p['num_init']} initialisations).")
    return out
