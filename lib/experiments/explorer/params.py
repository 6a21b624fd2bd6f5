"""The explorer's arguments (:func:`lib.experiments.explorer.compute.explore`): the single
declaration of their names, types, defaults and ranges (:mod:`lib.experiments.schema`)."""
from __future__ import annotations

from dataclasses import dataclass

from lib.experiments.schema import (NON_EMPTY, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, STE_VARIANT, param,
                                    validate)
from lib.experiments.toy.params import ToyParams, pretraining


@dataclass
class ExplorerParams:
    """One explorer update: a toy problem, one ε, one σ with ``samples`` NES directions, one STE
    ``variant``, an lr sweep, and the (cached) pretraining of its student when ``pretrained``."""

    num_dim: int = param(16, POSITIVE_INT)
    eps: float = param(0.1, POSITIVE)                     # CDG step
    sigma: float = param(0.1, POSITIVE)                   # NES smoothing
    samples: int = param(500, POSITIVE_INT)               # NES directions
    lr_min: float = param(1e-5, POSITIVE)
    lr_max: float = param(10.0, POSITIVE)
    num_lr: int = param(25, POSITIVE_INT)
    pretrained: bool = param(False)
    variant: str = param("clipped", STE_VARIANT)
    batch_size: int = param(256, POSITIVE_INT)
    seed: int = param(0, NON_NEGATIVE_INT)
    pretrain_steps: int = param(300, POSITIVE_INT)
    pretrain_batch_size: int = param(512, POSITIVE_INT)
    pretrain_lr: float = param(3e-3, POSITIVE)
    pretrain_variant: str = param("clipped", STE_VARIANT)
    cache_dir: str = param("cache/pretrain", NON_EMPTY)
    diagnose: bool = param(True)                          # NES on the last two layers against the exact gradient
    held_out: bool = param(True)                          # curves on an evaluation set, hidden layers (the report's)
    eval_rows: int = param(16384, POSITIVE_INT)           # rows of that evaluation set

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> list[tuple[str, str]]:
        """Inconsistent values, as ``(key, message)``."""
        out = []
        if not self.lr_max > self.lr_min:
            out.append(("lr_max", f"expected lr_max > lr_min = {self.lr_min!r}, got {self.lr_max!r}"))
        if self.num_lr < 2:
            out.append(("num_lr", f"expected at least 2 learning rates, got {self.num_lr}"))
        return out

    def pretraining(self) -> ToyParams:
        """The toy parameters that key and run the student's pretraining (its checkpoint cache)."""
        return pretraining(self)
