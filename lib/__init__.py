"""How wrong is the straight-through estimator? The library behind the report.

It computes the STE family and two reference gradients (the coordinate discrete gradient, CDG,
and the NES / evolution-strategies gradient) on a toy MLP and on a thin XNOR-ResNet-18, runs the
experiments over parameter grids and builds the report. The maths and protocols are in
``docs/design.md``. Layers, each a subpackage; imports point down only (tests/test_layers.py)::

    pipeline/      the command line: parameter files checked against the schemas, the grid,
      │            papermill execution, the manifest, --nice; it builds the report at the end
    report/        the static report: builder (nbconvert), manifest section
      │
    experiments/   toy/, thin_resnet/, convergence/ (schema, run, figures, report section, findings),
      │            explorer/; shared: schema, registry, resume, progress, records, stats, cells
    training/      toy data, image data, STE + Adam training with a checkpoint cache
      │
    core/          quantizers, losses, models, perturbation engine, estimators, evaluation
      │
    common/        files (canonical JSON, content keys, atomic writes), versions, paths,
                   notebook stripping

``common``, ``pipeline`` and the experiments' schemas, registry and resume helper import no
torch, so parameter files are validated in seconds.
"""
