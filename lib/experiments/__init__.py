"""The experiments, each a subpackage with the same small interface (docs/design.md §5).

Shared by all: :mod:`lib.experiments.resume` (the partial state a run resumes from) and
:mod:`lib.experiments.progress` (the progress the runner shows), :mod:`lib.experiments.cells`
(markdown, figure and table cells of report sections). Nothing here imports torch.
"""
