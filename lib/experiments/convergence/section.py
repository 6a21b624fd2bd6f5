"""The "Reference convergence" section of the static report."""
from __future__ import annotations

import math
from typing import Any, Sequence

from lib.experiments.cells import PRECISION_TITLES, anchor, failed_runs_note, figure, heading, md, table
from lib.experiments.inference import ALPHA, Difference, holm, over_inits, paired_difference
from lib.experiments.stats import finite, rank, with_interval

from .figures import convergence_figure, series
from .records import ConvergenceResults as Results
from .records import params_of
from .run import CEILING, ste_ceiling, ste_estimate

HEADING = "Reference convergence"  # beyond the notes: no heading of theirs beside it
RULE = ("Two estimates computed on independent batches, each the population gradient plus noise of its own, "
        "agree at about √(c_X · c_Y), c_X being an estimate's own noise ceiling (its cosine with itself on the "
        "other batch); the noise-free population gradient would score √ceiling against CDG. So an STE variant "
        "with no error of its own, computed on a batch as the STE is, scores √(c_STE · c_CDG) against CDG on "
        "the other batch, and its own error is *resolved* at a batch size N when cos(STE_A, CDG_B) lies below "
        "that: the paired difference cos(STE_A, CDG_B) − √(max(c_STE, 0) · max(c_CDG, 0)) over "
        "initialisations, its 95% interval below 0 after Holm's correction over every (activation, ε, N, "
        "variant) of the run, and at least 10⁻⁴ (float rounding). Where it is not, the STE–CDG disagreement is within the two estimates' own "
        "noise at that N. Full precision checks the rule: there every STE variant is the exact gradient of its "
        "batch and must not be resolved.")
MIN_GAP = 1e-4  # an own error smaller than this (in cosine) is float32 rounding in the sums, not an error
OLD_RUN = ("This run did not record the STE's own noise ceiling (cos(STE_A, STE_B)), which the rule needs: "
           "it shows the cosines and gives no verdict on where the STE's error is resolved. (Its comparison "
           "with √ceiling alone, the score of a noise-free estimate, would call even an exact finite-batch "
           "gradient resolved.)")


def ste_records(r: Results, precision: str, eps: float, n: int, reference_batch: str) -> list[dict[str, Any]]:
    """The records of every STE variant's mean per-layer cosine with CDG at batch size ``n`` (CDG on
    the STE's own batch: ``same``; on the other one: ``independent``), highest mean first."""
    return sorted((c for v in params_of(r).ste_variants
                   for c in series(r, precision, eps, ste_estimate(v, reference_batch)) if c["batch_size"] == n),
                  key=lambda c: -rank(c["mean"]))


def best_ste(r: Results, precision: str, eps: float, n: int, reference_batch: str) -> dict[str, Any]:
    """The record of the STE variant with the highest mean (see :func:`ste_records`)."""
    return ste_records(r, precision, eps, n, reference_batch)[0]


def _values(r: Results, precision: str, eps: float, estimate: dict[str, Any], n: int) -> list[float | None]:
    return next(c for c in series(r, precision, eps, estimate) if c["batch_size"] == n).get("values", [])


def has_ste_ceiling(r: Results) -> bool:
    """Whether the run recorded the STE's own noise ceiling (runs before it did not)."""
    return any(c["estimate"].get("estimator") == "ste" and "batch" in c["estimate"] for c in r["cosines"])


def gap_to_unbiased(r: Results, precision: str, eps: float, variant: str, n: int) -> Difference:
    """``cos(STE_A, CDG_B) − √(max(c_STE, 0) · max(c_CDG, 0))`` paired over initialisations (see
    :data:`RULE`)."""
    ceiling = _values(r, precision, eps, CEILING, n)
    own = _values(r, precision, eps, ste_ceiling(variant), n)
    ste = _values(r, precision, eps, ste_estimate(variant, "independent"), n)
    ok = [i for i, vals in enumerate(zip(ceiling, own, ste)) if all(v is not None and math.isfinite(v) for v in vals)]
    return paired_difference({i: ste[i] for i in ok},
                             {i: math.sqrt(max(ceiling[i], 0.0) * max(own[i], 0.0)) for i in ok})


def resolution(r: Results) -> dict[tuple[str, float, str, int], tuple[Difference, float]]:
    """Every (precision, ε, variant, N) of a run: its gap to the unbiased score and the
    Holm-corrected p-value over all of them; none for a run without the STE's own ceiling."""
    if not has_ste_ceiling(r):
        return {}
    p = params_of(r)
    keys = [(precision, eps, v, n) for precision in p.precisions for eps in p.eps
            for v in p.ste_variants for n in sorted(p.batch_sizes)]
    gaps = [gap_to_unbiased(r, *key) for key in keys]
    return dict(zip(keys, zip(gaps, holm([g.p for g in gaps]))))


def resolved_keys(r: Results) -> set[tuple[str, float, str, int]]:
    """The (precision, ε, variant, N) of a run at which the variant's error is resolved (see
    :data:`RULE`); computed once per run, the Holm family being all of them."""
    return {key for key, (gap, p_holm) in resolution(r).items() if gap.mean < -MIN_GAP and p_holm < ALPHA}


def resolved(r: Results, precision: str, eps: float, variant: str, n: int) -> bool:
    """Whether the variant's error is resolved at batch size ``n`` (see :data:`RULE`)."""
    return (precision, eps, variant, n) in resolved_keys(r)


def resolved_at(r: Results, precision: str, eps: float, variant: str,
                done: set[tuple[str, float, str, int]] | None = None) -> list[int]:
    """The batch sizes of the run at which the variant's error is resolved, ascending (it need not
    stay resolved as N grows: the gap shrinks with the reference's noise, and n is small);
    ``done``: :func:`resolved_keys` of the run, when the caller has it."""
    done = resolved_keys(r) if done is None else done
    return [n for n in sorted(params_of(r).batch_sizes) if (precision, eps, variant, n) in done]


def resolution_lines(r: Results) -> list[str]:
    """Per (ε, precision): the N at which each variant's error is resolved, or none."""
    p = params_of(r)
    done = resolved_keys(r)
    lines = []
    for eps in p.eps:
        for precision in p.precisions:
            at = {v: resolved_at(r, precision, eps, v, done) for v in p.ste_variants}
            parts = [f"{v} at N ∈ {{{', '.join(map(str, ns))}}}" for v, ns in at.items() if ns]
            hidden = [v for v, ns in at.items() if not ns]
            if hidden:
                parts.append(f"{', '.join(hidden)} at no N ≤ {max(p.batch_sizes)}")
            lines.append(f"* {PRECISION_TITLES.get(precision, precision)}, ε = {eps:g}: {'; '.join(parts)}")
    return lines


def _table(r: Results, eps: float) -> list:
    rows = []
    for precision in params_of(r).precisions:
        for ceil in series(r, precision, eps, CEILING):
            n = ceil["batch_size"]
            best = {kind: best_ste(r, precision, eps, n, kind) for kind in ("same", "independent")}
            root = over_inits([math.sqrt(max(c, 0.0)) for c in finite(ceil.get("values", []))])
            rows.append([PRECISION_TITLES.get(precision, precision), n, with_interval(ceil["mean"], ceil["interval"]),
                         with_interval(root.mean, root.interval),
                         f"{with_interval(best['same']['mean'], best['same']['interval'])} "
                         f"({best['same']['estimate']['variant']})",
                         f"{with_interval(best['independent']['mean'], best['independent']['interval'])} "
                         f"({best['independent']['estimate']['variant']})"])
    return [table(["activation", "N", "CDG noise ceiling", "√ceiling", "best STE, same batch",
                   "best STE, independent batch"], rows)]


def report_cells(runs: Sequence[dict[str, Any]]) -> list:
    """The section from the convergence runs of a report folder (``{id, entry, results}``)."""
    cells = [md(heading(3, HEADING))]
    for r in [run["results"] for run in runs if run["results"] is not None]:
        p = params_of(r)
        coords = "every weight" if not p.coords_per_layer else f"{p.coords_per_layer} sampled weights per layer"
        cells.append(md(f"The toy with 3 hidden layers of {p.num_dim} units; the student's activation varies, the "
                        f"teacher's is {'the same' if p.teacher_act == 'same' else p.teacher_act}. CDG "
                        f"(central, on {coords}) on two independent batches of N rows gives the reference's noise "
                        f"ceiling; each STE variant is compared with CDG on its own batch (the lab's measure) and on "
                        f"the other one. Mean over n = {p.num_init} initialisations, 95% t-intervals. {RULE}"))
        cells.append(figure(convergence_figure(r), "reference convergence"))
        cells.append(md("**Where each STE variant's own error is resolved:**\n\n" + (
            "\n".join(resolution_lines(r)) if has_ste_ceiling(r) else OLD_RUN)))
        cells.append(md(f"Mean per-layer cosine at ε = {p.eps[0]:g} (mean over initialisations [95% interval]; "
                        "the variant in brackets is the best one):"))
        cells += _table(r, p.eps[0])
    return cells + failed_runs_note(runs)


def _variant_text(r: Results, precision: str, eps: float, n: int, variant: str, resolved_here: bool) -> str:
    """``clipped 0.97 [0.96, 0.98] against 0.99 (resolved)``: the cross-batch cosine, the unbiased score."""
    cross = next(c for c in series(r, precision, eps, ste_estimate(variant, "independent")) if c["batch_size"] == n)
    gap = gap_to_unbiased(r, precision, eps, variant, n)
    unbiased = cross["mean"] - gap.mean if cross["mean"] is not None else math.nan
    return (f"{variant} {with_interval(cross['mean'], cross['interval'])} against {unbiased:.3g}"
            + (" (resolved)" if resolved_here else ""))


def findings(runs: Sequence[dict[str, Any]]) -> list[str]:
    """At the largest batch of each run, per precision: CDG's noise ceiling, and each STE variant's
    cosine with CDG on an independent batch against the score of an STE with no error of its own
    (:data:`RULE`), the variants whose error is resolved there marked."""
    out = []
    for r in [run["results"] for run in runs if run["results"] is not None]:
        p = params_of(r)
        eps, n_max = p.eps[0], max(p.batch_sizes)
        lead = (f"**Reference convergence** ([section](#{anchor(HEADING)})): how wrong each STE variant is against "
                f"the converged reference at N = {n_max}, ε = {eps:g}")
        if not has_ste_ceiling(r):
            out.append(f"{lead}: no verdict, the run did not record the STE's own noise ceiling (see the section).")
            continue
        done = resolved_keys(r)
        parts = []
        for precision in p.precisions:
            ceiling = next(c for c in series(r, precision, eps, CEILING) if c["batch_size"] == n_max)
            variants = [_variant_text(r, precision, eps, n_max, v, (precision, eps, v, n_max) in done)
                        for v in p.ste_variants]
            parts.append(f"{PRECISION_TITLES.get(precision, precision)}: CDG ceiling "
                         f"{with_interval(ceiling['mean'], ceiling['interval'])}; " + ", ".join(variants))
        out.append(f"{lead}, as each variant's mean per-layer cosine with CDG on an independent batch against "
                   f"√(c_STE · c_CDG), what an STE with no error of its own would score: {'; '.join(parts)} "
                   f"(n = {p.num_init} initialisations; resolved: below it, paired, Holm over the run's "
                   f"{len(p.precisions) * len(p.eps) * len(p.ste_variants) * len(p.batch_sizes)} "
                   "(activation, ε, N, variant) tests).")
    return out
