"""The experiments, each a subpackage with the same small interface (docs/design.md §5): a
parameter schema (``params``), ``run(params, on_step)``, figures and a report section.

Shared by all, without torch: :mod:`~lib.experiments.schema` (parameter classes and their
checks), :mod:`~lib.experiments.registry` (the experiments the pipeline runs and the report shows),
:mod:`~lib.experiments.resume` (the steps a run has finished, saved beside its results) and
:mod:`~lib.experiments.progress` (the progress the runner shows), :mod:`~lib.experiments.records`
(selecting result records by field), :mod:`~lib.experiments.stats` (95% intervals) and
:mod:`~lib.experiments.cells` (markdown, figure and table cells of report sections).
"""
