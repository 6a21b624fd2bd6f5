"""The population protocol in the report: the tables, the figure and the Findings sentences the toy
sections draw from held-out, hidden-layer, cross-fitted scores over initialisations
(:mod:`.protocol`). The notes' in-sample curves stay in the sections beside them, labelled."""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np

from lib.experiments import palette
from lib.experiments.cells import anchor, figure, heading, md, table
from lib.experiments.inference import paired_difference
from lib.experiments.stats import with_interval

from . import protocol as PR
from .population import ALL, HIDDEN, IN_SAMPLE
from .records import ToyResults as Results
from .records import params_of
from .sigma_tuning import sigma_searched

HEADING = "Held-out loss decrease on the hidden layers (beyond the notes)"
CONTROL = "random direction"


def _n(by_dim: Sequence[Results]) -> int:
    return min(PR.n_inits(r) for r in by_dim)


def _cell(s: PR.Score | None, choice: bool = True) -> str:
    return "–" if s is None else s.text(choice)


def score_table(by_dim: Sequence[Results], metric: str, batch_size: int | None, names: Sequence[str] | None = None,
                choice: bool = True) -> Any:
    """Families × num_dim: cross-fitted mean [95% interval over initialisations] (the choice most
    initialisations made)."""
    per_dim = {r["num_dim"]: PR.scores(r, metric, batch_size) for r in by_dim}
    names = names or list(dict.fromkeys(k for sc in per_dim.values() for k in sc))
    rows = [[name] + [_cell(per_dim[d].get(name), choice) for d in per_dim] for name in names]
    return table(["estimator"] + [f"num_dim {d}" for d in per_dim], rows)


def layer_table(by_dim: Sequence[Results], batch_size: int, names: Sequence[str]) -> Any:
    """(family, hidden layer) × num_dim: cross-fitted relative held-out decrease of a one-layer step."""
    layers = [n for n in dict.fromkeys(rec["metric"] for rec in by_dim[0]["population"]["records"])
              if n not in (HIDDEN, ALL, IN_SAMPLE)]
    per = {(r["num_dim"], layer): PR.scores(r, layer, batch_size) for r in by_dim for layer in layers}
    dims = [r["num_dim"] for r in by_dim]
    rows = [[f"{name}, {layer.removesuffix('.weight')}"] + [_cell(per[d, layer].get(name), False) for d in dims]
            for layer in layers for name in names]
    return table(["estimator, layer"] + [f"num_dim {d}" for d in dims], rows)


def nes_projection(by_dim: Sequence[Results], rows: int) -> str:
    """What NES over the run's σ grid would cost per repetition at ``rows`` rows, projected from its
    measured time at the notes' batch size, assuming the cost grows linearly with the rows (every
    direction is a forward pass over every row)."""
    parts = []
    for r in by_dim:
        per_sigma, n = r["seconds"].get("nes"), params_of(r).batch_size
        if per_sigma is not None:
            hours = per_sigma * len(params_of(r).sigma_grid) * rows / n / 3600
            parts.append(f"num_dim {r['num_dim']} {hours:.2g} h")
    return ("NES over the σ grid would take, per repetition on this machine, about " + ", ".join(parts)
            + f" (its measured time at {params_of(by_dim[0]).batch_size:,} rows × the rows)") if parts else \
        "its cost grows with the rows"


def _protocol_text(by_dim: Sequence[Results]) -> str:
    r = by_dim[0]
    p, n = params_of(r), _n(by_dim)
    crossed, searched = n > 1, sigma_searched(r)
    return (f"Every number here is a loss decrease on rows no gradient saw: each initialisation has its own "
            f"evaluation set of {r['population']['eval_rows']:,} rows, the same for all its estimates, so the "
            f"comparisons are paired. The value is the *relative* decrease ΔL / L, L the population loss at the "
            "evaluated weights, of a step on the **hidden layers** only (per-layer normalised, the readout held: "
            "every estimator is exact on the linear readout, so that is where they differ). "
            + ((f"The ε, {'' if searched else 'σ, '}STE variant and lr are chosen by cross-fitting: each "
                "initialisation is scored at the choice that does best on the *other* initialisations (in brackets: "
                "the choice most made)" + ("; NES's σ is the σ search's, chosen on the tuning initialisations, "
                                          "which are never scored here. " if searched else ". "))
               if crossed else "**One initialisation:** the choices are made on the data scored (no cross-fitting) "
               "and there are no intervals; this shows structure, not conclusions. ")
            + f"Means with 95% t-intervals over n = {n} initialisation(s) (batches averaged within each; "
            f"{p.num_batch} per initialisation). The *random direction* is a control that uses no data: "
            "an estimator that does not beat it says nothing.")


def comparison_cells(by_dim: Sequence[Results]) -> list:
    """The section's family of paired comparisons with Holm's correction, and their verdicts."""
    comps = PR.comparisons(by_dim)
    if not comps:
        return []
    margin = params_of(by_dim[0]).equivalence_margin
    rows = []
    for c in comps:
        d = c.difference
        verdict = c.verdict if PR.informative(comps, c.num_dim, c.batch_size) or CONTROL in (c.a, c.b) \
            else f"{c.verdict} (uninformative: CDG does not beat the random direction here)"
        rows.append([c.num_dim, f"{c.batch_size:,}", f"{c.a} − {c.b}", with_interval(d.mean, d.interval),
                     f"{c.p_holm:.2g}", verdict])
    return [md(f"Paired comparisons (differences of cross-fitted relative held-out decreases over n = "
               f"{_n(by_dim)} initialisations), Holm-corrected over the {len(comps)} comparisons of this section; "
               f"\"equivalent\" only where two one-sided tests (also Holm-corrected) put the difference within "
               f"±{margin:g} (the params file's `equivalence_margin`). Where CDG, the reference, does not beat "
               "the random direction, the comparisons at that num_dim and batch size are uninformative."),
            table(["num_dim", "batch", "difference", "mean [95% interval]", "Holm p", "verdict"], rows)]


def population_figure(by_dim: Sequence[Results], title: str) -> "plt.Figure":
    """Cross-fitted relative held-out decrease on the hidden layers → num_dim, one panel per
    gradient batch size, with 95% intervals over initialisations."""
    sizes = sorted({n for r in by_dim for n in PR.batch_sizes(r)})
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.6 * len(sizes) + 1.8, 2.9), sharey=True, squeeze=False)
    largest = max(params_of(by_dim[0]).nes_samples)
    styles = {"CDG": palette.CDG, f"NES {largest}": palette.NES, "best STE": palette.STE["clipped"],
              CONTROL: "#7f7f7f"}
    dims = [r["num_dim"] for r in by_dim]
    for ax, n in zip(axes[0], sizes):
        per = [PR.scores(r, HIDDEN, n) for r in by_dim]
        for k, (name, colour) in enumerate(styles.items()):
            pts = [(d, sc[name].estimate) for d, sc in zip(dims, per) if name in sc]
            if not pts:
                continue
            x = np.array([d for d, _ in pts], dtype=float) * (1 + 0.04 * (k - 1.5))
            y = np.array([e.mean for _, e in pts])
            err = np.array([[e.mean - e.interval[0], e.interval[1] - e.mean] if e.interval else [0, 0]
                            for _, e in pts]).T
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, color=colour, label=name,
                        ls="--" if name == CONTROL else "-")
        ax.axhline(0, color="#bbbbbb", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_title(f"gradient batch {n:,} rows", fontsize=9)
        ax.set_xlabel("num_dim")
    axes[0][0].set_ylabel("relative held-out decrease")
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{title} (n = {_n(by_dim)} initialisations, 95% intervals)", fontsize=10)
    fig.tight_layout()
    return fig


def population_cells(level: int, by_dim: Sequence[Results], pretrained: bool) -> list:
    """The population block of a toy section (module docstring)."""
    by_dim = [r for r in by_dim if r.get("population")]
    cells = [md(heading(level, HEADING))]
    if not by_dim:
        return cells + [md("_These runs predate the population protocol; rerun them to see this block._")]
    main = params_of(by_dim[0]).batch_size
    state = "pretrained" if pretrained else "no pretraining"
    cells += [md(_protocol_text(by_dim)),
              figure(population_figure(by_dim, f"held-out decrease, hidden layers ({state})"),
                     "held-out decrease on the hidden layers against num_dim"),
              md(f"Cross-fitted relative held-out decrease, hidden layers, gradient batches of {main:,} rows:"),
              score_table(by_dim, HIDDEN, main)]
    for n in sorted({n for r in by_dim for n in PR.batch_sizes(r)} - {main}):
        cells += [md(f"The same at gradient batches of {n:,} rows (CDG, the STE variants; no NES at this size: "
                     f"{nes_projection(by_dim, n)}):"),
                  score_table(by_dim, HIDDEN, n)]
    cells += comparison_cells(by_dim)
    largest = f"NES {max(params_of(by_dim[0]).nes_samples)}"
    cells += [md(f"Per hidden layer (a step on that layer alone, readout held; gradient batches of {main:,} rows):"),
              layer_table(by_dim, main, ["CDG", largest, "best STE", CONTROL])]
    cells += [md("**Why the readout leaves the comparison.** The same step with the readout stepped too (the "
                 "notes' metric, held out), beside *shrink the readout*, a direction that uses no data (g = v on "
                 "the readout, zero elsewhere):"),
              score_table(by_dim, ALL, main, ["CDG", largest, "best STE", "shrink the readout"]),
              md("**In-sample, for comparison only** (the same hidden-layer step scored on the gradient's own "
                 "batch, choices made on the data scored; never used in a claim):"),
              score_table(by_dim, IN_SAMPLE, main, ["CDG", largest, "best STE"], choice=False)]
    return cells


def _link(pretrained: bool, section: tuple[str, str]) -> str:
    return anchor(section[1] if pretrained else section[0], HEADING)


def _where(c: PR.Comparison) -> str:
    return f"num_dim {c.num_dim} ({c.batch_size:,} rows)"


def verdict_summary(comps: Sequence[PR.Comparison]) -> str:
    """``a − b`` grouped by verdict: "NES 500 − CDG: not distinguishable at num_dim 8 (0.05 [−0.1,
    0.2]), 16 (…); NES 500 > CDG at num_dim 64 (…)", the batch size named where it is not the same."""
    if not comps:
        return ""
    sizes = {c.batch_size for c in comps}
    groups: dict[str, list[str]] = {}
    for c in comps:
        d = c.difference
        at = f"{c.num_dim}" + (f" at {c.batch_size:,} rows" if len(sizes) > 1 else "")
        groups.setdefault(c.verdict, []).append(f"{at} ({with_interval(d.mean, d.interval)})")
    head = f"{comps[0].a} − {comps[0].b}"
    words = {"equivalent": f"equivalent within ±{comps[0].margin:g}",
             "not distinguishable": f"not distinguishable at n = {comps[0].difference.n}"}
    return f"{head}: " + "; ".join(f"{words.get(v, v)} at num_dim {', '.join(where)}" for v, where in groups.items())


def comparison_finding(by_dim: Sequence[Results], pretrained: bool, sections: tuple[str, str],
                       label: str, pairs: Sequence[tuple[str, str]]) -> str:
    """One Findings sentence on the comparisons ``pairs`` of a section: the decided ones with their
    paired differences, how many are not distinguishable, and where they are uninformative."""
    by_dim = [r for r in by_dim if r.get("population")]
    if not by_dim:
        return ""
    comps = PR.comparisons(by_dim)
    mine = [c for c in comps if (c.a, c.b) in pairs]
    if not mine:
        return ""
    decided = [c for c in mine if c.verdict != "not distinguishable"]
    parts = [f"{c.sentence()} at {_where(c)}" for c in decided]
    rest = len(mine) - len(decided)
    if rest:
        parts.append(f"not distinguishable at n = {_n(by_dim)} at {'the other ' if decided else ''}{rest} of "
                     f"{len(mine)} (num_dim, batch size) points")
    blind = [_where(c) for c in mine if not PR.informative(comps, c.num_dim, c.batch_size)]
    if blind:
        parts.append("uninformative (CDG not shown to beat a random direction) "
                     + ("at every point" if len(blind) == len(mine) else "at " + ", ".join(blind)))
    state = "after pretraining" if pretrained else "without pretraining"
    return (f"**{label}** ([held out, hidden layers, {state}](#{_link(pretrained, sections)})): "
            + "; ".join(parts) + f" (n = {_n(by_dim)} initialisations; Holm over the section's {len(comps)} "
            "comparisons).")


def readout_finding(by_dim: Sequence[Results], pretrained: bool, sections: tuple[str, str]) -> str:
    """Where a direction that uses no data (shrink the readout) decreases the held-out loss once the
    readout is stepped too, and CDG does not beat it: the paired difference per such num_dim (a
    control; no Holm). Empty where the control decreases nothing (after pretraining, typically)."""
    by_dim = [r for r in by_dim if r.get("population")]
    parts = []
    for r in by_dim:
        sc = PR.scores(r, ALL)
        if "shrink the readout" in sc and "CDG" in sc:
            shrink = sc["shrink the readout"].estimate
            d = paired_difference(sc["shrink the readout"].per_init, sc["CDG"].per_init)
            cdg_beats_it = d.interval is not None and d.interval[1] < 0
            if shrink.interval is None or shrink.interval[0] <= 0 or cdg_beats_it:
                continue
            parts.append(f"num_dim {r['num_dim']}: {_cell(sc['shrink the readout'], False)} against CDG's "
                         f"{_cell(sc['CDG'], False)} (difference {with_interval(d.mean, d.interval)})")
    if not parts:
        return ""
    state = "after pretraining" if pretrained else "without pretraining"
    return (f"**Readout** ([{state}](#{_link(pretrained, sections)})): with the readout stepped too (the notes' step, "
            f"held out), shrinking the readout, a direction that uses no data, reaches {'; '.join(parts)} (relative "
            f"held-out decrease, n = {_n(by_dim)} initialisations). That metric measures the readout; the "
            "comparisons above step the hidden layers only.")


def run_markdown(results: Results) -> str:
    """One run's held-out block as markdown, for its notebook: the scores on the hidden layers at
    each gradient batch size, the paired comparisons and the NES diagnosis."""
    from .nes_diagnosis import HEADER, diagnose_section, diagnosis_rows

    if not results.get("population"):
        return "_No population records in these results._"
    parts = [_protocol_text([results])]
    for n in PR.batch_sizes(results):
        parts += [f"Gradient batches of {n:,} rows:", score_table([results], HIDDEN, n).source]
    parts += [c.source for c in comparison_cells([results])]
    verdicts = diagnose_section([results])
    if verdicts:
        parts += ["NES diagnosis, last hidden layer:", table(HEADER, diagnosis_rows(verdicts)).source]
    return "\n\n".join(parts)
