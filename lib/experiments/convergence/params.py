"""Parameters of the reference-convergence experiment: the single declaration of their names,
types, defaults and ranges (:mod:`lib.experiments.schema`)."""
from __future__ import annotations

from dataclasses import dataclass

from lib.common.resources import memory_problem
from lib.core.names import PRECISIONS, STE_VARIANTS
from lib.experiments.schema import (DEVICE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, PRECISION, STE_VARIANT, one_of,
                                    param, validate)

EXPERIMENT = "convergence"


@dataclass
class ConvergenceParams:
    """Parameters of one convergence run (the notebook's ``parameters`` cell, minus ``results_path``)."""

    num_dim: int = param(32, POSITIVE_INT)                   # the toy: 3 hidden layers of num_dim units
    precisions: list[str] = param(list(PRECISIONS), PRECISION)   # the student's activation
    teacher_act: str = param("same", one_of("same", *PRECISIONS))  # "same": the student's
    eps: list[float] = param([0.1, 0.01], POSITIVE)          # CDG steps (central)
    batch_sizes: list[int] = param([1000, 10000, 100000], POSITIVE_INT)  # rows of each gradient batch
    num_init: int = param(2, POSITIVE_INT)                   # initialisations: the n of the intervals
    ste_variants: list[str] = param(list(STE_VARIANTS), STE_VARIANT)
    coords_per_layer: int = param(0, NON_NEGATIVE_INT)       # CDG coordinates per layer; 0: every weight
    seed: int = param(0, NON_NEGATIVE_INT)
    device: str = param("cpu", DEVICE)

    def __post_init__(self) -> None:
        validate(self)

    def machine_problems(self) -> list[tuple[str, str]]:
        """What this machine cannot give the run, as ``(key, message)``: memory for the largest
        tensor, a batch of Gaussian inputs drawn in float64 (``8 · max(batch_sizes) · num_dim``
        bytes) or a hidden layer's weight (``4 · num_dim²`` bytes)."""
        rows = max(self.batch_sizes)
        key, nbytes, what = max([("batch_sizes", 8 * rows * self.num_dim,
                                  f"a batch of {rows} × {self.num_dim} Gaussian inputs (float64)"),
                                 ("num_dim", 4 * self.num_dim**2, f"a {self.num_dim} × {self.num_dim} weight (float32)")],
                                key=lambda t: t[1])
        problem = memory_problem(nbytes, what)
        return [(key, problem)] if problem else []

    def teacher_of(self, precision: str) -> str:
        """The teacher's activation for a student of ``precision``."""
        return precision if self.teacher_act == "same" else self.teacher_act
