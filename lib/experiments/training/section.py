"""The "Training with each estimator" section of the static report, and its Findings sentence."""
from __future__ import annotations

from typing import Any, Sequence

from lib.experiments.cells import anchor, failed_runs_note, figure, heading, md, table
from lib.experiments.stats import with_interval

from .analysis import TARGET_SHARE, Block, Comparison, blocks, comparisons
from .figures import training_figure
from .records import Results, params_of

HEADING = "Training with each estimator (beyond the notes)"
EDGE = " †"  # an lr at the edge of the grid
VERDICT_WORDS = {"lower": "lower (trains further)", "higher": "higher (trains less far)",
                 "equivalent": "equivalent", "not distinguishable": "not distinguishable"}


def _results(runs: Sequence[dict[str, Any]]) -> list[Results]:
    return [r["results"] for r in runs if r["results"] is not None]


def setting_text(results: Sequence[Results]) -> str:
    """What was trained, how, and what n is."""
    p = params_of(results[0])
    states = sorted({params_of(r).pretrained for r in results})
    start = " and ".join("from the toy's pretrained student" if s else "from its initialisation" for s in states)
    step = ("the notes' per-layer-normalised step w ← w − lr·g/‖g‖" if p.optimizer == "normalized"
            else "Adam")
    return (f"The binary toy student (3 hidden layers of num_dim units) trained for K = {p.steps} steps by {step}, "
            f"{start}, on a fresh batch of N rows each step. "
            "The arms differ only on the hidden layers: each STE variant, CDG on every hidden weight, NES "
            f"({', '.join(map(str, p.nes_samples)) or 'none'} directions, at N ∈ {p.nes_batch_sizes}), and two "
            "controls, the readout alone (hidden layers frozen) and a fresh random hidden direction each step; the "
            "readout takes its exact gradient in every arm. Every arm of an initialisation sees the same batches and "
            f"is scored on the same {p.eval_rows} held-out rows (the population loss, L_t / L_0). Each arm's lr "
            f"(from {p.lrs}) and the best STE variant are chosen on {p.tune_inits} tuning initialisation(s) "
            f"that are never reported; n = {p.num_init} reported initialisations, 95% t-intervals over them. "
            f"The cosine of an arm's estimate is taken with CDG (ε = {p.reference_eps:g}) on an independent batch of "
            f"{p.reference_rows} rows at the arm's weights (a reference with its own noise: compare cosines between "
            "arms, not with 1). "
            "Differences are paired against the best STE, Holm-corrected over every comparison of the section; "
            f"\"equivalent\" means within ±{p.equivalence_margin:g} of L_K / L_0 (TOST). Steps to target: the "
            f"first evaluation at or below {TARGET_SHARE:.0%} of the best STE's decrease on the tuning "
            "initialisations (never reached counts K). †: the chosen lr is at the edge of the grid, so one "
            "beyond it might do better. The thin ResNet is left out: CDG over all its weights costs "
            "tens of minutes per step on a CPU.")


def block_table(b: Block, comps: Sequence[Comparison]) -> Any:
    """One (run, N): each arm's lr, L_K / L_0, its difference from the best STE with the verdict,
    its steps to target and CPU seconds per estimate."""
    by = {(c.arm, c.measure): c for c in comps if c.block is b}
    rows = []
    for a in sorted(b.arms, key=lambda a: a.estimate.mean):
        final, steps = by.get((a.arm, "final")), by.get((a.arm, "steps"))
        diff = "best STE (chosen on the tuning inits)" if final is None else \
            (f"{with_interval(final.claim.difference.mean, final.claim.difference.interval)}: "
             f"{VERDICT_WORDS[final.verdict]}, Holm p = {final.claim.p_holm:.2g}")
        mean_steps = sum(a.steps_to_target.values()) / len(a.steps_to_target)
        step_text = f"{mean_steps:.0f} ({a.reached}/{len(a.steps_to_target)} reached)"
        if steps is not None and steps.verdict in ("lower", "higher"):
            step_text += f", {'fewer' if steps.verdict == 'lower' else 'more'} than with the best STE"
        lr = f"{a.lr:g}" + (EDGE if b.at_edge(a.lr) else "")
        rows.append([a.arm.label, lr, with_interval(a.estimate.mean, a.estimate.interval), diff, step_text,
                     f"{a.cpu_per_step:.3g}"])
    return table(["arm", "lr", "L_K / L_0 (held out)", "− best STE", "steps to target", "CPU s per estimate"], rows)


def report_cells(runs: Sequence[dict[str, Any]]) -> list:
    """The section from the training runs of a report folder (``{id, entry, results}``)."""
    cells = [md(heading(3, HEADING))]
    results = _results(runs)
    if not results:
        return cells + [md("No successful training run.")] + failed_runs_note(runs)
    bs = blocks(results)
    comps = comparisons(bs, params_of(results[0]).equivalence_margin)
    cells.append(md(setting_text(results)))
    by_run = [(r, b) for r in results for b in bs
              if (b.num_dim, b.pretrained) == (params_of(r).num_dim, params_of(r).pretrained)]
    for n in sorted({b.batch_size for b in bs}):
        pairs = [(r, b) for r, b in by_run if b.batch_size == n]
        cells.append(md(heading(4, f"Batches of {n} rows")))
        cells.append(figure(training_figure(pairs, "step"), f"training, N = {n}, against step"))
        cells.append(figure(training_figure(pairs, "cpu"), f"training, N = {n}, against CPU seconds"))
        for _, b in pairs:
            c = b.correlation
            cells.append(md(f"**num_dim {b.num_dim}, {b.state}, N = {n}** (n = {len(b.arms[0].final)} "
                            f"initialisations). Does the one-step cosine with the reference predict the outcome? "
                            f"Spearman ρ over arms between the cosine at t = 0 and L_K / L_0: "
                            f"{with_interval(c.mean, c.interval)} (negative: arms better aligned at the start "
                            "end lower)."))
            cells.append(block_table(b, comps))
    return cells + failed_runs_note(runs)


def _phrase(c: Comparison) -> str:
    """``CDG ε=0.1 −0.05 [−0.08, −0.02] (lower (trains further), 9.5× the STE's CPU per estimate)``."""
    d, b = c.claim.difference, c.block
    cost = b.score(c.arm).cpu_per_step / b.score(b.best_ste).cpu_per_step
    return (f"{c.arm.label} {with_interval(d.mean, d.interval)} ({VERDICT_WORDS[c.verdict]}, "
            f"{cost:.2g}× the STE's CPU per estimate)")


def findings(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Per (state, N): CDG's and NES's final L_K / L_0 minus the best STE's, per num_dim, with the
    verdicts and their CPU per estimate against the best STE's, and whether training the hidden
    layers beats the readout-only control."""
    results = _results(runs)
    if not results:
        return []
    bs = blocks(results)
    comps = [c for c in comparisons(bs, params_of(results[0]).equivalence_margin) if c.measure == "final"]
    parts = []
    for b in bs:
        mine = [c for c in comps if c.block is b]
        refs = [c for c in mine if c.arm.estimator in ("cdg", "nes", "cdg_large")]
        frozen = next((c for c in mine if c.arm.estimator == "readout_only"), None)
        text = (f"num_dim {b.num_dim}, {b.state}, N = {b.batch_size}: " + "; ".join(_phrase(c) for c in refs))
        if frozen is not None:
            text += f"; readout only {VERDICT_WORDS[frozen.verdict].split(' (')[0]}"
        parts.append(text)
    n = min(len(b.arms[0].final) for b in bs)
    return [f"**Training with each estimator** ([section](#{anchor(HEADING)})): does the STE's mismatch cost "
            f"anything in training? The held-out L_K / L_0 after {params_of(results[0]).steps} steps, minus "
            f"the best STE variant's (chosen on other initialisations), paired, Holm over the section: "
            f"{' · '.join(parts)} (n ≥ {n} initialisations; negative: the reference trains further)."]
