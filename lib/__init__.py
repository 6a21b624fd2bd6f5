"""How wrong is the straight-through estimator? The library behind the report.

It computes the STE family and two reference gradients (the coordinate discrete gradient, CDG,
and the NES / evolution-strategies gradient) on a toy MLP and on a thin XNOR-ResNet-18, runs the
experiments over parameter grids and builds the report. The maths and protocols are in
``docs/design.md``. Layers, each a subpackage; imports point down only::

    report/        the static report: builder (nbconvert), manifest section
      │
    pipeline/      parameter files, validation, grid, runner, manifest (no torch)
      │
    experiments/   toy/, thin_resnet/, explorer/: schema, run, figures, report section;
      │            resume (partial state, progress) and report cells shared by all
    training/      toy data, image data, STE + Adam training with a checkpoint cache
      │
    core/          quantizers, losses, models, perturbation engine, estimators, evaluation
      │
    common/        files (canonical JSON, content keys, atomic writes), versions, paths (no torch)
"""
