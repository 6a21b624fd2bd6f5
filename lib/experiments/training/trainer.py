"""One training of the toy student with one arm's gradient (:mod:`.arms`).

Step ``t = 0 … K−1`` draws a fresh batch ``(x_t, y_t)`` of ``N`` rows (the same for every arm of an
initialisation: the arms are paired), estimates ``g_t`` at the current weights and updates every
parameter ``w_l`` (the hidden layers and the readout) by one of

* ``normalized`` (the notes' step): ``w_l ← w_l − lr · g_l / ‖g_l‖`` (a zero ``g_l`` leaves ``w_l``);
* ``adam``: ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``,
  ``w ← w − lr · m̂ / (√v̂ + 10⁻⁸)`` with ``m̂ = m / (1−β₁ᵗ⁺¹)``, ``v̂ = v / (1−β₂ᵗ⁺¹)``, β = (0.9, 0.999).

At every evaluation step ``t ∈ {0, e, 2e, …, K}`` the curve records the **population loss**
``L(w_t)`` on held-out rows no gradient sees, and (for ``t < K``) the **cosine** of the arm's
hidden-layer estimate ``g_t`` with the reference, CDG on an independent batch at the same weights
(the mean over hidden layers of the per-layer cosines), and the CPU seconds the estimates took so far.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from lib.core import estimators as E
from lib.core import evaluate as V
from lib.core.losses import batch_loss
from lib.experiments.toy.population import hidden_layers

from .arms import Arm, Grads, arm_gradient

BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class StepRule:
    """The update ``w ← w − lr · u(g)`` of one optimiser (module docstring)."""

    def __init__(self, optimizer: str, lr: float) -> None:
        if optimizer not in ("normalized", "adam"):
            raise ValueError(f"optimizer: expected normalized or adam, got {optimizer!r}")
        self.optimizer, self.lr, self.t = optimizer, float(lr), 0
        self.m: Grads = {}
        self.v: Grads = {}

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, grads: Grads) -> None:
        params = dict(model.named_parameters())
        if self.optimizer == "normalized":
            for n, d in V.normalize(grads, "layer").items():
                params[n].sub_(self.lr * d.to(params[n].dtype))
        else:
            b1, b2 = BETAS
            for n, g in grads.items():
                g = torch.nan_to_num(g.to(params[n].dtype), nan=0.0)
                self.m[n] = b1 * self.m.get(n, torch.zeros_like(g)) + (1 - b1) * g
                self.v[n] = b2 * self.v.get(n, torch.zeros_like(g)) + (1 - b2) * g * g
                m_hat = self.m[n] / (1 - b1 ** (self.t + 1))
                v_hat = self.v[n] / (1 - b2 ** (self.t + 1))
                params[n].sub_(self.lr * m_hat / (v_hat.sqrt() + ADAM_EPS))
        self.t += 1


@dataclass
class Evaluation:
    """What a training is scored on: the held-out rows of the population loss, and the reference's
    batches (``reference(t)``: CDG's independent batch at evaluation step ``t``; ``None``: no cosines)."""

    x: torch.Tensor
    y: torch.Tensor
    reference: BatchFn | None = None
    reference_eps: float = 0.1

    @torch.no_grad()
    def loss(self, model: torch.nn.Module) -> float:
        return float(batch_loss(model(self.x), self.y, "mse"))

    def cosine(self, model: torch.nn.Module, grads: Grads, t: int) -> float:
        """The mean over hidden layers of ``cos(g_l, CDG_l)`` with CDG on the independent batch of step ``t``."""
        if self.reference is None:
            return math.nan
        hidden = hidden_layers(model)
        xr, yr = self.reference(t)
        ref = E.cdg(model, xr, yr, eps=self.reference_eps, layers=hidden)
        by_layer = V.cosine({n: grads[n] for n in hidden}, ref)
        vals = [by_layer[n] for n in hidden if math.isfinite(by_layer[n])]
        return sum(vals) / len(vals) if vals else math.nan


@dataclass
class Curve:
    """One training's record at its evaluation steps (:func:`train`)."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)           # population loss L(w_t)
    cosine: list[float] = field(default_factory=list)         # cos(g_t, reference); NaN at t = K
    estimate_cpu_s: list[float] = field(default_factory=list)  # CPU seconds of the estimates of steps < t


def evaluation_steps(steps: int, every: int) -> list[int]:
    """``0, e, 2e, …`` and ``K`` (once)."""
    return sorted(set(range(0, steps, every)) | {steps})


def train(model: torch.nn.Module, arm: Arm, batch: BatchFn, steps: int, lr: float, optimizer: str,
          evaluation: Evaluation, eval_every: int, seed: int,
          large_batch: BatchFn | None = None) -> tuple[torch.nn.Module, Curve]:
    """Train a copy of ``model`` for ``steps`` steps with ``arm``'s gradient on ``batch(t)`` (module
    docstring); ``seed + t`` seeds step ``t``'s random directions. Returns the trained copy and its
    :class:`Curve`; ``model`` is not modified."""
    model = copy.deepcopy(model).eval()
    rule, curve, cpu = StepRule(optimizer, lr), Curve(), 0.0
    points = set(evaluation_steps(steps, eval_every))
    for t in range(steps + 1):
        grads, cpu_before = None, cpu
        if t < steps:
            x, y = batch(t)
            start = time.process_time()
            grads = arm_gradient(arm, model, x, y, seed + t, None if large_batch is None else lambda: large_batch(t))
            cpu += time.process_time() - start
        if t in points:
            curve.steps.append(t)
            curve.loss.append(evaluation.loss(model))
            curve.cosine.append(math.nan if grads is None or arm.estimator == "readout_only"
                                else evaluation.cosine(model, grads, t))
            curve.estimate_cpu_s.append(cpu_before)
        if grads is not None:
            rule.apply(model, grads)
    return model, curve
