"""The typed records of a reference-convergence run's results file (JSON), written by :mod:`.run`
and read by :mod:`.figures` and :mod:`.section`. ``None`` in a number field is how the file
writes NaN."""
from __future__ import annotations

from typing import Optional, TypedDict

from lib.experiments.records import RunResults, parameters_of

from .params import ConvergenceParams


class CosineRecord(TypedDict):
    """One (precision, ε, N, layer, estimate) over the initialisations. ``estimate`` is
    ``{"estimator": "ste", "variant": v, "reference_batch": "same" | "independent"}`` (CDG on the
    STE's own batch, or on the other one) or ``{"estimator": "cdg", "batch": "independent"}`` (the
    noise ceiling); ``layer`` a parameter name, ``all`` or ``mean_over_layers``."""

    precision: str
    eps: float
    batch_size: int
    layer: str
    estimate: dict[str, str]
    values: list[Optional[float]]  # one per initialisation
    mean: Optional[float]
    interval: Optional[list[float]]  # 95% t-interval over the initialisations
    n: int


class ConvergenceResults(RunResults):
    """A convergence run's results file (``parameters``: ConvergenceParams)."""

    layers: list[str]              # the parameter names, front to back
    cosines: list[CosineRecord]


def params_of(results: ConvergenceResults) -> ConvergenceParams:
    """The run's parameters as :class:`ConvergenceParams` (:func:`lib.experiments.records.parameters_of`)."""
    return parameters_of(results, ConvergenceParams)
