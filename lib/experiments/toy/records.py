"""The typed records of a toy run's results file (JSON), written by :mod:`.run` and read by the
report's modules (:mod:`.protocol`, :mod:`.tables`, :mod:`.figures`, :mod:`.nes_diagnosis`, …).

An *estimate* is identified by its estimator, the layers it covers and its hyper-parameters; the
notes' curve records carry those fields flattened beside their numbers, the cosine and population
records hold them as one field. ``None`` in a number field is how the file writes NaN.
"""
from __future__ import annotations

from typing import Any, Optional, TypedDict

from lib.experiments.records import RunResults, parameters_of

from .params import ToyParams
from .sigma_tuning import SigmaSearchRecord

from .population import PopulationCurves


class Estimate(TypedDict, total=False):
    """``{estimator, layers, hyper-parameters}``: ``cdg`` (``eps``), ``nes`` (``sigma``,
    ``samples``), ``ste`` (``variant``), ``smoothed_exact`` (``sigma``), the controls ``random``
    and ``shrink_readout``; ``layers`` is ``all`` or ``last_two`` (the last hidden layer and the
    readout). The noise ceiling's estimate is CDG with ``batch: independent``."""

    estimator: str
    layers: str
    eps: float
    sigma: float
    samples: int
    variant: str
    batch: str


class CurveRecord(Estimate, total=False):
    """The notes' in-sample metric of one estimate: its loss-decrease curve over the run's ``lrs``,
    mean and spread over the ``n`` initialisations × batches, the best of the mean with its lr,
    each repetition's value there (``at_best``) and the 95% t-interval of ``best``."""

    mean: list[float]
    std: list[float]
    best: Optional[float]
    best_lr: Optional[float]
    n: int
    at_best: list[float]
    interval: Optional[list[float]]


class CosineRecord(TypedDict):
    """The cosine of ``estimate`` with ``reference`` on ``layer`` (a parameter name, or ``all``)
    over the repetitions."""

    estimate: Estimate
    reference: Estimate
    layer: str
    mean: Optional[float]
    std: Optional[float]
    n: int
    values: list[Optional[float]]
    interval: Optional[list[float]]


class Pretraining(TypedDict):
    """One initialisation's pretraining: its loss curve, whether it came from the cache, the dtype
    it trained in, and the mean of the curve's last 5%."""

    init: int
    curve: list[float]
    cached: bool
    dtype: str
    final_loss: float


class BaseLoss(TypedDict):
    init: int
    loss: float


class Population(TypedDict):
    """The population protocol (:mod:`.population`): the evaluation rows per initialisation, each
    initialisation's loss on them, and the held-out decrease curves of every estimate."""

    eval_rows: int
    base_losses: list[BaseLoss]
    records: list[PopulationCurves]


class ToyResults(RunResults):
    """A toy run's results file (one ``num_dim``, pretrained or not; ``parameters``: ToyParams)."""

    num_dim: int
    pretrained: bool
    lrs: list[float]
    loss_evaluations: dict[str, Any]  # {"cdg": evaluations, "nes": [{samples, evaluations}]}
    base_loss: float
    seconds: dict[str, float]       # mean seconds: cdg, ste (per estimate), nes (per σ run), nes_step and
                                    # nes_last_two_step (a step's NES on all layers, on the diagnosis's two), sigma_search
                                    # (the search's steps together, with their students), nes_samples
    pretrain: list[Pretraining]
    curves: list[CurveRecord]
    cosines: list[CosineRecord]
    population: Population
    sigma_search: SigmaSearchRecord  # how NES's σ was found (.sigma_tuning)
    diagnosis: Optional[dict[str, Any]]  # lib.experiments.toy.diagnosis.diagnose (in-sample), or None


def params_of(results: ToyResults) -> ToyParams:
    """The run's parameters as :class:`ToyParams` (:func:`lib.experiments.records.parameters_of`)."""
    return parameters_of(results, ToyParams)
