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
from .flips import LinearStage, step_unit_changes


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
        stage = LinearStage(unit, loc.local, a, pre, out, nxt, pre_next, suffix, base_losses, y, loss)
        if unit.act is not None and unit.act.precision != "fp":
            return step_unit_changes(stage, coords, deltas, budget_mb)
        if loss == "mse" and all(_is_affine(u) for u in (unit, *suffix)):
            return _affine_mse_changes(unit, loc.local, a, cache[-1], suffix, y, coords, deltas)
        step = rows_per_chunk(n * len(deltas), budget_mb, a.element_size())
        for start in range(0, len(coords), step):
            chunk = coords[start:start + step]
            result[:, start:start + len(chunk)] = _linear_unit_changes(stage, chunk, deltas, budget_mb)
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


def _is_affine(unit: nn.Module) -> bool:
    """A linear unit without a step activation (``act`` ``None`` or ``fp``): ``h' = W h + b``."""
    return isinstance(unit, LinearAct) and (unit.act is None or unit.act.precision == "fp")


def _affine_mse_changes(unit: LinearAct, local: str, a: torch.Tensor, output: torch.Tensor,
                        suffix: Sequence[nn.Module], y: torch.Tensor, coords: torch.Tensor,
                        deltas: Sequence[float]) -> torch.Tensor:
    """Closed-form CDG when ``unit`` and every unit after it are affine and the loss is MSE.

    The output is then affine in ``W_ji``: ``f'_n = f_n + δ a_ni M[:, j]``, with ``M`` (``D × d``)
    the product of the later weights (the identity for the readout), so with ``r_n = f_n − y_n``

    ``ΔL(δ) = (1/D) [2δ · mean_n (a_ni · r_n·M[:, j]) + δ² · |M[:, j]|² · mean_n a_ni²]``

    (``a_ni = 1`` for a bias), exact: the loss is quadratic in each single weight. Computed in
    float64 from two ``N × d`` reductions.
    """
    m = torch.eye(unit.out_features, dtype=torch.float64, device=a.device)
    for later in suffix:
        m = later.weight.detach().double() @ m
    residual = (output - y).double()                                      # (N, D)
    g = residual @ m                                                      # (N, d): r_n · M[:, j]
    n, d_out = a.shape[0], output.shape[-1]
    if local == "weight":
        a64 = a.double()
        linear = (g.T @ a64 / n).reshape(-1)[coords]                      # mean_n g_nj a_ni
        square = (a64 * a64).mean(dim=0)[coords % unit.in_features]
        rows = coords // unit.in_features
    elif local == "bias":
        linear, rows = g.mean(dim=0)[coords], coords
        square = torch.ones(len(coords), dtype=torch.float64, device=a.device)
    else:  # pragma: no cover - LinearAct has only these two
        raise ValueError(f"layers: unsupported parameter {local!r} of a linear unit")
    column_sq = (m * m).sum(dim=0)[rows]
    out = torch.stack([(2 * delta * linear + delta * delta * column_sq * square) / d_out for delta in deltas])
    return out.to(output.dtype)


def _linear_unit_changes(stage: LinearStage, coords: torch.Tensor, deltas: Sequence[float],
                         budget_mb: float) -> torch.Tensor:
    """CDG for an affine unit ``h' = z = W a + b`` (``act`` ``None`` or ``fp``) followed by any
    suffix, ``pre = z`` and ``out = h'`` cached (:class:`lib.core.flips.LinearStage`).

    ``W_ji += δ`` moves ``h'_j`` by ``Δh = δ a_i`` on every sample with ``a_i ≠ 0``, which go on
    through the suffix. When the next unit is linear, its pre-activation is updated in rank one,
    ``z_next + Δh · W_next[:, j]``, instead of recomputed.
    """
    unit, local, a, pre, out, nxt = stage.unit, stage.local, stage.a, stage.pre, stage.out, stage.nxt
    pre_next, suffix, base_losses, y, loss = stage.pre_next, stage.suffix, stage.base_losses, stage.y, stage.loss
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
        rows_n, cols_k = (a_cols != 0).nonzero(as_tuple=True)
        dh = (z_new - h_cols)[rows_n, cols_k]
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
