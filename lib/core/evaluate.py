"""Evaluation of gradient estimates: normalisation, lr → loss-decrease curves, cosine similarity.

* normalisation ``layer``: ``ĝ_l = g_l / ‖g_l‖`` per parameter; ``global``: ``ĝ = g / ‖g‖`` over
  all; ``none``: ``ĝ = g``. NaN coordinates (unsampled CDG) count as 0.
* loss decrease ``ΔL(lr) = L(w) − L(w − lr · ĝ)`` on a batch (the gradient's batch, or a
  held-out one); positive means the step goes downhill.
* best loss decrease ``max_lr mean ΔL(lr)`` of the mean curve, with its lr.
* cosine similarity per parameter and over all, on the coordinates both estimates define.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from lib.core.names import NORMALIZATIONS

from .engine import eval_mode
from .losses import LossSpec, batch_loss, check_loss



def normalize(grads: dict[str, torch.Tensor], mode: str = "layer") -> dict[str, torch.Tensor]:
    """``ĝ`` by ``mode`` (``layer``, ``global`` or ``none``); NaN → 0; a zero gradient stays 0."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {mode!r}")
    clean = {n: torch.nan_to_num(g, nan=0.0) for n, g in grads.items()}
    if mode == "none":
        return clean
    if mode == "layer":
        return {n: g / g.norm() if g.norm() > 0 else g for n, g in clean.items()}
    total = torch.sqrt(sum((g * g).sum() for g in clean.values()))
    return {n: g / total if total > 0 else g for n, g in clean.items()}


@torch.no_grad()
def loss_decrease(model: nn.Module, x: torch.Tensor, y: torch.Tensor, grads: dict[str, torch.Tensor],
                  lrs: Sequence[float], normalize_mode: str = "layer", loss: LossSpec = "mse") -> np.ndarray:
    """``ΔL(lr) = L(w) − L(w − lr · ĝ)`` for each ``lr`` in ``lrs`` (float64 array)."""
    check_loss(loss)
    params = dict(model.named_parameters())
    unknown = [n for n in grads if n not in params]
    if unknown:
        raise ValueError(f"grads: unknown parameter name(s) {unknown}")
    if any((not np.isfinite(lr)) or lr < 0 for lr in lrs):
        raise ValueError(f"lrs: expected non-negative learning rates, got {list(lrs)}")
    direction = normalize(grads, normalize_mode)
    with eval_mode(model):
        base = batch_loss(model(x), y, loss).item()
        out = np.empty(len(lrs))
        for i, lr in enumerate(lrs):
            stepped = {**params, **{n: params[n] - lr * d.to(params[n].dtype) for n, d in direction.items()}}
            out[i] = base - batch_loss(functional_call(model, stepped, (x,)), y, loss).item()
    return out


def best_decrease(lrs: Sequence[float], curve: Sequence[float]) -> tuple[float, float]:
    """``(max ΔL, argmax lr)`` of a (mean) loss-decrease curve; NaNs ignored."""
    c = np.asarray(curve, dtype=float)
    if not np.isfinite(c).any():
        return float("nan"), float("nan")
    i = int(np.nanargmax(c))
    return float(c[i]), float(lrs[i])


def mean_and_spread(curves: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation across repetitions (initialisations × batches) of curves."""
    arr = np.asarray(curves, dtype=float)
    return arr.mean(axis=0), arr.std(axis=0)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    both = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[both], b[both]
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else float("nan")


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Cosine similarity ``a·b / (‖a‖‖b‖)`` per shared parameter and over all (``"all"``), on
    the coordinates both define (finite in both)."""
    shared = [n for n in a if n in b]
    if not shared:
        raise ValueError("cosine: the two estimates share no parameter")
    out = {n: _cos(a[n], b[n]) for n in shared}
    out["all"] = _cos(torch.cat([a[n].flatten() for n in shared]), torch.cat([b[n].flatten() for n in shared]))
    return out


def restrict(g: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``g`` on the coordinates ``like`` defines, NaN elsewhere (as unsampled CDG), for the
    parameters both have: two estimates compared on one coordinate set."""
    return {n: torch.where(torch.isfinite(like[n]), v, torch.full_like(v, float("nan")))
            for n, v in g.items() if n in like}


class HeldOutSet:
    """Loss decreases of steps on chosen layers, on one fixed evaluation set ``(x, y)``: rows the
    gradient never saw, the same for every estimate of a model, so comparisons stay paired.

    ``decrease(grads, lrs, layers)`` is ``ΔL(lr) = L(w) − L(w − lr · ĝ)`` with ``ĝ`` the
    normalised estimate restricted to ``layers`` (parameter names): every other parameter, the
    readout for a hidden-layer metric, is held. Units before the first stepped one are evaluated
    once (their output is cached), so a step on a late layer costs a late suffix only."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: LossSpec = "mse") -> None:
        check_loss(loss)
        self.model, self.y, self.loss = model, y, loss
        self.units = list(model.units)
        names = {id(m): n for n, m in model.named_modules()}
        self.unit_names = [names[id(u)] for u in self.units]
        self._inputs: dict[int, torch.Tensor] = {0: x}
        with torch.no_grad(), eval_mode(model):
            self.base = batch_loss(model(x), y, loss).item()

    def _unit_of(self, name: str) -> int:
        for k, unit_name in enumerate(self.unit_names):
            if name.startswith(unit_name + "."):
                return k
        raise ValueError(f"layers: {name!r} is no parameter of the model's units {self.unit_names}")

    @torch.no_grad()
    def _input(self, k: int) -> torch.Tensor:
        """The input of unit ``k`` at the unperturbed weights (cached)."""
        if k not in self._inputs:
            self._inputs[k] = self.units[k - 1](self._input(k - 1))
        return self._inputs[k]

    @torch.no_grad()
    def decrease(self, grads: dict[str, torch.Tensor], lrs: Sequence[float], layers: Sequence[str],
                 normalize_mode: str = "layer") -> np.ndarray:
        """``ΔL(lr)`` for each ``lr`` of a step on ``layers`` only (float64 array)."""
        missing = [n for n in layers if n not in grads]
        if missing:
            raise ValueError(f"grads: no estimate for the stepped layer(s) {missing}")
        direction = normalize({n: grads[n] for n in layers}, normalize_mode)
        first = min(self._unit_of(n) for n in layers)
        params = dict(self.model.named_parameters())
        out = np.empty(len(lrs))
        with eval_mode(self.model):
            h0 = self._input(first)
            for i, lr in enumerate(lrs):
                h = h0
                for k in range(first, len(self.units)):
                    prefix = self.unit_names[k] + "."
                    stepped = {n[len(prefix):]: params[n] - lr * d.to(params[n].dtype)
                               for n, d in direction.items() if n.startswith(prefix)}
                    h = functional_call(self.units[k], stepped, (h,)) if stepped else self.units[k](h)
                out[i] = self.base - batch_loss(h, self.y, self.loss).item()
        return out
