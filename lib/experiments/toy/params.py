"""Parameters of one toy run (docs/design.md §3): names, types and defaults, and the lr grid."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_CACHE = "cache/pretrain"
# The layers of the exact smoothed gradient (docs/design.md §2): the last hidden layer and the readout.
LAST_TWO = ("fc3.weight", "readout.weight")


@dataclass
class ToyParams:
    """Parameters of one toy run (the notebooks' ``parameters`` cell, minus ``results_path``)."""

    num_dim: int = 8
    pretrained: bool = False
    teacher_act: str = "binary"
    eps_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    sigma_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    nes_samples: list[int] = field(default_factory=lambda: [500, 5000, 50000])
    ste_variants: list[str] = field(default_factory=lambda: ["identity", "clipped", "steep", "swishsign", "polynomial"])
    lr_min: float = 1e-5
    lr_max: float = 10.0
    num_lr: int = 11
    lr_refine: list[float] = field(default_factory=lambda: [1e-2, 10.0])
    num_lr_refine: int = 9
    batch_size: int = 1024
    num_init: int = 3
    num_batch: int = 3
    normalize: str = "layer"
    held_out: bool = False
    reference_eps: float = 0.1
    diagnose: bool = True
    pretrain_steps: int = 2000
    pretrain_batch_size: int = 16000
    pretrain_lr: float = 1e-3
    pretrain_variant: str = "clipped"
    seed: int = 0
    device: str = "cpu"
    cache_dir: str = DEFAULT_CACHE

    def __post_init__(self) -> None:
        if not self.lr_min < self.lr_max:
            raise ValueError(f"lr_min: expected lr_min < lr_max, got {self.lr_min} and {self.lr_max}")
        if len(self.lr_refine) != 2 or not 0 < self.lr_refine[0] < self.lr_refine[1]:
            raise ValueError(f"lr_refine: expected [low, high] with 0 < low < high, got {self.lr_refine}")
        if not self.eps_grid or not self.sigma_grid or not self.nes_samples:
            raise ValueError("eps_grid, sigma_grid, nes_samples: expected non-empty lists")

    def lrs(self) -> list[float]:
        """The log grid ``lr_min … lr_max`` (``num_lr`` points) merged with the refinement grid
        (``num_lr_refine`` log-spaced points on ``lr_refine``), sorted, duplicates removed."""
        grid = np.geomspace(self.lr_min, self.lr_max, self.num_lr)
        if self.num_lr_refine > 0:
            grid = np.concatenate([grid, np.geomspace(self.lr_refine[0], self.lr_refine[1], self.num_lr_refine)])
        return sorted({float(f"{v:.6g}") for v in grid})
