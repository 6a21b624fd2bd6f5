"""The typed records of a training run's results file (JSON), written by :mod:`.run` and read by
:mod:`.analysis`."""
from __future__ import annotations

import math
from typing import Any, TypedDict

from lib.experiments.records import RunResults, parameters_of

from .params import TrainingParams

from .arms import Arm


class TrainingRecord(TypedDict):
    """One arm trained once: ``phase`` ``tune`` (an lr of the grid on a tuning initialisation) or
    ``report`` (the arm's chosen lr on a reported one); the curve of :class:`.trainer.Curve`."""

    phase: str
    batch_size: int
    init: int
    arm: dict[str, Any]           # Arm.to_json()
    lr: float
    steps: list[int]
    loss: list[float]             # population loss at the steps
    cosine: list[float]           # cosine with the reference at the steps (NaN: none)
    estimate_cpu_s: list[float]   # CPU seconds of the estimates before each step


class Results(RunResults):
    """A training run's results file (``parameters``: TrainingParams)."""

    records: list[TrainingRecord]
    pretrain: list[dict[str, Any]]


def arm_of(record: TrainingRecord) -> Arm:
    return Arm.from_json(record["arm"])


def number(value: float | None) -> float:
    """A value of a record as a float: ``None`` (how the results file writes NaN) is NaN."""
    return math.nan if value is None else float(value)


def relative(record: TrainingRecord) -> list[float]:
    """``L(w_t) / L(w_0)`` at the record's evaluation steps (NaN where the loss is not finite)."""
    losses = [number(v) for v in record["loss"]]
    return [v / losses[0] for v in losses]


def relative_final(record: TrainingRecord) -> float:
    """``L(w_K) / L(w_0)``: the population loss at the end over that at the start (lower is better)."""
    return relative(record)[-1]


def params_of(results: Results) -> TrainingParams:
    """The run's parameters as :class:`TrainingParams` (:func:`lib.experiments.records.parameters_of`)."""
    return parameters_of(results, TrainingParams)
