"""The perturbation engine: loss changes of many perturbed copies of one model, batched.

All models of the project are compositions of *units* (``model.units``, see :mod:`lib.models`).
The cost of CDG and NES is loss evaluations of perturbed copies of one model (DESIGN §7), so:

* the inputs of every unit are computed **once** (:func:`forward_cache`); a copy whose
  perturbation lives in unit ``u`` is evaluated from ``u`` on only;
* **CDG** (:func:`coordinate_loss_changes`): a single-weight change ``W_ji += δ`` of a linear
  unit moves pre-activation ``z_j`` by ``δ · a_i`` (``a`` = the unit's input). With a quantized
  activation the unit's output changes only on the samples whose ``q(z_j)`` changes (the
  *flips*), and the per-sample loss of every other sample is unchanged, so
  ``ΔL = (1/N) Σ_{n flipped} (ℓ'_n − ℓ_n)`` and only flipped rows go through the rest of the
  network: the work is proportional to the flips. A binary conv unit's weight
  ``W[j, c, kh, kw]`` moves output channel ``j`` by ``δ`` times input channel ``c`` shifted by
  ``(kh, kw)``; any other parameter falls back to ``torch.func.vmap`` over perturbed copies.
* **NES** (:func:`direction_losses`): ``K`` jointly perturbed copies per chunk, one batched
  pass through ``torch.func.functional_call`` under ``vmap``, from the first perturbed unit on.

Chunks are sized to a memory budget (``budget_mb``); results do not depend on it except in
floating-point summation order.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from .losses import LossSpec, per_sample_loss
from .models import LinearAct
from .quantizers import quantize

DEFAULT_BUDGET_MB = 256


# ----------------------------------------------------------------------------- structure

def units_of(model: nn.Module) -> list[nn.Module]:
    """``model.units``; ``ValueError`` when the model does not follow the units protocol."""
    units = getattr(model, "units", None)
    if units is None:
        raise ValueError("model: expected a model with a `units` list (see lib.models)")
    return list(units)


@dataclass(frozen=True)
class ParamLocation:
    """Where parameter ``name`` of the model lives: unit index and its name inside the unit."""

    name: str
    unit: int
    local: str


def locate_parameters(model: nn.Module) -> dict[str, ParamLocation]:
    """``{model parameter name: ParamLocation}`` for every parameter of every unit."""
    owner: dict[int, tuple[int, str]] = {}
    for u, unit in enumerate(units_of(model)):
        for local, p in unit.named_parameters():
            owner.setdefault(id(p), (u, local))
    out: dict[str, ParamLocation] = {}
    for name, p in model.named_parameters():
        if id(p) not in owner:
            raise ValueError(f"model: parameter {name!r} belongs to no unit")
        u, local = owner[id(p)]
        out[name] = ParamLocation(name, u, local)
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate with BatchNorm in eval mode (every sample independent), restoring the mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def forward_cache(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``[x, u_0(x), u_1(u_0(x)), …]``: the input of every unit and, last, the output."""
    xs = [x]
    for unit in units_of(model):
        xs.append(unit(xs[-1]))
    return xs


def run_units(units: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
    """Apply ``units`` in order to ``h``."""
    for unit in units:
        h = unit(h)
    return h


def _rows_per_chunk(row_numel: int, budget_mb: float, itemsize: int) -> int:
    return max(1, int(budget_mb * 2**20 / max(1, row_numel * itemsize * 4)))


# ----------------------------------------------------------------------------- CDG

@torch.no_grad()
def coordinate_loss_changes(
    model: nn.Module,
    cache: list[torch.Tensor],
    base_losses: torch.Tensor,
    y: torch.Tensor,
    loss: LossSpec,
    loc: ParamLocation,
    coords: torch.Tensor,
    delta: float,
    budget_mb: float = DEFAULT_BUDGET_MB,
) -> torch.Tensor:
    """``ΔL_k = L(w + δ e_{c_k}) − L(w)`` for the flat coordinates ``coords`` of one parameter.

    ``cache`` is :func:`forward_cache` of the model on the batch, ``base_losses`` the per-sample
    losses ``ℓ_n`` of the unperturbed model. Returns a tensor of shape ``(len(coords),)``.
    """
    units = units_of(model)
    unit = units[loc.unit]
    suffix = units[loc.unit + 1:]
    a, out = cache[loc.unit], cache[loc.unit + 1]
    n = a.shape[0]
    result = torch.zeros(len(coords), dtype=base_losses.dtype, device=base_losses.device)

    if isinstance(unit, LinearAct):
        step = _rows_per_chunk(n, budget_mb, a.element_size())
        for start in range(0, len(coords), step):
            chunk = coords[start:start + step]
            result[start:start + len(chunk)] = _linear_unit_changes(
                unit, loc.local, a, out, suffix, base_losses, y, loss, chunk, delta, budget_mb)
        return result

    conv_parts = _conv_unit_parts(unit, loc.local)
    row_numel = out[0].numel()
    step = _rows_per_chunk(n * row_numel, budget_mb, a.element_size())
    for start in range(0, len(coords), step):
        chunk = coords[start:start + step]
        if conv_parts is not None:
            perturbed = _conv_unit_outputs(unit, a, out, chunk, delta)
        else:
            perturbed = _generic_unit_outputs(unit, loc.local, a, chunk, delta)
        result[start:start + len(chunk)] = _suffix_changes(
            perturbed, out, suffix, base_losses, y, loss, budget_mb)
    return result


def _linear_unit_changes(unit: LinearAct, local: str, a: torch.Tensor, out: torch.Tensor,
                         suffix: Sequence[nn.Module], base_losses: torch.Tensor, y: torch.Tensor,
                         loss: LossSpec, coords: torch.Tensor, delta: float,
                         budget_mb: float) -> torch.Tensor:
    """Flip-sparse CDG for ``h' = q(W a + b)``: only rows whose output unit ``j`` changes."""
    if local == "weight":
        j = coords // unit.in_features
        i = coords % unit.in_features
        shift = delta * a[:, i]                                    # (N, K)
    elif local == "bias":
        j = coords
        shift = torch.full((a.shape[0], len(coords)), delta, dtype=a.dtype, device=a.device)
    else:  # pragma: no cover - LinearAct has only these two
        raise ValueError(f"layers: unsupported parameter {local!r} of a linear unit")
    pre = torch.nn.functional.linear(a, unit.weight, unit.bias)  # (N, out)
    z_new = pre[:, j] + shift                                       # (N, K)
    if unit.act is None:
        h_new = z_new
        changed = shift != 0
    else:
        h_new = quantize(z_new, unit.act.precision)
        changed = h_new != out[:, j]
    rows_n, cols_k = changed.nonzero(as_tuple=True)
    result = torch.zeros(len(coords), dtype=base_losses.dtype, device=base_losses.device)
    if len(rows_n) == 0:
        return result
    width = out.shape[1]
    step = _rows_per_chunk(max(width, 1), budget_mb, a.element_size())
    for s in range(0, len(rows_n), step):
        rn, ck = rows_n[s:s + step], cols_k[s:s + step]
        rows = out[rn].clone()
        rows[torch.arange(len(rn), device=rows.device), j[ck]] = h_new[rn, ck]
        new_losses = per_sample_loss(run_units(suffix, rows), y[rn], loss)
        result.index_add_(0, ck, new_losses - base_losses[rn])
    return result / a.shape[0]


def _conv_unit_parts(unit: nn.Module, local: str):
    """The binary conv unit's pieces when ``local`` is its full-precision conv weight, else None."""
    conv = getattr(unit, "conv", None)
    if conv is None or not hasattr(unit, "parts") or local != "conv.weight":
        return None
    if type(conv) is not nn.Conv2d or conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1):
        return None  # XNOR weights or exotic convs: exact but slower generic path
    return conv


def _conv_unit_outputs(unit: nn.Module, x: torch.Tensor, out: torch.Tensor,
                       coords: torch.Tensor, delta: float) -> torch.Tensor:
    """Outputs ``(K, N, C, H, W)`` of a conv unit with ``W[j, c, kh, kw] += δ`` for each coordinate.

    ``out' = out + δ · (a[:, c] shifted by (kh, kw) with the conv's stride) in channel j``, with
    ``a = q(bn(x))`` the conv input.
    """
    conv: nn.Conv2d = unit.conv
    a, _ = unit.parts(x)
    cin, kh_n, kw_n = conv.weight.shape[1:]
    ph, pw = conv.padding
    sh, sw = conv.stride
    a_pad = torch.nn.functional.pad(a, (pw, pw, ph, ph))
    ho, wo = out.shape[-2:]
    j = coords // (cin * kh_n * kw_n)
    rem = coords % (cin * kh_n * kw_n)
    c, kh, kw = rem // (kh_n * kw_n), (rem % (kh_n * kw_n)) // kw_n, rem % kw_n
    perturbed = out.unsqueeze(0).repeat(len(coords), 1, 1, 1, 1)
    for k in range(len(coords)):
        window = a_pad[:, c[k], kh[k]:kh[k] + sh * (ho - 1) + 1:sh, kw[k]:kw[k] + sw * (wo - 1) + 1:sw]
        perturbed[k, :, j[k]] += delta * window
    return perturbed


def _generic_unit_outputs(unit: nn.Module, local: str, x: torch.Tensor,
                          coords: torch.Tensor, delta: float) -> torch.Tensor:
    """Outputs ``(K, …)`` of ``unit`` with parameter ``local`` perturbed at each coordinate (vmap)."""
    params = dict(unit.named_parameters())
    p = params[local]
    flat = p.detach().reshape(-1).unsqueeze(0).repeat(len(coords), 1)
    flat[torch.arange(len(coords)), coords] += delta
    stacked = flat.reshape(len(coords), *p.shape)
    buffers = dict(unit.named_buffers())

    def one(w: torch.Tensor) -> torch.Tensor:
        return functional_call(unit, ({**params, local: w}, buffers), (x,))

    return vmap(one)(stacked)


def _suffix_changes(perturbed: torch.Tensor, out: torch.Tensor, suffix: Sequence[nn.Module],
                    base_losses: torch.Tensor, y: torch.Tensor, loss: LossSpec,
                    budget_mb: float) -> torch.Tensor:
    """``ΔL_k`` from perturbed unit outputs ``(K, N, …)``: only rows that differ from ``out`` run."""
    k, n = perturbed.shape[:2]
    changed = (perturbed != out.unsqueeze(0)).reshape(k, n, -1).any(dim=-1)
    ck, rn = changed.nonzero(as_tuple=True)
    result = torch.zeros(k, dtype=base_losses.dtype, device=base_losses.device)
    step = _rows_per_chunk(out[0].numel(), budget_mb, out.element_size())
    for s in range(0, len(rn), step):
        r, c = rn[s:s + step], ck[s:s + step]
        new_losses = per_sample_loss(run_units(suffix, perturbed[c, r]), y[r], loss)
        result.index_add_(0, c, new_losses - base_losses[r])
    return result / n


# ----------------------------------------------------------------------------- NES

@torch.no_grad()
def direction_losses(
    model: nn.Module,
    cache: list[torch.Tensor],
    y: torch.Tensor,
    loss: LossSpec,
    locs: Sequence[ParamLocation],
    directions: dict[str, torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """Batch losses ``L(w + scale · u_k)`` for ``K`` joint directions, shape ``(K,)``.

    ``directions[name]`` has shape ``(K, *param.shape)``. The copies are evaluated in one
    ``vmap``-ed pass from the first perturbed unit on; earlier units come from ``cache``.
    """
    units = units_of(model)
    first = min(loc.unit for loc in locs)
    by_unit: dict[int, list[ParamLocation]] = {}
    for loc in locs:
        by_unit.setdefault(loc.unit, []).append(loc)
    model_params = dict(model.named_parameters())

    def copy_loss(perturbation: dict[str, torch.Tensor]) -> torch.Tensor:
        h = cache[first]
        for u in range(first, len(units)):
            unit = units[u]
            if u in by_unit:
                params = dict(unit.named_parameters())
                for loc in by_unit[u]:
                    params[loc.local] = model_params[loc.name] + scale * perturbation[loc.name]
                h = functional_call(unit, (params, dict(unit.named_buffers())), (h,))
            else:
                h = unit(h)
        return per_sample_loss(h, y, loss).mean()

    return vmap(copy_loss)(directions)
