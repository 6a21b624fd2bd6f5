"""The arms of the training experiment: which gradient each one steps the hidden layers with.

Every arm steps the readout with its exact gradient ``∂L/∂w_readout`` on the step's batch (no
quantizer follows the readout, so back-propagation is exact there), so the arms differ only where
the estimators do, on the hidden layers ``fc1 … fcH``:

* ``ste``: back-propagation with the surrogate derivative of ``variant``;
* ``cdg``: the central coordinate discrete gradient at step ``eps`` on every hidden weight;
* ``cdg_large``: the same on a batch of ``rows`` rows (the population-gradient proxy);
* ``nes``: the antithetic Gaussian-smoothing gradient with ``samples`` directions of scale ``sigma``
  over the hidden layers jointly, a fresh seeded stream each step;
* ``readout_only`` (control): no hidden gradient, the hidden layers stay at their start;
* ``random`` (control): a fresh ``N(0, I)`` direction per hidden layer each step, data-free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from lib.core import estimators as E
from lib.experiments.toy.population import hidden_layers

Grads = dict[str, torch.Tensor]
READOUT = "readout.weight"
CONTROLS = ("readout_only", "random")
LARGE_BATCH = 600_000  # batch index of the large-batch arm's step t: LARGE_BATCH + t


@dataclass(frozen=True)
class Arm:
    """One way of stepping the hidden layers; the fields that do not apply are left at their defaults."""

    estimator: str            # ste, cdg, cdg_large, nes, readout_only, random
    variant: str = ""         # ste
    eps: float = 0.0          # cdg, cdg_large
    rows: int = 0             # cdg_large
    samples: int = 0          # nes
    sigma: float = 0.0        # nes

    @property
    def label(self) -> str:
        """``STE clipped``, ``CDG ε=0.1``, ``CDG ε=0.1, 160000 rows``, ``NES 500, σ=0.1``, ``readout only``."""
        if self.estimator == "ste":
            return f"STE {self.variant}"
        if self.estimator == "cdg":
            return f"CDG ε={self.eps:g}"
        if self.estimator == "cdg_large":
            return f"CDG ε={self.eps:g}, {self.rows} rows"
        if self.estimator == "nes":
            return f"NES {self.samples}, σ={self.sigma:g}"
        return self.estimator.replace("_", " ")

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> "Arm":
        return Arm(**data)


def arms_for(p, batch_size: int) -> list[Arm]:
    """The arms of a :class:`~lib.experiments.training.params.TrainingParams` at ``batch_size``:
    every STE variant, CDG per ε, NES per (samples, σ) where ``batch_size`` is a NES batch size, the
    large-batch CDG (first ε) when asked, and the two controls."""
    out = [Arm("ste", variant=v) for v in p.ste_variants] + [Arm("cdg", eps=e) for e in p.cdg_eps]
    if batch_size in p.nes_batch_sizes:
        out += [Arm("nes", samples=s, sigma=sg) for s in p.nes_samples for sg in p.nes_sigmas]
    if p.large_batch_rows:
        out.append(Arm("cdg_large", eps=p.cdg_eps[0], rows=p.large_batch_rows))
    return out + [Arm(c) for c in CONTROLS]


def readout_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Grads:
    """The exact ``∂L/∂w_readout`` (back-propagation stops at the readout's input)."""
    return E.ste(model, x, y, variant="identity", layers=[READOUT])


def arm_gradient(arm: Arm, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
                 large_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None) -> Grads:
    """The arm's gradient at the model's current weights on the batch ``(x, y)``: the hidden layers
    by the arm's estimator (module docstring), the readout exact. ``seed`` draws NES's directions or
    the random direction; ``large_batch()`` gives the large-batch arm its batch."""
    hidden = hidden_layers(model)
    if arm.estimator == "ste":
        return E.ste(model, x, y, variant=arm.variant)
    out = readout_gradient(model, x, y)
    if arm.estimator == "cdg":
        out.update(E.cdg(model, x, y, eps=arm.eps, layers=hidden))
    elif arm.estimator == "cdg_large":
        xl, yl = large_batch()
        out.update(E.cdg(model, xl, yl, eps=arm.eps, layers=hidden))
    elif arm.estimator == "nes":
        out.update(E.nes(model, x, y, sigma=arm.sigma, samples=arm.samples, layers=hidden, seed=seed))
    elif arm.estimator == "random":
        gen = torch.Generator().manual_seed(int(seed))
        params = dict(model.named_parameters())
        out.update({n: torch.randn(params[n].shape, generator=gen, dtype=torch.float64).to(params[n])
                    for n in hidden})
    elif arm.estimator == "readout_only":
        params = dict(model.named_parameters())
        out.update({n: torch.zeros_like(params[n]) for n in hidden})
    else:
        raise ValueError(f"arm: unknown estimator {arm.estimator!r}")
    return out
