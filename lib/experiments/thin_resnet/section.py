"""The thin ResNet section of the static report (figures re-drawn from the results dicts)."""
from __future__ import annotations

import math
from typing import Any, Sequence

from lib.experiments import cells as nbcells
from lib.experiments.cells import PRECISION_TITLES, dtypes_phrase, failed_runs_note
from lib.experiments.records import select
from lib.experiments.stats import rank, with_interval

from .figures import plot_cosine, plot_decrease, plot_magnitude, plot_precisions, plot_training
from .decrease_claims import BEST_STE, CONTROL, DecreaseClaim, claims, family_scores, informative, models, ste_family
from .resolution import Projection, Resolution, projections, resolutions
from .records import params_of
from .summary import (acts_of, analysis_of, front_back, front_back_sets, layer_label, states_of,
                      summary_text)

TEACHER_TEXT = ("seeded smooth random images (8×8×3 Gaussian noise upsampled to 32×32) labelled by a seeded teacher "
                "thin ResNet (c = 8, binary activations, class-centred logits): as many independent images as "
                "asked, generated on the machine (lib/training/teacher_images.py)")
RESOLUTION_RULE = ("CDG on a batch of N images agrees with CDG on an independent batch at its noise ceiling c_CDG, "
                   "an STE variant with itself at its own c_STE; the noise-free population gradient would score "
                   "√c_CDG against CDG on the independent batch, and an STE with no error of its own, computed on "
                   "a batch, √(c_STE · c_CDG). So an STE variant's own error is resolved only where its "
                   "cross-batch cosine, cos(STE on batch A, CDG on batch B), lies below √(c_STE · c_CDG) (paired "
                   "over the coordinate sets). Where it is not, the STE–CDG disagreement is within the two "
                   "estimates' own noise. A run that did not record c_STE can only show an error not resolved "
                   "(not below √c_CDG, a higher bar).")

# The notes' heading beside its English, one level under "BinaryDuo设置实验后续" as in the notes.
HEADING = "### Thin ResNet-18 CDG gradient experiment - 1 · Thin ResNet-18 CDG grad实验 - 1"
SETTING_NOTE = ("Standard XNOR-ResNet-18 depth, initial channels 8 / 16 "
                "(标准XNOR-ResNet-18深度，但是initial channel分别设置为8/16)")


def fmt3(v: Any) -> str:
    """Three significant digits; ``–`` for no number."""
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3g}"


def setting_markdown(results: Sequence[dict[str, Any]]) -> str:
    r0 = results[0]
    p = params_of(r0)
    cs = sorted({r["initial_channels"] for r in results})
    trained_in = dtypes_phrase(a["state_info"]["dtype"] for r in results for a in r["analyses"]
                               if "dtype" in a.get("state_info", {}))
    source = {"digits": "scikit-learn's embedded digits (8×8 greyscale, upsampled to 32×32, 3 channels; no download)",
              "teacher": TEACHER_TEXT}.get(p.data_source, f"CIFAR-10 from `{p.data_source}`")
    lines = [
        "#### Setting · 实验设置",
        "",
        f"* {SETTING_NOTE}.",
        f"* Runs here: initial channels {', '.join(map(str, cs))}; activations "
        f"{', '.join(PRECISION_TITLES.get(a, a) for a in p.acts)}; "
        f"{'XNOR binary' if p.binary_weights else 'full-precision'} weights.",
        f"* Data: {source}; gradients on one batch of {p.batch_size} training images, cross-entropy, "
        "BatchNorm in eval mode (every image independent).",
        "* States: " + "; ".join(
            {"init": f"`init` = fresh weights (seed {p.seed}), BatchNorm statistics averaged over "
                     f"{p.init_bn_batches} training batches",
             "trained": f"`trained` = {p.train_epochs} epoch(s) of STE ({p.train_variant}) + Adam "
                        f"(lr {p.train_lr:g}, batch {p.train_batch_size}{trained_in}), one model per activation"}[s]
            for s in p.states) + ".",
        f"* CDG: central, ε ∈ {{{', '.join(f'{e:g}' for e in p.eps)}}}, on {p.coords_per_layer} "
        "seeded coordinates of each of the 16 binary conv weights; the STE variants "
        f"({', '.join(p.ste_variants)}) are compared on the same coordinates.",
        "* Single-layer loss decrease: first, middle and last binary layer, each estimate restricted to "
        f"that layer's sampled coordinates and normalised ({p.normalize}), lr ∈ "
        f"{{{', '.join(f'{v:g}' for v in p.lrs)}}}, on the gradient batch (in-sample)"
        + (f"; and held out, on {p.test_limit} test images, over {p.decrease_batches} more gradient batches "
           f"({', '.join(PRECISION_TITLES.get(a, a) for a in p.decrease_acts)} activations)"
           if p.held_out_batches() else "") + ".",
        "* The last binary conv feeds the classifier with no quantizer after it, so every STE variant is "
        "its exact gradient there (as on the toy's readout): its rows check CDG, they do not compare the STE.",
    ]
    return "\n".join(lines)


def report_cells(runs: Sequence[dict[str, Any]]) -> list:
    """The thin ResNet section from the thin ResNet runs of a report folder (``{id, entry,
    results}``): :func:`results_cells` of those with results, then the failed ones."""
    return results_cells([r["results"] for r in runs if r["results"] is not None]) + failed_runs_note(runs)


def results_cells(results: list[dict[str, Any]]) -> list:
    """The thin ResNet section of the static report (figures re-plotted from the results dicts)."""
    results = sorted(results, key=lambda r: (r["initial_channels"], r.get("seed", 0)))
    cells = [nbcells.md(HEADING)]
    if not results:
        cells.append(nbcells.md("No successful run of the thin ResNet experiment."))
        return cells
    cells.append(nbcells.md(setting_markdown(results)))
    fig = plot_training(results)
    if fig is not None:
        cells.append(nbcells.figure(fig, "training loss of the trained states"))
    for r in results:
        c = r["initial_channels"]
        cells.append(nbcells.md(f"#### Initial channels = {c}"))
        cells.append(nbcells.figure(plot_cosine(r), f"c={c}: cosine of CDG with STE per layer"))
        cells.append(nbcells.figure(plot_magnitude(r), f"c={c}: gradient magnitude per layer"))
        if len(acts_of(r, states_of(r)[0])) > 1:
            cells.append(nbcells.figure(plot_precisions(r), f"c={c}: cosine per precision"))
        fig = plot_decrease(r)
        if fig is not None:
            cells.append(nbcells.figure(fig, f"c={c}: single-layer loss decrease"))
    cells += resolution_cells(results) + held_out_cells(results)
    cells.append(nbcells.md("#### Summary\n\n" + summary_text(results)))
    cells += _cosine_table(results) + _decrease_table(results)
    walls = ", ".join(f"c={r['initial_channels']}: {r['wall_s']:.0f} s" for r in results)
    cells.append(nbcells.md(f"Wall time per run: {walls}."))
    return cells


def _stage_cell(fb: dict[str, tuple[float, list[float] | None]]) -> str:
    """``front / back / last / all [interval of all]``."""
    return " / ".join(fmt3(fb[k][0]) for k in ("front", "back", "last")) + " / " + with_interval(*fb["all"])


def _cosine_table(results: list[dict[str, Any]]) -> list:
    """Per (c, state, precision): CDG's noise ceiling and each STE variant's cosine with CDG,
    front / back / last / all; the STE variant with the highest mean over all layers in bold."""
    variants = results[0]["ste_variants"]
    rows = []
    for r in results:
        for state in states_of(r):
            for act in acts_of(r, state):
                ceiling = front_back(r, state, act, None) if front_back_sets(r, state, act, None) else None
                row: list[Any] = [r["initial_channels"], state, PRECISION_TITLES.get(act, act),
                                  _stage_cell(ceiling) if ceiling else "–"]
                cells = {v: front_back(r, state, act, v) for v in variants if v in r["ste_variants"]}
                top = max(cells, key=lambda v: rank(cells[v]["all"][0]), default=None)
                row += [("**" + _stage_cell(cells[v]) + "**" if v == top else _stage_cell(cells[v])) if v in cells
                        else "–" for v in variants]
                rows.append(row)
    n = max(params_of(r).coord_sets for r in results)
    return [nbcells.md(f"Cosine of CDG (ε = {results[0]['eps_main']:g}) with each STE variant: mean over "
                       "the front stage (stage 1) / mean over the back stage (stage 4 without the last "
                       "conv) / the last binary conv / all 16 layers at once, means over n = "
                       f"{n} seeded coordinate set(s), the last with its 95% interval; bold: the highest mean over all "
                       "layers. **CDG noise ceiling**: CDG on an independent batch of the same size "
                       "against CDG on the gradient batch, on the same coordinates. These STE cosines are "
                       "same-batch (they share the batch's sampling noise with CDG): whether the STE's own "
                       f"error shows is read from the cross-batch cosines (\"{RESOLUTION}\")."),
            nbcells.table(["c", "state", "activation", "CDG noise ceiling", *variants], rows)]


def _decrease_table(results: list[dict[str, Any]]) -> list:
    """Per (c, state, precision, layer): the best single-layer loss decrease of CDG (best ε) and
    of each STE variant, with its lr; empty when no run had the analysis."""
    variants = results[0]["ste_variants"]
    rows = []
    for r in results:
        for state in states_of(r):
            for act in acts_of(r, state):
                entry = analysis_of(r, state, act)
                dec = entry.get("decrease", [])
                for layer in (r["decrease_layers"] if dec else []):
                    cdg_best = max(select(dec, layer=layer, estimator="cdg"),
                                   key=lambda d: d["best"] if d["best"] is not None else -math.inf)
                    ste_best = {d["variant"]: d for d in select(dec, layer=layer, estimator="ste")}
                    row = [r["initial_channels"], state, PRECISION_TITLES.get(act, act), layer_label(r, layer),
                           f"{with_interval(cdg_best['best'], cdg_best.get('interval'))} (ε={cdg_best['eps']:g}, "
                           f"lr={lr_text(r, cdg_best['best_lr'])})"]
                    for v in variants:
                        d = ste_best.get(v)
                        row.append(f"{with_interval(d['best'], d.get('interval'))} (lr={lr_text(r, d['best_lr'])})"
                                   if d else "–")
                    rows.append(row)
    if not rows:
        return []
    return [nbcells.md("In-sample (on the gradient batch, the notes' measurement): the best single-layer loss "
                       "decrease over the lr grid, of the mean curve over the coordinate sets, with the 95% interval "
                       "of the sets' values at that lr (and the lr; † = at the edge of the grid, so the best may lie "
                       "outside it). The ε, the lr and the variant are chosen on the data scored, and the sets share "
                       "one model and one batch: a description, not a comparison (the held-out comparison is above)."),
            nbcells.table(["c", "state", "activation", "layer", "CDG (best ε)", *variants], rows)]


def lr_text(result: dict[str, Any], lr: Any) -> str:
    """An lr of the grid, marked † at the grid's edge."""
    if lr is None:
        return "–"
    edge = lr in (min(result["lrs"]), max(result["lrs"]))
    return f"{lr:.3g}{'†' if edge else ''}"


def findings(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Whether the reference resolves the STE's error, binary activations, per initial width and
    state (:mod:`.resolution`), naming the data and the batch size."""
    results = sorted((r["results"] for r in runs if r["results"] is not None), key=lambda r: r["initial_channels"])
    everywhere = [v for v in resolutions(results) if v.act == "binary"]
    found = [v for v in everywhere if v.batch_size == results[0]["data"]["batch_size"]]
    held = held_out_finding(results)
    if not found:
        return [held] if held else []
    parts = []
    needs = {(pr.initial_channels, pr.state): pr for pr in projections(results) if pr.act == "binary"}
    for (c, state) in dict.fromkeys((v.initial_channels, v.state) for v in found):
        mine = [v for v in found if (v.initial_channels, v.state) == (c, state)]
        best = max(mine, key=lambda v: rank(v.cross.mean))
        resolved = [v.variant for v in mine if v.resolved]
        verdict = (f"resolved for {', '.join(resolved)}" if resolved else
                   "not resolved for any variant" if all(v.own is not None or v.gap.mean >= 0 for v in mine) else
                   "no verdict where the cross-batch cosine lies below √ceiling (the run did not record the STE's "
                   "own ceiling)")
        larger = sorted({v.batch_size for v in everywhere if (v.initial_channels, v.state) == (c, state)
                         and v.resolved and v.batch_size != best.batch_size})
        if larger:
            verdict += f"; resolved for some variant at N ∈ {{{', '.join(map(str, larger))}}}"
        if (c, state) in needs:
            verdict += f"; {_need_text(needs[c, state])}"
        parts.append(f"c = {c} {state}: ceiling {with_interval(best.ceiling.mean, best.ceiling.interval)}, "
                     f"√ceiling {with_interval(best.root.mean, best.root.interval)}, best cross-batch STE cosine "
                     f"{with_interval(best.cross.mean, best.cross.interval)} ({best.variant}); {verdict}")
    r0 = results[0]
    return [f"**Thin ResNet** ([can the reference tell?](#{nbcells.anchor(HEADING.lstrip('# '), RESOLUTION)})): on "
            f"{data_name(r0)}, with gradient batches of {r0['data']['batch_size']} images, binary activations, all "
            f"16 layers: {'; '.join(parts)} (n = {found[0].ceiling.n} coordinate sets of one model and one batch; "
            "paired, Holm-corrected)."] + ([held] if held else [])


RESOLUTION = "Can the reference resolve the STE's error?"


def data_name(r: dict[str, Any]) -> str:
    """The data of a run in words."""
    source = params_of(r).data_source
    return {"digits": "scikit-learn's digits (1,797 8×8 images, upsampled)",
            "teacher": "seeded images labelled by a seeded teacher thin ResNet"}.get(source, f"CIFAR-10 (`{source}`)")


def resolution_cells(results: list[dict[str, Any]]) -> list:
    """Per (c, state, precision): the noise ceiling, √ceiling and each variant's cross-batch cosine
    (against √(c_STE · c_CDG) where c_STE was recorded), ✓ where its error is resolved (:mod:`.resolution`)."""
    found = resolutions(results)
    if not found:
        return []
    variants = list(dict.fromkeys(v.variant for v in found))
    rows = []
    for key in dict.fromkeys((v.initial_channels, v.state, v.act, v.batch_size) for v in found):
        mine = {v.variant: v for v in found if (v.initial_channels, v.state, v.act, v.batch_size) == key}
        first = next(iter(mine.values()))
        rows.append([key[0], key[1], PRECISION_TITLES.get(key[2], key[2]), key[3],
                     with_interval(first.ceiling.mean, first.ceiling.interval),
                     with_interval(first.root.mean, first.root.interval)]
                    + [_cross_text(mine[v]) if v in mine else "–" for v in variants])
    return [nbcells.md(f"#### {RESOLUTION}\n\n{RESOLUTION_RULE} Data: {data_name(results[0])}; batches of N "
                       f"images (N: the gradient batch's, and `resolution_batch_sizes` with binary activations); "
                       "cosines over all 16 layers; n = "
                       f"{found[0].ceiling.n} coordinate sets of one model and one batch. Each variant: its "
                       "cross-batch cosine (vs √(c_STE · c_CDG) where c_STE was recorded); ✓: the variant's error is "
                       f"resolved (Holm over the {len(found)} tests of the section)."),
            nbcells.table(["c", "state", "activation", "N", "CDG noise ceiling", "√ceiling", *variants], rows)
            ] + projection_cells(results)


def _cross_text(v: Resolution) -> str:
    """The cross-batch cosine, against the unbiased score where the own ceiling was recorded, ✓ if resolved."""
    text = with_interval(v.cross.mean, v.cross.interval)
    if v.own is not None:
        text += f" vs {v.unbiased.mean:.3g}"
    return text + (" ✓" if v.resolved else "")


def _images(n: float) -> str:
    return "∞" if not math.isfinite(n) else f"{n:,.0f}"


def _need_text(pr: Projection) -> str:
    """``k ≥ …`` and the N and CDG time a ceiling of 0.9 needs, in words."""
    if not math.isfinite(pr.k_lower):
        return f"the ceiling at N = {pr.batch_size} is not above 0, so no N can be projected from it"
    return (f"the ceiling at N = {pr.batch_size} gives k ≥ {_images(pr.k_lower)} images, so a ceiling of 0.9 needs "
            f"batches of N ≥ {_images(pr.images_for(0.9))} (CDG on two such batches: ≥ "
            f"{pr.core_hours_for(0.9):,.1f} core-hours at this run's coordinates)")


def projection_cells(results: list[dict[str, Any]]) -> list:
    """The N a resolved answer needs (:class:`lib.experiments.thin_resnet.resolution.Projection`)."""
    found = projections(results)
    if not found:
        return []
    rows = [[pr.initial_channels, pr.state, PRECISION_TITLES.get(pr.act, pr.act), pr.batch_size,
             with_interval(pr.ceiling.mean, pr.ceiling.interval), _images(pr.k_lower), _images(pr.images_for(0.5)),
             _images(pr.images_for(0.9)), "∞" if not math.isfinite(pr.k_lower) else f"{pr.core_hours_for(0.9):,.2g}"]
            for pr in found]
    return [nbcells.md("**The N a resolved answer needs.** Two independent batches of N images agree at "
                       "ceiling(N) ≈ 1 / (1 + k/N), k = σ²d/|G|² images (the gradient's noise against its size). "
                       "The 95% upper bound c⁺ of the ceiling at the largest N measured bounds k ≥ N (1/c⁺ − 1); a "
                       "ceiling c needs N ≥ k c / (1 − c). The CDG time is this run's measured cost per coordinate "
                       "and image (one ε, central) for two batches of that N at the run's coordinates: lower bounds."),
            nbcells.table(["c", "state", "activation", "largest N", "ceiling there", "k ≥ (images)",
                           "N for ceiling 0.5", "N for ceiling 0.9", "CDG core-hours for 0.9"], rows)]


HELD_OUT = "Single-layer loss decrease on held-out images, over gradient batches"
MARKS = {"not distinguishable": "n.d.", "equivalent": "≈"}


def _mark(c: DecreaseClaim, informative_here: bool) -> str:
    """``<``, ``>``, ``≈`` or ``n.d.`` of ``a`` against ``b``, with its difference and interval."""
    verdict = MARKS.get(c.verdict, ">" if c.difference.mean > 0 else "<")
    text = f"{verdict} {with_interval(c.difference.mean, c.difference.interval)}"
    return text if informative_here else f"({text})"


def held_out_cells(results: list[dict[str, Any]]) -> list:
    """Per (c, state, precision, layer): the cross-fitted held-out decreases of CDG, the best STE and
    the random control, and each STE family against CDG (:mod:`.decrease_claims`)."""
    found = claims(results)
    if not found:
        return []
    variants = results[0]["ste_variants"]
    rows = []
    for r, state, act, held in models(results):
        for layer in r["decrease_layers"]:
            sc = family_scores(held, r["lrs"], layer)
            where = (r["initial_channels"], state, act, layer)
            mine = {(c.a, c.b): c for c in found if (c.initial_channels, c.state, c.act, c.layer) == where}
            ok = informative(found, where)
            rows.append([r["initial_channels"], state, PRECISION_TITLES.get(act, act), layer_label(r, layer),
                         sc["CDG"].text(), sc[CONTROL].text(), sc[BEST_STE].text(), _mark(mine[(BEST_STE, "CDG")], ok)]
                        + [_mark(mine[(ste_family(v), "CDG")], ok) if (ste_family(v), "CDG") in mine else "–"
                           for v in variants])
    _, _, _, held = models(results)[0]
    margin = params_of(results[0]).equivalence_margin
    return [nbcells.md(
        f"#### {HELD_OUT}\n\nThe notes' single-layer step, scored on {held['images']} held-out images that no "
        f"gradient saw, on {held['batches']} independent gradient batches of {results[0]['data']['batch_size']} "
        f"images ({held['coordinates']} sampled coordinates of the layer per batch): the relative decrease "
        "r = [L(w) − L(w − lr ĝ)] / L(w). ε, the lr and the best variant are chosen on the other batches "
        "(leave-one-batch-out cross-fitting; the choice most batches made in brackets). Columns after the "
        "scores: the paired difference against CDG over the batches with its 95% interval; < / >: Holm-corrected "
        f"over the section's {len(found)} tests; ≈: equivalent within ±{margin:g} (TOST); n.d.: not "
        f"distinguishable at n = {held['batches']}. In brackets: uninformative, CDG does not beat the random "
        "direction (a seeded Gaussian on the same coordinates) on that layer. n is gradient batches of **one "
        "model**: a verdict is about this model, not the architecture."),
        nbcells.table(["c", "state", "activation", "layer", "CDG", CONTROL, BEST_STE, "best STE − CDG",
                       *[f"{v} − CDG" for v in variants]], rows)]


def held_out_finding(results: Sequence[dict[str, Any]]) -> str | None:
    """The held-out single-layer comparison of the best STE with CDG, binary activations, in one
    sentence: the informative (model, layer)s with their verdicts, the uninformative ones listed."""
    everything = claims(results)
    found = [c for c in everything if (c.a, c.b) == (BEST_STE, "CDG") and c.act == "binary"]
    if not found:
        return None
    said, silent = [], []
    for c in found:
        r = next(r for r in results if r["initial_channels"] == c.initial_channels)
        where = f"c = {c.initial_channels} {c.state}, layer {layer_label(r, c.layer)}"
        if informative(everything, (c.initial_channels, c.state, c.act, c.layer)):
            said.append(f"{where}: {c.sentence()}")
        else:
            silent.append(where)
    if silent:
        said.append("uninformative (CDG not shown to beat the random direction on the same coordinates) at "
                    + ", ".join(silent))
    held = models(results)[0][3]
    return (f"**Thin ResNet, single-layer step held out** ([table](#{nbcells.anchor(HEADING.lstrip('# '), HELD_OUT)}),"
            f" binary activations): n = {held['batches']} gradient batches of one model, scored on {held['images']} "
            f"held-out images, cross-fitted, Holm over {len(everything)} tests: " + "; ".join(said) + ".")
