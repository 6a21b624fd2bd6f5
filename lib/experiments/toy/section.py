"""The toy sections of the static report: the notes' first two sections (hyper-parameter search
without and with pretraining), re-drawn from the runs' results files."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from lib.common.files import read_json
from lib.experiments.cells import dtypes_phrase, failed_runs_note, figure, heading, md, table
from lib.experiments.stats import rank, with_interval

from . import figures as plots
from . import protocol
from . import tables
from .nes_diagnosis import HEADER as NES_HEADER
from .nes_diagnosis import RULES as NES_RULES
from .nes_diagnosis import diagnose_section, diagnosis_rows
from .population_report import population_cells, verdict_summary
from .sigma_search import HEADING as SEARCH_HEADING
from .sigma_search import search_markdown
from .sigma_tuning import sigma_searched
from .sigma_tuning_report import against_grid, against_grid_markdown, tuning_markdown
from .findings import SEARCH_1, SEARCH_2, is_pretrained, one_setting, setting_differences
from .records import params_of

# The meeting notes' headings and sentences, verbatim, beside their English.
H_SEARCH_1 = (SEARCH_1, "搜索超参(epsilon for CDG & sigma for NES) - 1")
H_SEARCH_2 = (SEARCH_2, "搜索超参(epsilon for CDG & sigma for NES) - 2")
H_SETTING = ("Setting", "实验设置")
H_DIFFICULTY = ("Difficulty", "困难")
H_QUESTION = ("Question", "问题")
QUESTION = "NES grad似乎不能指向loss下降的方向"
NOTES_SETTING_1 = ["沿用BinaryDuo上实验设置（2 models / gaussian data）；", "没有预训练，简单检查超参对CDG/NES的影响。"]
NOTES_SETTING_2 = ["沿用BinaryDuo上实验设置（2 models / gaussian data）；",
                   "进行了预训练，使用2000个(16000, num_dim)~N(0, 1)的数据将evaluate_model训练到基本收敛(loss不再出现明显下降)。"]
NOTES_DIFFICULTY = ("NES的超参sigma搜索起来代价太大（花费时间太长），而CDG的超参epsilon在Toy model上搜索较快，可饱和搜索，"
                    "因此希望CDG的表现持续弱于某一NES的表现（这样就不用搜索NES超参的最佳值了）。")


def toy_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every toy results file (``experiment == "toy"``) in ``results_dir``, by (pretrained, num_dim)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results_dir: {str(results_dir)!r} is not a folder")
    runs = [read_json(p) for p in sorted(results_dir.glob("*.json"))]
    runs = [r for r in runs if isinstance(r, dict) and r.get("experiment") == "toy"]
    return sorted(runs, key=lambda r: (r["pretrained"], r["num_dim"]))


def _setting_cells(notes_lines: Sequence[str], ok: Sequence[dict[str, Any]]) -> list:
    cells = [md(heading(4, *H_SETTING) + "\n\n" + "\n".join(f"* {line}" for line in notes_lines))]
    if ok:
        p = params_of(ok[0])
        dims = sorted(r["num_dim"] for r in ok)
        text = (f"This run: num_dim ∈ {dims}; student and teacher: 3 hidden layers ({p.act} and "
                f"{p.teacher_act} activations) + linear readout, no bias, N(0, 1/fan_in) weights; inputs x ~ N(0, I); gradient batches of {p.batch_size} rows; "
                f"{p.num_init} initialisation(s) × {p.num_batch} batch(es); ε ∈ {p.eps_grid} (central CDG); "
                f"σ ∈ {p.sigma_grid}, samples ∈ {p.nes_samples} (antithetic, 2 loss evaluations per sample); "
                f"STE variants {p.ste_variants}; gradients normalised per {p.normalize}; "
                f"lr on a log grid {p.lr_min:g}…{p.lr_max:g} ({p.num_lr} points) refined on "
                f"{p.lr_refine} ({p.num_lr_refine} points); seed {p.seed}.")
        if p.num_init * p.num_batch == 1:
            text += (" **One initialisation × one batch per point:** no intervals, so this section shows the "
                     "structure of the results, not conclusions (the `full` profile has 3 × 3).")
        if ok[0]["pretrained"]:
            trained_in = dtypes_phrase(info["dtype"] for r in ok for info in r["pretrain"] if "dtype" in info)
            text += (f" Pretraining: {p.pretrain_steps} Adam steps (lr {p.pretrain_lr:g}, STE "
                     f"`{p.pretrain_variant}`) on fresh batches of ({p.pretrain_batch_size}, num_dim) ~ N(0, 1)"
                     f"{trained_in}.")
        cells.append(md(text))
    return cells


def _difficulty_answer(ok: Sequence[dict[str, Any]]) -> str:
    """Is CDG consistently weaker than NES (the notes' hope), on held-out rows? Per sample count,
    NES (lr cross-fitted; σ cross-fitted too, or from the σ search) against CDG at each num_dim,
    from the section's Holm-corrected comparisons; and the costs."""
    if not ok:
        return "_No successful run to answer from._"
    runs = [r for r in ok if r.get("population")]
    comps = protocol.comparisons(runs) if runs else []
    lines = []
    for s in tables.nes_samples(ok[0]):
        mine = sorted((c for c in comps if c.a == f"NES {s}" and c.b == "CDG"), key=lambda c: c.num_dim)
        if mine:
            lines.append(verdict_summary(mine))
    nes = ("NES's σ from the σ search on the tuning initialisations, its lr" if sigma_searched(ok[0])
           else "NES's σ and lr")
    answer = (f"**Measured on held-out rows** (a step on the hidden layers; {nes} and CDG's ε and lr "
              "cross-fitted; paired differences over initialisations, Holm over the section's comparisons): "
              + (". ".join(lines) or "no population records") + ".")
    cost = []
    for r in sorted(ok, key=lambda r: r["num_dim"]):
        t = r["seconds"]
        if t.get("cdg") is not None and t.get("nes") is not None:
            cost.append(f"num_dim {r['num_dim']}: CDG {t['cdg']:.3g} s per ε, NES {t['nes']:.3g} s per σ "
                        f"(all sample counts from one stream of {t['nes_samples']} directions)")
    if cost:
        answer += " Cost on this machine: " + "; ".join(cost) + "."
    return answer


def _bold(text: str, value: float | None, column_best: float) -> str:
    """``**text**`` when ``value`` is its column's highest (a number)."""
    return f"**{text}**" if rank(value) == column_best > -math.inf else text


def best_table_cells(by_dim: Sequence[dict[str, Any]]) -> list:
    """The best loss decrease per estimator and num_dim with its interval and where it is reached,
    the highest of each column in bold, and the notes on grid edges."""
    best = tables.best_by_dim(by_dim)
    dims = sorted(r["num_dim"] for r in by_dim)
    column_best = {d: max(rank(by[d].value) for by in best.values() if d in by) for d in dims}
    rows = [[name] + [_bold(with_interval(by[d].value, by[d].interval), by[d].value, column_best[d]) + f" ({by[d].at})"
                      if d in by else "–" for d in dims] for name, by in best.items()]
    n = max(b.n for by in best.values() for b in by.values())
    cells = [md(f"Best loss decrease (mean over n = {n} initialisations × batches; in brackets the 95% "
                "t-interval over them) and where it is reached; bold: the highest mean of its column "
                "(distinguishable from another only where their intervals do not overlap):" if n > 1 else
                "Best loss decrease (n = 1 initialisation × batch: no interval) and where it is reached; bold: "
                "the highest of its column:"),
             table(["estimator"] + [f"num_dim {d}" for d in dims], rows)]
    if any(tables.EDGE_MARK in v.at for by in best.values() for v in by.values()):
        cells.append(md(f"{tables.EDGE_MARK.strip()} the best ε or σ is at the edge of its grid: the true "
                        "optimum may lie outside; widen the grid in `params/toy.yaml` or `params/toy_pretrained.yaml`."))
    if any(tables.LR_EDGE_MARK in v.at for by in best.values() for v in by.values()):
        cells.append(md(f"{tables.LR_EDGE_MARK.strip()} the best learning rate is the largest of the lr grid: "
                        "a longer step might decrease the loss more; raise `lr_max` in `params/toy*.yaml`."))
    return cells


def _cosine_cells(by_dim: Sequence[dict[str, Any]]) -> list:
    """The cosines with CDG per estimator and num_dim, below CDG's noise ceiling; the STE variant
    with the highest mean of each column in bold."""
    layers = tables.ste_cosine_layers(by_dim[0])
    cos = tables.cosine_with_cdg(by_dim)
    dims = [r["num_dim"] for r in by_dim]
    column_best = {d: max((rank(by[d].mean) for name, by in cos.items() if name.startswith("STE") and d in by),
                          default=-math.inf) for d in dims}
    rows = [[name] + [("–" if d not in by else
                       _bold(by[d].text, by[d].mean, column_best[d]) if name.startswith("STE") else by[d].text)
                      for d in dims] for name, by in cos.items()]
    return [md(f"How well each estimate points where CDG (ε = {params_of(by_dim[0]).reference_eps:g}) "
               f"points: cosine over all weights, then per layer ({' / '.join(layers)}) for the STE "
               "variants; for NES at the σ with the best loss decrease, over all weights. The first row "
               "is CDG's noise ceiling at the same batch size (CDG on an independent batch against it): "
               "an STE cosine near it says more about the reference's noise than about the STE. Bold: the "
               "STE variant with the highest mean cosine of its column."),
            table(["estimator"] + [f"num_dim {d}" for d in dims], rows)]


IN_SAMPLE_NOTE = ("*The notes' plots below score each step **in-sample**, on the gradient's own batch, with every "
                  "layer stepped and the best ε, σ and lr chosen on the data scored. They reproduce the notes; "
                  "the claims of this report come from the held-out block above.*")


def _toy_block(level: int, ok: Sequence[dict[str, Any]], pretrained: bool) -> list:
    """The population block (held-out, hidden layers), then the notes' three plots, in-sample, as
    small multiples over num_dim (CDG; NES as num_dim × samples; best loss decrease → num_dim),
    then the STE variants and the cosines with CDG."""
    by_dim = sorted(ok, key=lambda r: r["num_dim"])
    cells: list = population_cells(level, by_dim, pretrained) if by_dim else []
    dims = ", ".join(f"Dim = {r['num_dim']}" for r in by_dim)
    cells.append(md(heading(level, "CDG lr-loss decrease plot")))
    cells.append(md(IN_SAMPLE_NOTE))
    if by_dim:
        cells += [md(f"Panels: {dims}. {plots.STAR_NOTE}."), figure(plots.cdg_figure(by_dim), "CDG lr-loss decrease")]
    cells.append(md(heading(level, "NES lr-loss decrease plot")))
    if by_dim:
        samples = ", ".join(f"Sample = {s}" for s in tables.nes_samples(by_dim[0]))
        cells += [md(f"Rows: {dims}; columns: {samples}. {plots.STAR_NOTE}."),
                  figure(plots.nes_figure(by_dim), "NES lr-loss decrease")]
    cells.append(md(heading(level, "best loss decrease - num_dim plot")))
    if by_dim:
        cells.append(figure(plots.best_vs_dim_figure(
            by_dim, f"best loss decrease → num_dim ({'pretrained' if pretrained else 'no pretraining'})")))
        cells += best_table_cells(by_dim)
    cells.append(md(heading(level, "STE variants against the best CDG (beyond the notes)")))
    if by_dim:
        cells.append(figure(plots.ste_figure(by_dim), "STE variants against the best CDG"))
        cells.append(md(heading(level, "Cosine with CDG (beyond the notes)")))
        cells += _cosine_cells(by_dim)
    return cells


def _question_cells(ok: Sequence[dict[str, Any]]) -> list:
    """The notes' question, answered by the held-out NES diagnosis (:mod:`.nes_diagnosis`); the
    in-sample cosines and decreases of the notes' view beside it, and the pretraining curves."""
    cells = [md(heading(4, *H_QUESTION) + f"\n\n**{QUESTION}** (NES grad does not seem to point in a "
                "loss-decreasing direction)\n\n**Diagnosis.** NES on the last hidden layer and the readout is "
                "compared with the exact gradient of the Gaussian-smoothed loss there (closed form, docs/design.md "
                f"§2), its infinite-sample limit, and that limit with CDG: {NES_RULES}.")]
    verdicts = diagnose_section(ok)
    if verdicts:
        n = min(v.exact.estimate.n for v in verdicts)
        cells += [md(f"Relative held-out decreases of a step on the last hidden layer (n = {n} initialisations, "
                     "95% intervals; differences paired):"), table(NES_HEADER, diagnosis_rows(verdicts))]
    else:
        cells.append(md("_No held-out diagnosis in these runs (`diagnose = False`, or runs that predate it)._"))
    fig = plots.diagnosis_figure(ok)
    if fig is not None:
        cells += [md("*In-sample view, the notes' (not a verdict):* NES's cosine with its limit as the samples "
                     "grow, and the in-sample loss decreases on the last two layers."), figure(fig)]
    fig = plots.pretrain_figure(ok)
    if fig is not None:
        cells.append(figure(fig))
    return cells


def report_cells(runs: Sequence[dict[str, Any]]) -> list:
    """The notes' two toy sections from the toy runs of a report folder (``{id, entry, results}``)."""
    cells: list = []
    for pretrained, h, notes in ((False, H_SEARCH_1, NOTES_SETTING_1), (True, H_SEARCH_2, NOTES_SETTING_2)):
        part = [r for r in runs if is_pretrained(r) == pretrained]
        every = [r["results"] for r in part if r["results"] is not None]
        ok = one_setting(every)
        cells.append(md(heading(3, *h)))
        cells += _setting_cells(notes, ok)
        if not pretrained:
            cells.append(md(heading(4, *H_DIFFICULTY) + f"\n\n> {NOTES_DIFFICULTY}\n\n" + _difficulty_answer(ok)))
        else:
            cells += _question_cells(ok)
        twins = against_grid(ok, every)
        search = search_markdown(ok) or "\n\n".join(filter(None, [tuning_markdown(ok), against_grid_markdown(twins)]))
        if search:
            cells.append(md(heading(4, SEARCH_HEADING) + "\n\n" + search))
        cells += failed_runs_note(part)
        if len(ok) < len(every):
            others = [r for r in every if r not in ok]
            cells.append(md(f"{len(others)} run(s) with other parameters than those shown "
                            f"({', '.join(setting_differences(ok[0], others))}) are not shown here: a section compares "
                            "runs that differ in num_dim only. They are in the run manifest"
                            + ("; grid runs of this setting serve the σ search's comparison above." if
                               twins else ".")))
        cells += _toy_block(4, ok, pretrained)
    return cells
