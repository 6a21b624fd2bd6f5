"""Cells of the static report notebook: markdown, inline figures, tables.

Each experiment's report section is a list of these cells; the report builder
(:mod:`lib.report.build`) assembles the sections into an ``nbformat`` notebook and converts it
with nbconvert, code hidden; figures are embedded as base64 PNG outputs.
"""
from __future__ import annotations

import base64
import html
import io
import re
from typing import Any, Iterable, Sequence

import matplotlib.pyplot as plt
import nbformat
from nbformat import NotebookNode


# How the report names the activation precisions of lib.core.names.PRECISIONS.
PRECISION_TITLES = {"binary": "binary", "ternary": "ternary", "2bit": "2-bit", "fp": "full precision"}


def dtypes_phrase(dtypes: Iterable[str]) -> str:
    """``", in float64"`` for the dtypes a training recorded (sorted, joined by "and"); ``""`` for
    none (results from before the dtype was recorded)."""
    names = sorted(set(dtypes))
    return f", in {' and '.join(names)}" if names else ""


def md(text: str) -> NotebookNode:
    """A markdown cell."""
    return nbformat.v4.new_markdown_cell(text)


def figure(fig: "plt.Figure", alt: str = "") -> NotebookNode:
    """A code cell (no source) whose output is ``fig`` as an inline PNG; closes ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)  # the figures lay themselves out (tight_layout)
    plt.close(fig)
    data = {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": alt or "figure"}
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data=data)]
    return cell


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> NotebookNode:
    """A markdown table (cells are escaped; floats shown with 3 significant digits)."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return html.escape(str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(fmt(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return md("\n".join(lines))


def heading(level: int, english: str, original: str | None = None) -> str:
    """``### English · original`` (the original only when it differs): the notes' headings."""
    text = english if not original or original == english else f"{english} · {original}"
    return f"{'#' * level} {text}"


def slug(text: str) -> str:
    """The English part of a heading (before `` · ``) as lowercase ASCII words joined by ``-``."""
    english = html.unescape(re.sub(r"<[^>]+>", "", text)).split(" · ")[0]
    return re.sub(r"[^a-z0-9]+", "-", english.lower()).strip("-") or "section"


def anchor(*headings: str) -> str:
    """The report's id of a heading from the English of it and of the section headings above it
    (levels 3 and below), as :mod:`lib.report.anchors` assigns ids:
    ``anchor("Hyper-parameter search … - 1", "Difficulty")`` →
    ``"hyper-parameter-search-…-1--difficulty"``."""
    return "--".join(slug(h) for h in headings)


def failed_runs_note(runs: Sequence[dict[str, Any]]) -> list[NotebookNode]:
    """A note listing the runs of a section (``{id, entry, results}``) that have no results."""
    bad = [r for r in runs if r["results"] is None]
    if not bad:
        return []
    lines = [f"- `{r['id']}`: {r['entry'].get('status', '?')}: {r['entry'].get('error') or 'no results file'}"
             for r in bad]
    return [md("**Runs of this section that failed** (see the manifest):\n\n" + "\n".join(lines))]


def show(cells: Iterable[NotebookNode]) -> None:
    """Display report cells in a running notebook: markdown as Markdown, figures as their PNG."""
    from IPython.display import Image, Markdown, display

    for cell in cells:
        if cell.cell_type == "markdown":
            display(Markdown(cell.source))
        else:
            for out in cell.get("outputs", []):
                display(Image(base64.b64decode(out["data"]["image/png"])))
