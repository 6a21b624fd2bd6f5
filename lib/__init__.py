"""How wrong is the straight-through estimator? The library behind the report.

It computes the STE family and two reference gradients (the coordinate discrete gradient, CDG,
and the NES / evolution-strategies gradient) on a toy MLP and on a thin XNOR-ResNet-18, runs the
experiments over parameter grids and builds the report. The maths and protocols are in
``docs/design.md``. Layers, each a subpackage; imports point down only (tests/test_layers.py)::

    pipeline/      the command line: parameter files checked against the schemas, the grid,
      │            papermill execution, the manifest, --nice; it builds the report at the end
    report/        the static report: builder (nbconvert), manifest section
      │
    experiments/   toy/, thin_resnet/, convergence/, training/ (schema, run, figures, report section, findings),
      │            explorer/; shared: schema, registry, resume, progress, records, stats, cells
    training/      toy data, image data, STE + Adam training with a checkpoint cache
      │
    core/          quantizers, losses, models, perturbation engine, estimators, evaluation
      │
    common/        files (canonical JSON, content keys, atomic writes), versions, paths,
                   notebook stripping

``common``, ``pipeline`` and the experiments' schemas, registry and resume helper import no
torch, so parameter files are validated in seconds.

The public API, importable from here (``from lib import cdg, BinaryMLP``); each name loads its
module on first use, so ``import lib`` itself imports no torch:

* models: ``BinaryMLP`` (the toy's student and teacher), ``xnor_resnet18`` (the thin ResNet);
* estimators: ``cdg``, ``nes``, ``ste``, ``smoothed_exact`` (docs/design.md §2);
* experiments: ``run_toy`` (``ToyParams``), ``run_thin_resnet`` (``ThinResNetParams``),
  ``run_convergence`` (``ConvergenceParams``), ``run_training`` (``TrainingParams``), each returning its
  results record;
* the command line: ``ste-report`` (:mod:`lib.pipeline.cli`).
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BinaryMLP": ("lib.core.models", "BinaryMLP"),
    "xnor_resnet18": ("lib.core.resnet", "xnor_resnet18"),
    "cdg": ("lib.core.estimators", "cdg"),
    "nes": ("lib.core.estimators", "nes"),
    "ste": ("lib.core.estimators", "ste"),
    "smoothed_exact": ("lib.core.estimators", "smoothed_exact"),
    "ToyParams": ("lib.experiments.toy.params", "ToyParams"),
    "run_toy": ("lib.experiments.toy.run", "run"),
    "ThinResNetParams": ("lib.experiments.thin_resnet.params", "ThinResNetParams"),
    "run_thin_resnet": ("lib.experiments.thin_resnet.run", "run"),
    "ConvergenceParams": ("lib.experiments.convergence.params", "ConvergenceParams"),
    "run_convergence": ("lib.experiments.convergence.run", "run"),
    "TrainingParams": ("lib.experiments.training.params", "TrainingParams"),
    "run_training": ("lib.experiments.training.run", "run"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """A public name, its module imported on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'lib' has no attribute {name!r}")
    module, attr = _WHERE[name]
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
