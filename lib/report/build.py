"""The static report: ``reports/<date>/index.html``, whose headings follow the meeting notes one to
one (English heading, the notes' original heading beside it).

Built from the run manifest and the results files of the dated folder (never from notebook
outputs): each run goes to the section of its experiment (``results["experiment"]``, or the
manifest entry's for a run without results), the sections (:mod:`lib.experiments.registry`)
re-draw their figures into an ``nbformat`` notebook of markdown and figure cells
(:mod:`lib.experiments.cells`), followed by the run manifest (:mod:`lib.report.manifest`), and
nbconvert converts it with code hidden. One self-contained file: images inline, no external
links.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
from nbconvert import HTMLExporter

from lib.common.files import atomic_write_bytes, read_json
from lib.experiments.cells import heading, md
from lib.experiments.registry import EXPERIMENTS, Experiment, report_findings, report_section
from lib.report.anchors import with_contents
from lib.report.manifest import manifest_section, not_run_yet

# The meeting notes' headings, verbatim, beside their English.
NOTES_TITLE = "2021/5/17结果反馈与讨论记录"
H_FOLLOW_UP = ("Follow-up of the BinaryDuo-setting experiments", "BinaryDuo设置实验后续")


def natural_key(text: str) -> list:
    """Sort key that orders the numbers inside run ids by value: ``num_dim-8`` before ``num_dim-16``."""
    return [(0, float(part), "") if i % 2 else (1, 0.0, part)
            for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", text)) if part]


def load_runs(report_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and, for each run in it (by :func:`natural_key` of its id), ``{id, entry,
    results (or None)}``."""
    manifest = read_json(report_dir / "manifest.json")
    runs = []
    for run_id, entry in sorted(manifest.get("runs", {}).items(), key=lambda item: natural_key(item[0])):
        results = None
        path = report_dir / entry.get("results", f"results/{run_id}.json")
        if entry.get("status") == "ok" and path.is_file():
            results = read_json(path)
        runs.append({"id": run_id, "entry": entry, "results": results})
    return manifest, runs


def experiment_of(run: dict[str, Any]) -> str | None:
    """The experiment a run belongs to: its results say, else its manifest entry."""
    results = run["results"]
    if isinstance(results, dict) and results.get("experiment"):
        return results["experiment"]
    return run["entry"].get("experiment")


def newest_results(reports: str | Path, experiment: str) -> Path | None:
    """The folder with the newest results of ``experiment``: the ``results/`` of the newest dated
    report folder, or ``reports/notebooks/``, where a notebook run by hand writes; ``None`` when
    neither holds any. Newest by the modification time of the results files themselves."""
    reports = Path(reports)
    dated = sorted(p for p in reports.glob("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]") if p.is_dir())
    candidates = ([dated[-1] / "results"] if dated else []) + [reports / "notebooks"]
    found = []
    for folder in candidates:
        times = []
        for path in folder.glob("*.json") if folder.is_dir() else []:
            try:
                if read_json(path).get("experiment") == experiment:
                    times.append(path.stat().st_mtime)
            except (OSError, ValueError, AttributeError):
                continue
        if times:
            found.append((max(times), folder))
    return max(found)[1] if found else None


# ----------------------------------------------------------------------------- build

def runs_by_experiment(runs: list[dict[str, Any]]) -> list[tuple[Experiment, list[dict[str, Any]]]]:
    """The registry's experiments, in report order, each with its runs (those it has any of)."""
    grouped = [(e, [r for r in runs if experiment_of(r) == e.name]) for e in EXPERIMENTS]
    return [(e, mine) for e, mine in grouped if mine]


def findings_cells(groups: list[tuple[Experiment, list[dict[str, Any]]]]) -> list:
    """The report's opening: "Findings", each experiment's sentences (with their numbers, intervals
    and a link to the evidence) as a list; nothing when no experiment has any."""
    sentences = []
    for experiment, mine in groups:
        findings = report_findings(experiment)
        if findings:
            sentences += findings(mine)
    if not sentences:
        return []
    return [md(heading(2, "Findings") + "\n\n" + "\n".join(f"- {s}" for s in sentences))]


def report_notebook(report_dir: str | Path) -> nbformat.NotebookNode:
    """The report as a notebook of markdown and figure cells."""
    report_dir = Path(report_dir)
    manifest, runs = load_runs(report_dir)
    groups = runs_by_experiment(runs)
    nb = nbformat.v4.new_notebook()
    nb.metadata["title"] = f"How wrong is the STE? Report {manifest.get('date', report_dir.name)}"
    cells = [md(f"# How wrong is the straight-through estimator? · {NOTES_TITLE}\n\n"
                f"Report of {manifest.get('date', report_dir.name)}, generated by `./run_all.sh` "
                f"(profile `{manifest.get('profile')}`) from the results files in this folder. "
                "CDG: coordinate discrete gradient (central, step ε); NES: Gaussian-smoothing gradient "
                "(σ, antithetic samples); STE: straight-through estimators. Loss decrease = L(w) − L(w − lr·ĝ) "
                "with ĝ normalised as each section's setting states (per layer by default), mean over "
                "initialisations × batches (shaded: its 95% interval; star: best lr)."),
             *findings_cells(groups), md(heading(2, *H_FOLLOW_UP))]
    missing = not_run_yet(manifest)
    if missing:
        cells.insert(1, md(f"**Partial report:** {len(missing)} planned run(s) have not finished yet "
                           "(listed in the run manifest at the end); sections without them show what exists."))
    for experiment, mine in groups:
        section = report_section(experiment)
        if section:
            cells += section(mine)
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
    body = with_contents(body)  # unique heading ids, a table of contents before the first section
    path = report_dir / "index.html"
    atomic_write_bytes(path, body.encode("utf-8"))
    return path
