"""The CDG engine: the loss change of every single-coordinate perturbation ``w_i ± ε``, batched
(docs/design.md §7; the principles are in :mod:`lib.core.engine`)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from .engine import DEFAULT_BUDGET_MB, ParamLocation, rows_per_chunk, run_units, units_of
from .losses import LossSpec, per_sample_loss
from .models import LinearAct
from .quantizers import quantize


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
        step = rows_per_chunk(n * len(deltas), budget_mb, a.element_size())
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
    step = rows_per_chunk(n * row_numel, budget_mb, a.element_size())
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
    step = max(1, rows_per_chunk(row_width, budget_mb, out.element_size()) // width)
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
        step = rows_per_chunk(max(width, 1), budget_mb, a.element_size())
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
    """The conv of a binary conv unit (``unit.parts``) when ``local`` is that conv's weight and the
    single-weight identity of :func:`_conv_unit_outputs` applies (3×3-style conv without bias,
    groups or dilation, zero padding; full-precision or XNOR weights), else ``None`` (generic path)."""
    conv = getattr(unit, "conv", None)
    if conv is None or not hasattr(unit, "parts") or local != "conv.weight":
        return None
    if not isinstance(conv, nn.Conv2d) or conv.bias is not None or conv.groups != 1 \
            or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    if type(conv) is nn.Conv2d or _is_xnor_conv(conv):
        return conv
    return None  # another Conv2d subclass: its forward may not be the plain conv; stay generic


def _is_xnor_conv(conv: nn.Module) -> bool:
    from .resnet import XnorConv2d  # local import: the toy needs nothing of the ResNet

    return type(conv) is XnorConv2d


def _conv_coords(weight_shape: torch.Size, coords: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flat coordinates of a ``(C_out, C_in, kH, kW)`` weight → ``(j, c, kh, kw, i)`` with
    ``i = c·kH·kW + kh·kW + kw`` the index inside row ``j`` (``W[j].flatten()[i]``)."""
    cin, kh_n, kw_n = weight_shape[1:]
    row = cin * kh_n * kw_n
    j, i = coords // row, coords % row
    return j, i // (kh_n * kw_n), (i % (kh_n * kw_n)) // kw_n, i % kw_n, i


def _conv_windows(conv: nn.Conv2d, a: torch.Tensor, c: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor,
                  out_hw: tuple[int, int]) -> torch.Tensor:
    """``P[k, n, y, x] = a_pad[n, c_k, y·s_h + kh_k, x·s_w + kw_k]``, shape ``(K, N, H_out, W_out)``:
    the column of :meth:`BinaryConvUnit.patches` for each coordinate, gathered in one indexing op
    (no im2col of every column)."""
    ph, pw = conv.padding
    sh, sw = conv.stride
    ho, wo = out_hw
    a_pad = torch.nn.functional.pad(a, (pw, pw, ph, ph))
    oy = torch.arange(ho, device=a.device) * sh
    ox = torch.arange(wo, device=a.device) * sw
    rows = (kh[:, None] + oy[None, :])[:, :, None]          # (K, H_out, 1)
    cols = (kw[:, None] + ox[None, :])[:, None, :]          # (K, 1, W_out)
    return a_pad[:, c[:, None, None], rows, cols].transpose(0, 1)  # (N, K, H, W) → (K, N, H, W)


def _copies_like(out: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` copies of ``out`` ``(N, C, H, W)`` as a ``(k, N, C, H, W)`` tensor whose rows
    ``[k, n]`` are channels-last: the suffix's convs run faster on CPU in that layout (results
    are the same up to floating-point summation order)."""
    n, ch, h, w = out.shape
    copies = torch.empty((k, n, h, w, ch), dtype=out.dtype, device=out.device).permute(0, 1, 4, 2, 3)
    copies.copy_(out.unsqueeze(0).expand(k, -1, -1, -1, -1))
    return copies


def _conv_unit_outputs(unit: nn.Module, x: torch.Tensor, out: torch.Tensor,
                       coords: torch.Tensor, delta: float) -> torch.Tensor:
    """Outputs ``(K, N, C, H, W)`` of a conv unit with ``W[j, c, kh, kw] += δ`` for each coordinate.

    With ``a = q(bn(x))`` the conv input, ``P_k`` its column for coordinate ``k``
    (:func:`_conv_windows`: input channel ``c`` shifted by ``(kh, kw)`` with the conv's stride), only
    output channel ``j`` changes:

    * full-precision weights: ``out'[:, j] = out[:, j] + δ · P_k``;
    * XNOR weights ``W_b[j] = α_j S_j`` (``α_j = mean|W_j|``, ``S = sign(W)`` with ``sign(0) = +1``):
      with ``w = W[j, c, kh, kw]``, ``Δα = (|w + δ| − |w|) / (C_in·kH·kW)``, ``α' = α_j + Δα`` and
      ``ΔS = sign(w + δ) − sign(w)``, the conv part ``conv_j = out[:, j] − shortcut(x)[:, j]``
      becomes ``(α'/α_j) · conv_j + α' ΔS P_k``, i.e.
      ``out'[:, j] = out[:, j] + (Δα/α_j) · conv_j + α' · ΔS · P_k``. A channel with ``α_j = 0``
      takes the generic path.

    All ``K`` copies are written by one indexed add (no loop over coordinates).
    """
    conv: nn.Conv2d = unit.conv
    a = unit.act(unit.bn(x))  # = unit.parts(x)[0], without the conv
    j, c, kh, kw, i = _conv_coords(conv.weight.shape, coords)
    windows = _conv_windows(conv, a, c, kh, kw, tuple(out.shape[-2:]))
    k_idx = torch.arange(len(coords), device=out.device)
    perturbed = _copies_like(out, len(coords))
    if not _is_xnor_conv(conv):
        perturbed[k_idx, :, j] += delta * windows
        return perturbed
    w_all = conv.weight.detach()
    alpha = w_all.abs().mean(dim=(1, 2, 3))[j]                       # (K,)
    if bool((alpha == 0).any()):
        return _generic_unit_outputs(unit, "conv.weight", x, coords, delta)
    w = w_all.reshape(w_all.shape[0], -1)[j, i]
    w_new = w + delta
    d_alpha = (w_new.abs() - w.abs()) / w_all[0].numel()
    alpha_new = alpha + d_alpha
    d_sign = torch.where(w_new >= 0, 1.0, -1.0).to(w) - torch.where(w >= 0, 1.0, -1.0).to(w)
    conv_part = (out - unit.shortcut(x))[:, j].transpose(0, 1)      # (K, N, H, W)
    change = (d_alpha / alpha)[:, None, None, None] * conv_part \
        + (alpha_new * d_sign)[:, None, None, None] * windows
    perturbed[k_idx, :, j] += change
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
    step = rows_per_chunk(out[0].numel(), budget_mb, out.element_size())
    for s in range(0, len(rn), step):
        r, c = rn[s:s + step], ck[s:s + step]
        new_losses = per_sample_loss(run_units(suffix, perturbed[c, r]), y[r], loss)
        result.index_add_(0, c, new_losses - base_losses[r])
    return result / n
