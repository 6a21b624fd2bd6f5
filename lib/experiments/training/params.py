"""Parameters of one training run (one ``num_dim``, pretrained or not): the single declaration of
their names, types, defaults and ranges (:mod:`lib.experiments.schema`) and the cross-field rules."""
from __future__ import annotations

from dataclasses import dataclass

from lib.common.resources import memory_problem
from lib.experiments.schema import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, STE_VARIANT, one_of, param
from lib.experiments.toy.params import StudentParams, ToyParams, pretraining

EXPERIMENT = "training"
OPTIMIZERS = ("normalized", "adam")  # lib/experiments/training/trainer.py


@dataclass
class TrainingParams(StudentParams):
    """Parameters of one training run (the notebook's ``parameters`` cell, minus ``results_path``);
    the student (the toy's: 3 hidden layers of num_dim units, binary, pretrained or not) as
    :class:`~lib.experiments.toy.params.StudentParams`."""

    batch_sizes: list[int] = param([1024], POSITIVE_INT)   # rows of each step's fresh gradient batch
    steps: int = param(100, POSITIVE_INT)                  # K: updates per training
    eval_every: int = param(10, POSITIVE_INT)              # population loss (and cosine) every this many steps
    optimizer: str = param("normalized", one_of(*OPTIMIZERS))  # the notes' per-layer-normalised step, or Adam
    lrs: list[float] = param([0.01, 0.03, 0.1], POSITIVE)  # each arm's lr is chosen among these on the tuning inits
    ste_variants: list[str] = param(["identity", "clipped", "steep", "swishsign", "polynomial"], STE_VARIANT)
    cdg_eps: list[float] = param([0.1], POSITIVE)          # one CDG arm (every hidden weight) per ε
    nes_samples: list[int] = param([500], POSITIVE_INT, may_be_empty=True)  # one NES arm per (samples, σ)
    nes_sigmas: list[float] = param([0.1], POSITIVE)
    nes_batch_sizes: list[int] = param([1024], POSITIVE_INT, may_be_empty=True)  # the batch sizes NES trains at
    large_batch_rows: int = param(0, NON_NEGATIVE_INT)     # rows of the large-batch CDG arm's batches; 0: none
    tune_inits: int = param(1, POSITIVE_INT)               # initialisations the lr and the best STE are chosen on
    eval_rows: int = param(16384, POSITIVE_INT)            # held-out rows of the population loss
    reference_rows: int = param(16000, NON_NEGATIVE_INT)   # rows of the reference CDG at each evaluation; 0: none
    reference_eps: float = param(0.1, POSITIVE)
    equivalence_margin: float = param(0.02, POSITIVE)      # "matches": |paired difference of L_K / L_0| below it

    def problems(self) -> list[tuple[str, str]]:
        """Inconsistent values, as ``(key, message)``."""
        out = super().problems()
        extra = [n for n in self.nes_batch_sizes if n not in self.batch_sizes]
        if extra:
            out.append(("nes_batch_sizes", f"{extra} not among batch_sizes {self.batch_sizes}"))
        if self.eval_every > self.steps:
            out.append(("eval_every", f"expected at most steps ({self.steps}), got {self.eval_every}"))
        if self.num_init < 2:
            out.append(("num_init", "expected at least 2 reported initialisations (the n of the intervals)"))
        return out

    def machine_problems(self) -> list[tuple[str, str]]:
        """What this machine cannot give the run, as ``(key, message)``: a writable cache folder for
        pretrained students, and memory for the largest batch of Gaussian inputs (float64)."""
        if self.cache_problems():
            return self.cache_problems()
        rows = [("batch_sizes", max(self.batch_sizes)), ("eval_rows", self.eval_rows),
                ("reference_rows", self.reference_rows), ("large_batch_rows", self.large_batch_rows)]
        if self.pretrained:
            rows.append(("pretrain_batch_size", self.pretrain_batch_size))
        key, n = max(rows, key=lambda t: t[1])
        problem = memory_problem(8 * n * self.num_dim, f"a batch of {n} × {self.num_dim} Gaussian inputs (float64)")
        return [(key, problem)] if problem else []

    def pretraining(self) -> ToyParams:
        """The toy parameters that key and run the student's pretraining (the toy's checkpoint cache:
        the reported initialisations' students are the toy's)."""
        return pretraining(self)

