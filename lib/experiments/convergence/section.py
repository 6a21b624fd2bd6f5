"""The "Reference convergence" section of the static report."""
from __future__ import annotations

from typing import Any, Sequence

from lib.experiments.cells import PRECISION_TITLES, anchor, failed_runs_note, figure, heading, md, table
from lib.experiments.stats import rank, separated, with_interval

from .figures import convergence_figure, series
from .run import CEILING, ste_estimate

HEADING = "Reference convergence"  # beyond the notes: no heading of theirs beside it
RULE = ("An STE variant's own error is *resolved* at a batch size N when its cosine with CDG on an independent "
        "batch lies below CDG's noise ceiling, the two 95% intervals apart: CDG then agrees with itself better "
        "than with the STE, so the gap is the STE's. Where the intervals meet, the STE–CDG disagreement is "
        "within the reference's own noise at that N. (An estimate equal to the population gradient would score "
        "about √ceiling against CDG on an independent batch; one as noisy as CDG, the ceiling itself.)")


def ste_records(r: dict[str, Any], precision: str, eps: float, n: int, reference_batch: str) -> list[dict[str, Any]]:
    """The records of every STE variant's mean per-layer cosine with CDG at batch size ``n`` (CDG on
    the STE's own batch: ``same``; on the other one: ``independent``), highest mean first."""
    return sorted((c for v in r["parameters"]["ste_variants"]
                   for c in series(r, precision, eps, ste_estimate(v, reference_batch)) if c["batch_size"] == n),
                  key=lambda c: -rank(c["mean"]))


def best_ste(r: dict[str, Any], precision: str, eps: float, n: int, reference_batch: str) -> dict[str, Any]:
    """The record of the STE variant with the highest mean (see :func:`ste_records`)."""
    return ste_records(r, precision, eps, n, reference_batch)[0]


def resolved(r: dict[str, Any], precision: str, eps: float, variant: str, n: int) -> bool:
    """Whether the STE variant's cosine with CDG on the independent batch lies below the noise
    ceiling at batch size ``n``, intervals apart (see :data:`RULE`)."""
    ceiling = next(c for c in series(r, precision, eps, CEILING) if c["batch_size"] == n)
    ste = next(c for c in series(r, precision, eps, ste_estimate(variant, "independent")) if c["batch_size"] == n)
    return rank(ste["mean"]) < rank(ceiling["mean"]) and separated(ceiling.get("interval"), ste.get("interval"))


def resolved_from(r: dict[str, Any], precision: str, eps: float, variant: str) -> int | None:
    """The first batch size of the run at which the variant's error is resolved; ``None`` if at none."""
    return next((n for n in sorted(r["parameters"]["batch_sizes"]) if resolved(r, precision, eps, variant, n)), None)


def resolution_lines(r: dict[str, Any]) -> list[str]:
    p = r["parameters"]
    lines = []
    for eps in p["eps"]:
        for precision in p["precisions"]:
            first = {v: resolved_from(r, precision, eps, v) for v in p["ste_variants"]}
            parts = [f"{v} from N = {n}" for v, n in sorted(((v, n) for v, n in first.items() if n), key=lambda t: t[1])]
            hidden = [v for v, n in first.items() if not n]
            if hidden:
                parts.append(f"{', '.join(hidden)} at no N ≤ {max(p['batch_sizes'])}")
            lines.append(f"* {PRECISION_TITLES.get(precision, precision)}, ε = {eps:g}: {'; '.join(parts)}")
    return lines


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
                        f"the other one. Mean over n = {p['num_init']} initialisations, 95% t-intervals. {RULE}"))
        cells.append(figure(convergence_figure(r), "reference convergence"))
        cells.append(md("**Where each STE variant's own error is resolved:**\n\n" + "\n".join(resolution_lines(r))))
        cells.append(md(f"Mean per-layer cosine at ε = {p['eps'][0]:g} (mean over initialisations [95% interval]; "
                        "the variant in brackets is the best one):"))
        cells += _table(r, p["eps"][0])
    return cells + failed_runs_note(runs)


def findings(runs: Sequence[dict[str, Any]]) -> list[str]:
    """At the largest batch of each run, per precision: CDG's noise ceiling, the STE variants whose
    error is resolved there (with their cosines with CDG on an independent batch) and the best of
    those within the reference's noise."""
    out = []
    for r in [run["results"] for run in runs if run["results"] is not None]:
        p = r["parameters"]
        eps, n_max = p["eps"][0], max(p["batch_sizes"])
        parts = []
        for precision in p["precisions"]:
            ceiling = next(c for c in series(r, precision, eps, CEILING) if c["batch_size"] == n_max)
            stes = ste_records(r, precision, eps, n_max, "independent")
            below = [c for c in stes if resolved(r, precision, eps, c["estimate"]["variant"], n_max)]
            within = [c for c in stes if c not in below]
            text = f"{PRECISION_TITLES.get(precision, precision)}: ceiling {with_interval(ceiling['mean'], ceiling['interval'])}"
            if below:
                text += "; below it " + ", ".join(f"{c['estimate']['variant']} {with_interval(c['mean'], c['interval'])}"
                                                  for c in below)
            if within:
                text += (f"; within its noise {', '.join(c['estimate']['variant'] for c in within)} (best "
                         f"{with_interval(within[0]['mean'], within[0]['interval'])})")
            parts.append(text)
        out.append(f"**Reference convergence** ([section](#{anchor(HEADING)})): how wrong each STE variant is against "
                   f"the converged reference, as its mean per-layer cosine with CDG on an independent batch at "
                   f"N = {n_max}, ε = {eps:g}: {'; '.join(parts)} (n = {p['num_init']} initialisations).")
    return out
