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

DEFAULT_BUDGET_MB = 8  # CDG chunks: small chunks stay in cache and run fastest on CPU
NES_BUDGET_MB = 32  # NES chunks: enough perturbed copies per batched matmul


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
    deltas: Sequence[float],
    budget_mb: float = DEFAULT_BUDGET_MB,
) -> torch.Tensor:
    """``ΔL[d, k] = L(w + δ_d e_{c_k}) − L(w)`` for the flat coordinates ``coords`` of one parameter.

    ``cache`` is :func:`forward_cache` of the model on the batch, ``base_losses`` the per-sample
    losses ``ℓ_n`` of the unperturbed model. Returns a tensor of shape ``(len(deltas), len(coords))``.
    """
    units = units_of(model)
    unit = units[loc.unit]
    suffix = units[loc.unit + 1:]
    a, out = cache[loc.unit], cache[loc.unit + 1]
    n = a.shape[0]
    result = torch.zeros(len(deltas), len(coords), dtype=base_losses.dtype, device=base_losses.device)

    if isinstance(unit, LinearAct):
        nxt = suffix[0] if suffix and isinstance(suffix[0], LinearAct) else None
        pre = torch.nn.functional.linear(a, unit.weight, unit.bias)
        pre_next = None if nxt is None else torch.nn.functional.linear(out, nxt.weight, nxt.bias)
        step = _rows_per_chunk(n * len(deltas), budget_mb, a.element_size())
        if unit.act is not None and unit.act.precision == "binary":
            if loc.local == "weight":  # whole rows of W per chunk when possible
                step = max(unit.in_features, step - step % unit.in_features)
            flip_dl = _unit_flip_loss_changes(out, nxt, pre_next, suffix, base_losses, y, loss, budget_mb)
            for start in range(0, len(coords), step):
                chunk = coords[start:start + step]
                result[:, start:start + len(chunk)] = _binary_linear_changes(
                    unit, loc.local, a, pre, flip_dl, chunk, deltas)
            return result
        for start in range(0, len(coords), step):
            chunk = coords[start:start + step]
            result[:, start:start + len(chunk)] = _linear_unit_changes(
                unit, loc.local, a, pre, out, nxt, pre_next, suffix, base_losses, y, loss, chunk,
                deltas, budget_mb)
        return result

    conv_parts = _conv_unit_parts(unit, loc.local)
    row_numel = out[0].numel()
    step = _rows_per_chunk(n * row_numel, budget_mb, a.element_size())
    for d, delta in enumerate(deltas):
        for start in range(0, len(coords), step):
            chunk = coords[start:start + step]
            if conv_parts is not None:
                perturbed = _conv_unit_outputs(unit, a, out, chunk, delta)
            else:
                perturbed = _generic_unit_outputs(unit, loc.local, a, chunk, delta)
            result[d, start:start + len(chunk)] = _suffix_changes(
                perturbed, out, suffix, base_losses, y, loss, budget_mb)
    return result


def _unit_flip_loss_changes(out: torch.Tensor, nxt: LinearAct | None, pre_next: torch.Tensor | None,
                            suffix: Sequence[nn.Module], base_losses: torch.Tensor, y: torch.Tensor,
                            loss: LossSpec, budget_mb: float) -> torch.Tensor:
    """``Δℓ[n, j] = ℓ_n(h_n with unit j negated) − ℓ_n`` for a binary unit's output ``h = out``.

    With binary activations every weight of row ``j`` that flips sample ``n`` leads to the same
    perturbed state (unit ``j`` negated), so this table is computed once per unit: ``N × d`` rows
    through the rest of the network (the next linear unit in rank one).
    """
    n, width = out.shape
    rest = suffix[1:] if nxt is not None else suffix
    row_width = width if nxt is None else nxt.out_features
    step = max(1, _rows_per_chunk(row_width, budget_mb, out.element_size()) // width)
    table = torch.empty(n, width, dtype=base_losses.dtype, device=out.device)
    units = torch.arange(width, device=out.device)
    for s in range(0, n, step):
        h = out[s:s + step]                                           # (B, d)
        if nxt is not None:                                           # z_next − 2 h_j W_next[:, j]
            rows = pre_next[s:s + step].unsqueeze(1) - 2 * h.unsqueeze(2) * nxt.weight.T.unsqueeze(0)
            if nxt.act is not None:
                rows = nxt.act(rows)
        else:
            rows = h.unsqueeze(1).repeat(1, width, 1)
            rows[:, units, units] = -h
        new = per_sample_loss(run_units(rest, rows.reshape(-1, rows.shape[-1])),
                              y[s:s + step].repeat_interleave(width, dim=0), loss)
        table[s:s + step] = new.reshape(-1, width) - base_losses[s:s + step].unsqueeze(1)
    return table


def _binary_linear_changes(unit: LinearAct, local: str, a: torch.Tensor, pre: torch.Tensor,
                           flip_dl: torch.Tensor, coords: torch.Tensor,
                           deltas: Sequence[float]) -> torch.Tensor:
    """``ΔL[d, k] = (1/N) Σ_n Δℓ[n, j_k] · 1{sign(z_nj + δ_d a_ni) ≠ sign(z_nj)}`` for a binary unit,
    with ``(j_k, i_k)`` the coordinate's row and column (``a_ni = 1`` for a bias)."""
    fan_in = unit.in_features
    first, count = int(coords[0]), len(coords)
    whole_rows = (local == "weight" and first % fan_in == 0 and count % fan_in == 0
                  and int(coords[-1]) == first + count - 1)
    if whole_rows:  # rows j0 … j1 of W, every column: broadcast (N, J, 1) against (N, 1, fan_in)
        j0, j1 = first // fan_in, (first + count) // fan_in
        z_cols, dl_cols, a_cols = pre[:, j0:j1, None], flip_dl[:, j0:j1, None], a[:, None, :]
    elif local == "weight":
        j = coords // fan_in
        z_cols, dl_cols, a_cols = pre[:, j], flip_dl[:, j], a[:, coords % fan_in]
    else:
        z_cols, dl_cols = pre[:, coords], flip_dl[:, coords]
        a_cols = torch.ones_like(z_cols)
    sign_z = torch.signbit(z_cols)
    zero = dl_cols.new_zeros(())
    out = torch.empty(len(deltas), len(coords), dtype=flip_dl.dtype, device=flip_dl.device)
    for d, delta in enumerate(deltas):
        flips = torch.signbit(torch.add(z_cols, a_cols, alpha=delta)) != sign_z
        out[d] = torch.where(flips, dl_cols, zero).sum(dim=0).reshape(-1)
    return out / a.shape[0]


def _linear_unit_changes(unit: LinearAct, local: str, a: torch.Tensor, pre: torch.Tensor,
                         out: torch.Tensor, nxt: LinearAct | None, pre_next: torch.Tensor | None,
                         suffix: Sequence[nn.Module], base_losses: torch.Tensor, y: torch.Tensor,
                         loss: LossSpec, coords: torch.Tensor, deltas: Sequence[float],
                         budget_mb: float) -> torch.Tensor:
    """Flip-sparse CDG for ``h' = q(z)``, ``z = W a + b``, ``pre = z`` and ``out = h'`` cached.

    ``W_ji += δ`` moves ``z_j`` by ``δ a_i``; only samples whose ``q(z_j)`` changes (by ``Δh``)
    go on. When the next unit is linear too, its pre-activation is updated in rank one,
    ``z_next + Δh · W_next[:, j]``, instead of recomputed.
    """
    if local == "weight":
        j = coords // unit.in_features
        a_cols = a[:, coords % unit.in_features]                    # (N, K)
    elif local == "bias":
        j = coords
        a_cols = torch.ones(a.shape[0], len(coords), dtype=a.dtype, device=a.device)
    else:  # pragma: no cover - LinearAct has only these two
        raise ValueError(f"layers: unsupported parameter {local!r} of a linear unit")
    z_cols, h_cols = pre[:, j], out[:, j]                            # (N, K)
    result = torch.zeros(len(deltas), len(coords), dtype=base_losses.dtype, device=base_losses.device)
    rest = suffix[1:] if nxt is not None else suffix
    for d, delta in enumerate(deltas):
        z_new = torch.add(z_cols, a_cols, alpha=delta)
        if unit.act is None:
            changed = a_cols != 0
            rows_n, cols_k = changed.nonzero(as_tuple=True)
            dh = (z_new - h_cols)[rows_n, cols_k]
        else:
            if unit.act.precision == "binary":
                changed = torch.signbit(z_new) != torch.signbit(z_cols)  # q = copysign(1, z)
            else:
                changed = quantize(z_new, unit.act.precision) != h_cols
            rows_n, cols_k = changed.nonzero(as_tuple=True)
            dh = quantize(z_new[rows_n, cols_k], unit.act.precision) - h_cols[rows_n, cols_k]
        width = out.shape[1] if nxt is None else nxt.out_features
        step = _rows_per_chunk(max(width, 1), budget_mb, a.element_size())
        for s in range(0, len(rows_n), step):
            rn, ck, dhs = rows_n[s:s + step], cols_k[s:s + step], dh[s:s + step]
            if nxt is not None:
                h = torch.addcmul(pre_next[rn], dhs.unsqueeze(1), nxt.weight.T[j[ck]])
                if nxt.act is not None:
                    h = nxt.act(h)
            else:
                h = out[rn].clone()
                h[torch.arange(len(rn), device=h.device), j[ck]] += dhs
            new_losses = per_sample_loss(run_units(rest, h), y[rn], loss)
            result[d].index_add_(0, ck, new_losses - base_losses[rn])
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
