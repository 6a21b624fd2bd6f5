"""Flip-sparse CDG for a linear unit with a step activation, ``h = q(z)``, ``z = W a + b``, ``q``
binary, ternary or 2-bit (docs/design.md §7; the engine's principles are in :mod:`lib.core.engine`).

``W_ji += δ`` moves ``z_nj`` by ``δ a_ni`` (``a_ni = 1`` for the bias ``b_j``). The unit's output
changes only where ``q(z_nj)`` changes level, and then only sample ``n``'s loss changes, to the loss
of the state "unit ``j`` of sample ``n`` at level ``ℓ``", the same state for every weight of row
``j``. So, row by row:

1. **candidates**: the samples within reach of a threshold ``t`` of ``q`` (the midpoints of its
   levels), ``min_t |z_nj − t| ≤ max_d |δ_d| · max_i |a_ni|``; every other sample keeps its level
   for every weight of the row and every step;
2. **level table**: ``T[s, ℓ] = ℓ_s(h_sj ← level ℓ) − ℓ_s`` for each candidate ``s`` and each level
   (``|S_j| · L`` rows through the rest of the network, the next linear unit updated in rank one,
   ``z_next + (level − h_sj) · W_next[:, j]``), 0 at the sample's own level;
3. each coordinate: ``ΔL = (1/N) Σ_{s ∈ S_j} T[s, k(z_sj + δ a_si)]``, with ``k`` the level index
   of the quantized value: jumps over several levels are exact too.

The work is proportional to the candidates, a fraction of order ``δ`` of the batch, instead of
``N`` rows per weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .engine import rows_per_chunk, run_units
from .losses import LossSpec, per_sample_loss
from .models import LinearAct
from .quantizers import level_index, levels, quantize

_REACH_SLACK = 1e-4  # relative widening of the candidate test, so float rounding never drops a flip


@dataclass(frozen=True)
class LinearStage:
    """A linear unit ``h = q(z)``, ``z = W a + b`` of a model in place for CDG on one batch: the
    parameter ``local`` (``weight`` or ``bias``) perturbed, the cached input ``a``, pre-activation
    ``pre = z`` and output ``out = h``, the next unit ``nxt`` when it is linear (``pre_next`` its
    pre-activation, updated in rank one instead of recomputed), the units after ``unit``
    (``suffix``), and the targets ``y``, per-sample base losses and loss of the batch."""

    unit: LinearAct
    local: str
    a: torch.Tensor
    pre: torch.Tensor
    out: torch.Tensor
    nxt: LinearAct | None
    pre_next: torch.Tensor | None
    suffix: Sequence[nn.Module]
    base_losses: torch.Tensor
    y: torch.Tensor
    loss: LossSpec


@torch.no_grad()
def step_unit_changes(stage: LinearStage, coords: torch.Tensor, deltas: Sequence[float],
                      budget_mb: float) -> torch.Tensor:
    """``ΔL[d, k] = L(w + δ_d e_{c_k}) − L(w)`` for the flat coordinates ``coords`` of parameter
    ``stage.local`` of ``stage.unit`` (a step activation). Shape ``(len(deltas), len(coords))``."""
    unit, local, a, pre, out = stage.unit, stage.local, stage.a, stage.pre, stage.out
    base_losses = stage.base_losses
    precision = unit.act.precision
    if local == "weight":
        rows, cols = coords // unit.in_features, coords % unit.in_features
        reach = a.abs().amax(dim=1)
    elif local == "bias":
        rows, cols = coords, None
        reach = torch.ones(a.shape[0], dtype=a.dtype, device=a.device)
    else:  # pragma: no cover - LinearAct has only these two
        raise ValueError(f"layers: unsupported parameter {local!r} of a linear unit")
    reach = reach * (max(abs(d) for d in deltas) * (1 + _REACH_SLACK)) + _REACH_SLACK * pre.abs().amax()
    lv = quantize(torch.tensor(levels(precision), dtype=out.dtype, device=out.device), precision)
    thresholds = (lv[1:] + lv[:-1]) / 2
    result = torch.zeros(len(deltas), len(coords), dtype=base_losses.dtype, device=base_losses.device)
    for j in rows.unique().tolist():
        ks = (rows == j).nonzero(as_tuple=True)[0]
        z = pre[:, j]
        cand = ((z.unsqueeze(1) - thresholds).abs().amin(dim=1) <= reach).nonzero(as_tuple=True)[0]
        if len(cand) == 0:
            continue
        table = _level_table(stage, cand, j, lv, budget_mb)
        z_c = z[cand].unsqueeze(1)
        table.scatter_(1, level_index(z_c, precision), 0.0)  # the sample's own level: no change
        a_c = a[cand][:, cols[ks]] if cols is not None else torch.ones_like(z_c)
        for d, delta in enumerate(deltas):
            moved = level_index(torch.add(z_c, a_c, alpha=delta), precision)   # (|S_j|, K_j)
            result[d, ks] = table.gather(1, moved).sum(dim=0)
    return result / a.shape[0]


def _level_table(stage: LinearStage, cand: torch.Tensor, j: int, lv: torch.Tensor, budget_mb: float) -> torch.Tensor:
    """``T[s, ℓ] = ℓ_{cand_s}(h_j ← lv_ℓ) − ℓ_{cand_s}``, shape ``(len(cand), len(lv))``."""
    out, nxt, pre_next, suffix = stage.out, stage.nxt, stage.pre_next, stage.suffix
    base_losses, y, loss = stage.base_losses, stage.y, stage.loss
    n_levels = len(lv)
    rest = suffix[1:] if nxt is not None else suffix
    width = out.shape[1] if nxt is None else nxt.out_features
    step = max(1, rows_per_chunk(width, budget_mb, out.element_size()) // n_levels)
    table = torch.empty(len(cand), n_levels, dtype=base_losses.dtype, device=out.device)
    for s in range(0, len(cand), step):
        c = cand[s:s + step]
        if nxt is not None:
            dh = lv.unsqueeze(0) - out[c, j].unsqueeze(1)                          # (B, L)
            h = pre_next[c].unsqueeze(1) + dh.unsqueeze(2) * nxt.weight[:, j]      # (B, L, width)
            if nxt.act is not None:
                h = nxt.act(h)
        else:
            h = out[c].unsqueeze(1).repeat(1, n_levels, 1)
            h[:, :, j] = lv
        new = per_sample_loss(run_units(rest, h.reshape(-1, h.shape[-1])),
                              y[c].repeat_interleave(n_levels, dim=0), loss)
        table[s:s + step] = new.reshape(-1, n_levels) - base_losses[c].unsqueeze(1)
    return table
