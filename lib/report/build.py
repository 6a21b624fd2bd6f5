"""The static report: ``reports/<date>/index.html``, whose headings follow the meeting notes one to
one (English heading, the notes' original heading beside it).

Built from the run manifest and the results files of the dated folder (never from notebook
outputs): the figures are re-drawn by :mod:`lib.experiments.toy.figures` (toy) and :mod:`lib.experiments.thin_resnet.run`, put into
an ``nbformat`` notebook of markdown and figure cells (:mod:`lib.experiments.cells`), and converted by
nbconvert with code hidden. One self-contained file: images inline, no external links.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import nbformat
from nbconvert import HTMLExporter

from lib.common.files import atomic_write_bytes, read_json
from lib.experiments.cells import figure, md, table
from lib.experiments.toy import figures as plots
from lib.experiments.toy.run import diagnosis_text

# The meeting notes' headings, verbatim, beside their English.
NOTES_TITLE = "2021/5/17结果反馈与讨论记录"
H_FOLLOW_UP = ("Follow-up of the BinaryDuo-setting experiments", "BinaryDuo设置实验后续")
H_SEARCH_1 = ("Hyper-parameter search (epsilon for CDG & sigma for NES) - 1", "搜索超参(epsilon for CDG & sigma for NES) - 1")
H_SEARCH_2 = ("Hyper-parameter search (epsilon for CDG & sigma for NES) - 2", "搜索超参(epsilon for CDG & sigma for NES) - 2")
H_SETTING = ("Setting", "实验设置")
H_DIFFICULTY = ("Difficulty", "困难")
H_QUESTION = ("Question", "问题")
QUESTION = "NES grad似乎不能指向loss下降的方向"
NOTES_SETTING_1 = ["沿用BinaryDuo上实验设置（2 models / gaussian data）；", "没有预训练，简单检查超参对CDG/NES的影响。"]
NOTES_SETTING_2 = ["沿用BinaryDuo上实验设置（2 models / gaussian data）；",
                   "进行了预训练，使用2000个(16000, num_dim)~N(0, 1)的数据将evaluate_model训练到基本收敛(loss不再出现明显下降)。"]
NOTES_DIFFICULTY = ("NES的超参sigma搜索起来代价太大（花费时间太长），而CDG的超参epsilon在Toy model上搜索较快，可饱和搜索，"
                    "因此希望CDG的表现持续弱于某一NES的表现（这样就不用搜索NES超参的最佳值了）。")


def heading(level: int, english: str, original: str | None = None) -> str:
    """``### English · original`` (the original only when it differs)."""
    text = english if not original or original == english else f"{english} · {original}"
    return f"{'#' * level} {text}"


def load_runs(report_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and, for each run in it, ``{id, entry, results (or None)}``."""
    manifest = read_json(report_dir / "manifest.json")
    runs = []
    for run_id, entry in sorted(manifest.get("runs", {}).items()):
        results = None
        path = report_dir / entry.get("results", f"results/{run_id}.json")
        if entry.get("status") == "ok" and path.is_file():
            results = read_json(path)
        runs.append({"id": run_id, "entry": entry, "results": results})
    return manifest, runs


def latest_report_dir(reports: str | Path = "reports") -> Path:
    """The newest ``reports/<YYYY-MM-DD>`` folder; ``FileNotFoundError`` naming ``reports`` if none."""
    dated = sorted(p for p in Path(reports).glob("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]") if p.is_dir())
    if not dated:
        raise FileNotFoundError(f"reports: no dated report folder in {str(reports)!r}; run ./run_all.sh first")
    return dated[-1]


def toy_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every toy results file (``experiment == "toy"``) in ``results_dir``, by (pretrained, num_dim)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results_dir: {str(results_dir)!r} is not a folder")
    runs = [read_json(p) for p in sorted(results_dir.glob("*.json"))]
    runs = [r for r in runs if isinstance(r, dict) and r.get("experiment") == "toy"]
    return sorted(runs, key=lambda r: (r["pretrained"], r["num_dim"]))


# ----------------------------------------------------------------------------- toy sections

def _failed_note(runs: Sequence[dict[str, Any]]) -> list:
    bad = [r for r in runs if r["results"] is None]
    if not bad:
        return []
    lines = [f"- `{r['id']}`: {r['entry'].get('status', '?')}: {r['entry'].get('error') or 'no results file'}" for r in bad]
    return [md("**Runs of this section that failed** (see the manifest):\n\n" + "\n".join(lines))]


def _setting_cells(notes_lines: Sequence[str], ok: Sequence[dict[str, Any]]) -> list:
    cells = [md(heading(4, *H_SETTING) + "\n\n" + "\n".join(f"* {line}" for line in notes_lines))]
    if ok:
        p = ok[0]["parameters"]
        dims = sorted(r["num_dim"] for r in ok)
        text = (f"This run: num_dim ∈ {dims}; student and teacher: 3 binary hidden layers + linear readout, "
                f"no bias, N(0, 1/fan_in) weights; inputs x ~ N(0, I); gradient batches of {p['batch_size']} rows; "
                f"{p['num_init']} initialisation(s) × {p['num_batch']} batch(es); ε ∈ {p['eps_grid']} (central CDG); "
                f"σ ∈ {p['sigma_grid']}, samples ∈ {p['nes_samples']} (antithetic, 2 loss evaluations per sample); "
                f"STE variants {p['ste_variants']}; gradients normalised per {p['normalize']}; "
                f"lr on a log grid {p['lr_min']:g}…{p['lr_max']:g} ({p['num_lr']} points) refined on "
                f"{p['lr_refine']} ({p['num_lr_refine']} points); seed {p['seed']}.")
        if ok[0]["pretrained"]:
            text += (f" Pretraining: {p['pretrain_steps']} Adam steps (lr {p['pretrain_lr']:g}, STE "
                     f"`{p['pretrain_variant']}`) on fresh batches of ({p['pretrain_batch_size']}, num_dim) ~ N(0, 1).")
        cells.append(md(text))
    return cells


def _difficulty_answer(ok: Sequence[dict[str, Any]]) -> str:
    """Is CDG consistently weaker than one fixed NES setting (the notes' hope)? And the costs."""
    if not ok:
        return "_No successful run to answer from._"
    table_ = plots.best_by_dim(ok)
    dims = sorted(r["num_dim"] for r in ok)
    cdg = table_["CDG"]
    lines = []
    for s in plots.nes_samples(ok[0]):
        sigmas = list(ok[0]["curves"][f"nes:{s}"])
        winners = [sg for sg in sigmas
                   if all(next(r for r in ok if r["num_dim"] == d)["curves"][f"nes:{s}"][sg]["best"] > cdg[d][0]
                          for d in dims)]
        if winners:
            lines.append(f"with {s} samples, NES at σ = {', '.join(winners)} beats the best CDG at every num_dim")
        else:
            lines.append(f"with {s} samples, no single σ beats the best CDG at every num_dim")
    cost = []
    for r in sorted(ok, key=lambda r: r["num_dim"]):
        t = r.get("seconds_per_estimate", {})
        nes_key = next((k for k in t if k.startswith("nes_")), None)
        if t.get("cdg") is not None and nes_key and t.get(nes_key) is not None:
            cost.append(f"num_dim {r['num_dim']}: CDG {t['cdg']:.3g} s per ε, NES {t[nes_key]:.3g} s per σ "
                        f"(all sample counts from one stream of {nes_key[4:]} directions)")
    answer = "**Measured:** " + "; ".join(lines) + "."
    if cost:
        answer += " Cost on this machine: " + "; ".join(cost) + "."
    return answer


def _toy_block(level: int, ok: Sequence[dict[str, Any]], pretrained: bool) -> list:
    """CDG plots per num_dim, NES plots per num_dim × samples, best loss decrease → num_dim."""
    cells: list = []
    by_dim = sorted(ok, key=lambda r: r["num_dim"])
    cells.append(md(heading(level, "CDG lr-loss decrease plot")))
    for r in by_dim:
        cells += [md(heading(level + 1, f"Dim = {r['num_dim']}")), figure(plots.cdg_figure(r))]
    cells.append(md(heading(level, "NES lr-loss decrease plot")))
    for r in by_dim:
        cells.append(md(heading(level + 1, f"Dim = {r['num_dim']}")))
        for s in plots.nes_samples(r):
            cells += [md(heading(level + 2, f"Sample = {s}")), figure(plots.nes_figure(r, s))]
    cells.append(md(heading(level, "best loss decrease - num_dim plot")))
    if by_dim:
        cells.append(figure(plots.best_vs_dim_figure(
            by_dim, f"best loss decrease → num_dim ({'pretrained' if pretrained else 'no pretraining'})")))
        best = plots.best_by_dim(by_dim)
        dims = sorted(r["num_dim"] for r in by_dim)
        rows = [[name] + [f"{best[name][d][0]:.4g} ({best[name][d][1]})" if d in best[name] else "–" for d in dims]
                for name in best]
        cells.append(table(["estimator"] + [f"num_dim {d}" for d in dims], rows))
        if any(plots.EDGE_MARK in v[1] for by in best.values() for v in by.values()):
            cells.append(md(f"{plots.EDGE_MARK.strip()} the best ε or σ is at the edge of its grid: the true "
                            "optimum may lie outside; widen the grid in `params/toy.yaml` or `params/toy_pretrained.yaml`."))
        if any(plots.LR_EDGE_MARK in v[1] for by in best.values() for v in by.values()):
            cells.append(md(f"{plots.LR_EDGE_MARK.strip()} the best learning rate is the largest of the lr grid: "
                            "a longer step might decrease the loss more; raise `lr_max` in `params/toy*.yaml`."))
    cells.append(md(heading(level, "STE variants against the best CDG (beyond the notes)")))
    for r in by_dim:
        cells += [md(heading(level + 1, f"Dim = {r['num_dim']}")), figure(plots.ste_figure(r))]
    if by_dim:
        cells.append(md(heading(level, "Cosine with CDG (beyond the notes)")))
        layers = plots.ste_cosine_layers(by_dim[0])
        cos = plots.cosine_with_cdg(by_dim)
        cells.append(md(f"How well each estimate points where CDG (ε = {by_dim[0]['parameters']['reference_eps']:g}) "
                        f"points: cosine over all weights, then per layer ({' / '.join(layers)}) for the STE "
                        "variants; for NES at the σ with the best loss decrease, over all weights."))
        dims = [r["num_dim"] for r in by_dim]
        cells.append(table(["estimator"] + [f"num_dim {d}" for d in dims],
                           [[name] + [by.get(d, "–") for d in dims] for name, by in cos.items()]))
    return cells


def toy_sections(runs: Sequence[dict[str, Any]]) -> list:
    toy = [r for r in runs if r["id"].startswith("toy")]
    cells: list = []
    for pretrained, h, notes in ((False, H_SEARCH_1, NOTES_SETTING_1), (True, H_SEARCH_2, NOTES_SETTING_2)):
        part = [r for r in toy if r["entry"].get("parameters", {}).get("pretrained") == pretrained]
        ok = [r["results"] for r in part if r["results"] is not None]
        cells.append(md(heading(3, *h)))
        cells += _setting_cells(notes, ok)
        if not pretrained:
            cells.append(md(heading(4, *H_DIFFICULTY) + f"\n\n> {NOTES_DIFFICULTY}\n\n" + _difficulty_answer(ok)))
        else:
            cells.append(md(heading(4, *H_QUESTION) + f"\n\n**{QUESTION}** (NES grad does not seem to point "
                            "in a loss-decreasing direction)\n\n**Diagnosis.** NES restricted to the last hidden "
                            "layer and the readout is compared with the exact gradient of the Gaussian-smoothed "
                            "loss there (closed form, docs/design.md §2): its infinite-sample limit. *Variance*: NES far "
                            "from that limit, closer with more samples. *Smoothing bias*: the limit itself does "
                            "not go downhill as far as CDG."))
            for r in sorted(ok, key=lambda r: r["num_dim"]):
                cells.append(md(diagnosis_text(r)))
            for r in sorted(ok, key=lambda r: r["num_dim"]):
                fig = plots.diagnosis_figure(r)
                if fig is not None:
                    cells.append(figure(fig))
                fig = plots.pretrain_figure(r)
                if fig is not None:
                    cells.append(figure(fig))
        cells += _failed_note(part)
        cells += _toy_block(4, ok, pretrained)
    return cells


# ----------------------------------------------------------------------------- thin ResNet

def thin_resnet_sections(runs: Sequence[dict[str, Any]]) -> list:
    part = [r for r in runs if r["id"].startswith("thin_resnet")]
    if not part:
        return []
    ok = [r["results"] for r in part if r["results"] is not None]
    from lib.experiments.thin_resnet.section import report_cells

    return report_cells(ok) + _failed_note(part)


# ----------------------------------------------------------------------------- manifest

def not_run_yet(manifest: dict[str, Any]) -> list[str]:
    """Run ids some invocation of the runner planned but the manifest has no entry for: a grid
    interrupted (or still running) before those runs finished."""
    planned = {rid for inv in manifest.get("invocations") or [] if isinstance(inv, dict)
               for rid in inv.get("planned") or []}
    return sorted(planned - set(manifest.get("runs") or {}))


def _seed_of(entry: dict[str, Any], results: dict[str, Any] | None) -> Any:
    """The run's seed: given in its parameters, else the one its results record (the notebook's
    default), else empty."""
    given = (entry.get("parameters") or {}).get("seed")
    if given is not None or not results:
        return "" if given is None else given
    recorded = results.get("seed", (results.get("parameters") or {}).get("seed"))
    return "" if recorded is None else recorded


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "–"


def _compute_s(run: dict[str, Any]) -> float | None:
    """The run's compute time summed over its attempts, as its results file records it (a run
    resumed after an interrupt finishes with a shorter last attempt); None without results."""
    value = (run["results"] or {}).get("wall_s")
    return value if isinstance(value, (int, float)) else None


def invocation_summary(manifest: dict[str, Any]) -> str:
    """One sentence on the runner invocations that had runs to compute (a rerun that found every
    run finished is left out): how many, how many were interrupted, how many ended without a
    final record (killed without warning, or still running), and their wall time summed. Each
    invocation's ``wall_s`` is rewritten every minute while it runs, so a killed one counts up
    to its last minute."""
    worked = [i for i in manifest.get("invocations") or []
              if isinstance(i, dict) and len(i.get("planned") or []) > (i.get("cached") or 0)]
    if not worked:
        return ""
    interrupted = sum(1 for i in worked if i.get("interrupted"))
    unrecorded = sum(1 for i in worked if not i.get("interrupted")
                     and len(i.get("ran") or []) + (i.get("cached") or 0) < len(i.get("planned") or []))
    elapsed = sum(i.get("wall_s") or 0 for i in worked)
    return (f"Computed by {len(worked)} invocation(s) of the runner ({interrupted} interrupted, {unrecorded} "
            f"ended without a final record: killed without warning, or still running), {elapsed:.0f} s of "
            "wall time in all (report build excluded).")


def manifest_section(manifest: dict[str, Any], runs: Sequence[dict[str, Any]]) -> list:
    cells = [md(heading(2, "Run manifest"))]
    commit = manifest.get("git_commit") or "unknown"
    dirty = " (with uncommitted changes)" if manifest.get("git_dirty") else ""
    versions = ", ".join(f"{k} {v}" for k, v in sorted((manifest.get("versions") or {}).items()) if v)
    cells.append(md(f"Profile `{manifest.get('profile')}`, date {manifest.get('date')}, started "
                    f"{manifest.get('started')}; git commit `{commit}`{dirty}; {manifest.get('platform', '')}.\n\n"
                    f"Versions: {versions}."))
    rows = []
    for r in runs:
        e = r["entry"]
        wall, compute = e.get("wall_s"), _compute_s(r)
        seed = _seed_of(e, r["results"])
        run_commit = (e.get("git_commit") or "")[:9] + ("+" if e.get("git_dirty") else "")
        rows.append([r["id"], e.get("status", "?"), _seconds(wall), _seconds(compute),
                     seed, run_commit or "–", (e.get("params_hash") or "")[:12], e.get("error") or ""])
    n_failed = sum(1 for r in runs if r["entry"].get("status") != "ok")
    total = sum(_compute_s(r) or r["entry"].get("wall_s") or 0 for r in runs)
    summary = f"{len(runs)} runs, {n_failed} failed; total compute time {total:.0f} s. " + invocation_summary(manifest)
    cells.append(md(summary))
    cells.append(table(["run", "status", "wall time, last attempt", "compute, all attempts", "seed", "commit",
                        "params hash", "error"], rows))
    missing = not_run_yet(manifest)
    if missing:
        cells.append(md(f"**Not run yet** ({len(missing)}; rerun the same command to resume): "
                        + ", ".join(f"`{rid}`" for rid in missing) + "."))
    params_rows = []
    for r in runs:
        for k, v in sorted((r["entry"].get("parameters") or {}).items()):
            params_rows.append([r["id"], k, v])
    cells.append(md("<details><summary>All parameters of every run</summary>\n\n" +
                    table(["run", "parameter", "value"], params_rows).source + "\n\n</details>"))
    return cells


# ----------------------------------------------------------------------------- build

def report_notebook(report_dir: str | Path) -> nbformat.NotebookNode:
    """The report as a notebook of markdown and figure cells."""
    report_dir = Path(report_dir)
    manifest, runs = load_runs(report_dir)
    nb = nbformat.v4.new_notebook()
    nb.metadata["title"] = f"How wrong is the STE? Report {manifest.get('date', report_dir.name)}"
    cells = [md(f"# How wrong is the straight-through estimator? · {NOTES_TITLE}\n\n"
                f"Report of {manifest.get('date', report_dir.name)}, generated by `./run_all.sh` "
                f"(profile `{manifest.get('profile')}`) from the results files in this folder. "
                "CDG: coordinate discrete gradient (central, step ε); NES: Gaussian-smoothing gradient "
                "(σ, antithetic samples); STE: straight-through estimators. Loss decrease = L(w) − L(w − lr·ĝ) "
                "with ĝ normalised per layer, mean over initialisations × batches (shaded: ± one standard "
                "deviation; star: best lr)."),
             md(heading(2, *H_FOLLOW_UP))]
    missing = not_run_yet(manifest)
    if missing:
        cells.insert(1, md(f"**Partial report:** {len(missing)} planned run(s) have not finished yet "
                           "(listed in the run manifest at the end); sections without them show what exists."))
    cells += toy_sections(runs)
    cells += thin_resnet_sections(runs)
    cells += manifest_section(manifest, runs)
    nb.cells = cells
    return nb


_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\ssrc=\"https?://[^\"]*\"[^>]*>\s*</script>", re.I)
_REMOTE_MODULE = re.compile(r"<script type=\"module\">(?:(?!</script>).)*?https?://(?:(?!</script>).)*</script>", re.S)
_EXTERNAL_LINK = re.compile(r"<link[^>]*\shref=\"https?://[^\"]*\"[^>]*>", re.I)


def build_report(report_dir: str | Path) -> Path:
    """Write ``report_dir/index.html`` (atomically) and return its path."""
    report_dir = Path(report_dir)
    nb = report_notebook(report_dir)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    for pattern in (_EXTERNAL_SCRIPT, _EXTERNAL_LINK, _REMOTE_MODULE):  # self-contained: nothing fetched
        body = pattern.sub("", body)
    path = report_dir / "index.html"
    atomic_write_bytes(path, body.encode("utf-8"))
    return path
