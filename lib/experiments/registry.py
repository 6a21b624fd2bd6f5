"""The experiments the pipeline runs and the report shows, in report order.

Each experiment has a notebook (papermill runs it once per grid point; its results file records
``"experiment": <name>``), a parameter class (:mod:`lib.experiments.schema`; the pipeline
validates parameter files against it), a report section, ``report_cells(runs)`` in its
``section`` module, which builds its part of the report from its runs (``{id, entry, results}``,
see :func:`lib.report.build.load_runs`), and sentences for the report's Findings,
``findings(runs)`` in the module the table names (its own ``findings`` module, or its section). The parameter classes import no torch, and the section is
named by module path and imported only when the report is built, so the pipeline reads this
table without importing torch. A new experiment is a subpackage of :mod:`lib.experiments`, a
notebook, a params file and one line here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lib.common.paths import ROOT
from lib.experiments.convergence.params import ConvergenceParams
from lib.experiments.thin_resnet.params import ThinResNetParams
from lib.experiments.toy.params import ToyParams
from lib.experiments.training.params import TrainingParams


@dataclass(frozen=True)
class Experiment:
    name: str             # as in the results files' "experiment"
    notebook: str         # relative to the repository root (or absolute)
    schema: type          # the parameter class
    section: str | None   # module holding report_cells(runs) -> list of report cells; None: no section
    findings: str | None = None  # module holding findings(runs) -> sentences for the report's Findings


EXPERIMENTS = [
    Experiment("toy", "notebooks/toy.ipynb", ToyParams, "lib.experiments.toy.section", "lib.experiments.toy.findings"),
    Experiment("thin_resnet", "notebooks/thin_resnet.ipynb", ThinResNetParams, "lib.experiments.thin_resnet.section",
               "lib.experiments.thin_resnet.section"),
    Experiment("convergence", "notebooks/convergence.ipynb", ConvergenceParams, "lib.experiments.convergence.section",
               "lib.experiments.convergence.section"),
    Experiment("training", "notebooks/training.ipynb", TrainingParams, "lib.experiments.training.section",
               "lib.experiments.training.section"),
]


def by_notebook(notebook_path: str | Path) -> Experiment | None:
    """The experiment whose notebook is ``notebook_path`` (absolute, or relative to the root)."""
    path = (ROOT / notebook_path).resolve()
    return next((e for e in EXPERIMENTS if (ROOT / e.notebook).resolve() == path), None)


def report_section(experiment: Experiment) -> Callable[[list[dict[str, Any]]], list[Any]] | None:
    """``report_cells`` of ``experiment``; ``None`` when it has no report section."""
    return importlib.import_module(experiment.section).report_cells if experiment.section else None


def report_findings(experiment: Experiment) -> Callable[[list[dict[str, Any]]], list[str]] | None:
    """``findings`` of ``experiment`` (sentences with links to their evidence); ``None`` if it has none."""
    return importlib.import_module(experiment.findings).findings if experiment.findings else None
