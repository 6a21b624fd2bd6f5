"""Parameters of one toy run (docs/design.md §3): the single declaration of their names, types,
defaults and ranges (:mod:`lib.experiments.schema`), the cross-field rules, and the lr grid."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from lib.common.paths import repo_path
from lib.common.resources import folder_problem, memory_problem
from lib.experiments.schema import (DEVICE, NON_EMPTY, NON_NEGATIVE_INT, NORMALIZATION, POSITIVE, POSITIVE_INT,
                                    PRECISION, STE_VARIANT, one_of, param, validate)

EXPERIMENT = "toy"
TUNING_INIT = 500  # tuning initialisation j is initialisation TUNING_INIT + j (disjoint from the reported 0 … 499)
SIGMA_SEARCHES = ("halving", "grid")  # how a toy run finds NES's σ (lib/experiments/toy/sigma_tuning.py)
# The layers of the exact smoothed gradient (docs/design.md §2): the last hidden layer and the readout.
LAST_TWO = ("fc3.weight", "readout.weight")


@dataclass
class StudentParams:
    """The toy student an experiment starts from, shared by the toy and training experiments: its
    width, whether it is pretrained (STE + Adam from the toy's initialisation, cached by these
    values: docs/design.md §3) and how, the seed, the device, the checkpoint cache, and the tuning
    initialisations (``TUNING_INIT + j``) on which an experiment makes its choices, never reported."""

    num_dim: int = param(8, POSITIVE_INT)
    pretrained: bool = param(False)
    pretrain_steps: int = param(2000, POSITIVE_INT)
    pretrain_batch_size: int = param(16000, POSITIVE_INT)
    pretrain_lr: float = param(1e-3, POSITIVE)
    pretrain_variant: str = param("clipped", STE_VARIANT)
    seed: int = param(0, NON_NEGATIVE_INT)
    device: str = param("cpu", DEVICE)
    cache_dir: str = param("cache/pretrain", NON_EMPTY)
    num_init: int = param(3, POSITIVE_INT)    # reported initialisations (0 … num_init − 1): the n
    tune_inits: int = param(2, POSITIVE_INT)  # initialisations choices are made on, never reported

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> list[tuple[str, str]]:
        """Inconsistent values, as ``(key, message)``: the reported initialisations must stay below
        the tuning ones."""
        if self.num_init > TUNING_INIT:
            return [("num_init", f"expected at most {TUNING_INIT} (the tuning initialisations start there)")]
        return []

    def tuning_inits(self) -> list[int]:
        """The initialisations the choices are made on: ``TUNING_INIT + j``, never reported."""
        return [TUNING_INIT + j for j in range(self.tune_inits)]

    def cache_problems(self) -> list[tuple[str, str]]:
        """A pretrained student needs a writable checkpoint cache: ``[("cache_dir", why)]`` or ``[]``."""
        problem = folder_problem(repo_path(self.cache_dir)) if self.pretrained else None
        return [("cache_dir", problem)] if problem else []


@dataclass
class ToyParams(StudentParams):
    """Parameters of one toy run (the notebook's ``parameters`` cell, minus ``results_path``)."""

    act: str = param("binary", PRECISION)  # the evaluated model's (student's) activation
    teacher_act: str = param("binary", PRECISION)
    eps_grid: list[float] = param([0.01, 0.03, 0.1, 0.3, 1.0], POSITIVE)
    sigma_grid: list[float] = param([0.01, 0.03, 0.1, 0.3, 1.0], POSITIVE)
    nes_samples: list[int] = param([500, 5000, 50000], POSITIVE_INT)
    ste_variants: list[str] = param(["identity", "clipped", "steep", "swishsign", "polynomial"], STE_VARIANT)
    lr_min: float = param(1e-5, POSITIVE)
    lr_max: float = param(10.0, POSITIVE)
    num_lr: int = param(11, POSITIVE_INT)
    lr_refine: list[float] = param([1e-2, 10.0], POSITIVE)
    num_lr_refine: int = param(9, NON_NEGATIVE_INT)
    batch_size: int = param(1024, POSITIVE_INT)
    num_batch: int = param(1, POSITIVE_INT)
    normalize: str = param("layer", NORMALIZATION)
    held_out: bool = param(False)  # the notes' curves (``curves``) on a held-out batch; the population protocol always is
    eval_rows: int = param(16384, POSITIVE_INT)  # rows of each initialisation's evaluation set
    large_batch_sizes: list[int] = param([], POSITIVE_INT, may_be_empty=True)  # CDG, STE, exact smoothed only
    equivalence_margin: float = param(0.01, POSITIVE)  # "A matches B": |paired difference| of relative decreases below it
    reference_eps: float = param(0.1, POSITIVE)
    diagnose: bool = param(True)
    # halving: NES's σ per sample count found on the tuning initialisations, only it run on the
    # reported ones; grid: every σ at every sample count on every initialisation (the notes' plots)
    sigma_search: str = param("halving", one_of(*SIGMA_SEARCHES))

    def problems(self) -> list[tuple[str, str]]:
        """Inconsistent values, as ``(key, message)``."""
        out = super().problems()
        if not self.lr_min < self.lr_max:
            out.append(("lr_min", f"expected lr_min < lr_max, got {self.lr_min:g} and {self.lr_max:g}"))
        if self.diagnose and self.act != "binary":
            out.append(("diagnose", f"the exact smoothed gradient needs a binary student, got act {self.act!r}; "
                                    "set diagnose: false"))
        if self.batch_size in self.large_batch_sizes:
            out.append(("large_batch_sizes", f"batch_size {self.batch_size} is already computed with every estimator"))
        low_high = self.lr_refine
        if len(low_high) != 2 or not low_high[0] < low_high[1]:
            out.append(("lr_refine", f"expected [low, high] with low < high, got {low_high}"))
        return out

    def machine_problems(self) -> list[tuple[str, str]]:
        """What this machine cannot give the run, as ``(key, message)``: a writable cache folder
        for pretrained students, and memory for the largest tensor, a batch of Gaussian inputs
        drawn in float64 (``8 · rows · num_dim`` bytes: a gradient batch, the evaluation set, the
        pretraining batch when pretrained) or a hidden layer's weight (``4 · num_dim²`` bytes)."""
        if self.cache_problems():
            return self.cache_problems()
        tensors = [(key, 8 * rows * self.num_dim, f"a batch of {rows} × {self.num_dim} Gaussian inputs (float64)")
                   for key, rows in (("batch_size", self.batch_size), ("eval_rows", self.eval_rows),
                                     ("large_batch_sizes", max(self.large_batch_sizes, default=0)))]
        tensors.append(("num_dim", 4 * self.num_dim**2, f"a {self.num_dim} × {self.num_dim} weight (float32)"))
        if self.pretrained:
            tensors.append(("pretrain_batch_size", 8 * self.pretrain_batch_size * self.num_dim,
                            f"a pretraining batch of {self.pretrain_batch_size} × {self.num_dim} inputs (float64)"))
        key, nbytes, what = max(tensors, key=lambda t: t[1])
        problem = memory_problem(nbytes, what)
        return [(key, problem)] if problem else []

    def lrs(self) -> list[float]:
        """The log grid ``lr_min … lr_max`` (``num_lr`` points) merged with the refinement grid
        (``num_lr_refine`` log-spaced points on ``lr_refine``), sorted, duplicates removed."""
        grid = np.geomspace(self.lr_min, self.lr_max, self.num_lr)
        if self.num_lr_refine > 0:
            grid = np.concatenate([grid, np.geomspace(self.lr_refine[0], self.lr_refine[1], self.num_lr_refine)])
        return sorted({float(f"{v:.6g}") for v in grid})


def pretraining(source: object) -> ToyParams:
    """The toy parameters that key and run the pretraining of ``source``'s student (the toy's
    checkpoint cache, :func:`lib.experiments.toy.run.pretrain_student`): ``source``'s fields of
    :class:`StudentParams` (those it has; the rest at their defaults), ``pretrained`` set."""
    shared = {f.name: getattr(source, f.name) for f in fields(StudentParams) if hasattr(source, f.name)}
    return ToyParams(**{**shared, "pretrained": True})
