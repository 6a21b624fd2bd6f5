"""The NES engine: the seeded stream of joint directions ``u_k``, and the batch losses of many
jointly perturbed copies ``w + s · u_k`` of one model (docs/design.md §7; the principles are in
:mod:`lib.core.engine`)."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from .engine import ParamLocation, run_units, units_of
from .losses import LossSpec, per_sample_loss
from .models import LinearAct
from .quantizers import quantize_


@torch.no_grad()
def direction_losses(
    model: nn.Module,
    cache: list[torch.Tensor],
    y: torch.Tensor,
    loss: LossSpec,
    locs: Sequence[ParamLocation],
    directions: dict[str, torch.Tensor],
    scales: Sequence[float],
    projection: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Batch losses ``L(w + s · u_k)`` for every scale ``s`` and each of ``K`` joint directions,
    shape ``(len(scales), K)``.

    ``directions[name]`` has shape ``(K, *param.shape)``. Units before the first perturbed one
    come from ``cache``. When that first unit is linear (``z = W h + b``), its input ``h`` is
    shared by all copies, so ``z = W h + b + s · (U h + u_b)`` with the projection ``U h`` of
    every direction computed once in one matmul and reused for every scale; the remaining units
    run over the ``len(scales) · K`` copies as batched matmuls when they are all linear units
    (:func:`_linear_chain_losses`), else as one ``vmap``-ed pass (:func:`_vmap_losses`).
    ``projection``: that head's :func:`head_projection` of these directions, when a caller reuses
    it for several calls (the σ of a NES step); the losses are the same, bit for bit.
    """
    units = units_of(model)
    first = min(loc.unit for loc in locs)
    k = next(iter(directions.values())).shape[0]
    h = cache[first]
    batched = None
    start = first
    if isinstance(units[first], LinearAct):
        base, proj = projection if projection is not None else head_projection(model, cache, locs, directions)
        batched = _head_outputs(units[first], base, proj, scales)
        start = first + 1
    rest = [loc for loc in locs if loc.unit >= start]
    pert = {loc.name: torch.cat([s * directions[loc.name] for s in scales]) for loc in rest}
    if batched is not None and rest and all(isinstance(u, LinearAct) for u in units[start:]):
        losses = _linear_chain_losses(units, start, batched, rest, pert, y, loss)
    elif not rest:  # nothing perturbed after the head: one plain pass over all copies' rows
        copies = len(scales) * k
        out = run_units(units[start:], batched.reshape(copies * h.shape[0], *batched.shape[2:]))
        losses = per_sample_loss(out.reshape(copies, h.shape[0], *out.shape[1:]), y, loss).mean(dim=1)
    else:
        losses = _vmap_losses(model, units, start, h if batched is None else batched, batched is not None,
                              rest, pert, y, loss)
    return losses.reshape(len(scales), k)


def _head_outputs(head: LinearAct, base: torch.Tensor, proj: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """The first perturbed unit's outputs ``q(base + s · proj[k])`` for every scale ``s`` and
    direction ``k``, shape ``(S·K, N, out)``: written in place into one buffer, the same bits as
    the sums, no copies."""
    k = proj.shape[0]
    z = torch.empty((len(scales) * k, *base.shape), dtype=base.dtype, device=base.device)
    for i, s in enumerate(scales):
        part = z[i * k:(i + 1) * k]
        torch.mul(proj, s, out=part)
        part += base
    return z if head.act is None else quantize_(z, head.act.precision)


def _by_unit(rest: Sequence[ParamLocation]) -> dict[int, list[ParamLocation]]:
    out: dict[int, list[ParamLocation]] = {}
    for loc in rest:
        out.setdefault(loc.unit, []).append(loc)
    return out


def _linear_chain_losses(units: list[nn.Module], start: int, batched: torch.Tensor, rest: Sequence[ParamLocation],
                         pert: dict[str, torch.Tensor], y: torch.Tensor, loss: LossSpec) -> torch.Tensor:
    """Losses of the copies through a chain of linear units (the toy MLP), ``h ← q(h (W + δW)ᵀ +
    b + δb)`` per copy as explicit batched matmuls: the same arithmetic as :func:`_vmap_losses`
    (equal bit for bit in float32 here) without vmap's per-op overhead, which matters for small
    layers. ``batched``: the copies' inputs to unit ``start``, ``(copies, N, in)``."""
    by_unit = _by_unit(rest)
    out = batched
    for u in range(start, len(units)):
        unit = units[u]
        delta = {loc.local: pert[loc.name] for loc in by_unit.get(u, [])}
        if "weight" in delta:
            z = torch.bmm(out, (unit.weight + delta["weight"]).transpose(1, 2))
        else:
            z = torch.matmul(out, unit.weight.t())
        if unit.bias is not None:  # z is this pass's own: added in place, the same bits
            z += (unit.bias + delta["bias"]).unsqueeze(1) if "bias" in delta else unit.bias
        out = z if unit.act is None else quantize_(z, unit.act.precision)  # z is this pass's own
    return per_sample_loss(out, y, loss).mean(dim=1)


def _vmap_losses(model: nn.Module, units: list[nn.Module], start: int, h: torch.Tensor, per_copy: bool,
                 rest: Sequence[ParamLocation], pert: dict[str, torch.Tensor], y: torch.Tensor,
                 loss: LossSpec) -> torch.Tensor:
    """Losses of the copies from unit ``start`` on, one ``vmap``-ed ``functional_call`` pass with
    each copy's perturbed parameters ``w + δw``; ``h``: the input to unit ``start``, one per copy
    (``per_copy``) or shared."""
    model_params = dict(model.named_parameters())
    by_unit = _by_unit(rest)

    def copy_loss(perturbation: dict[str, torch.Tensor], h_in: torch.Tensor) -> torch.Tensor:
        out = h_in
        for u in range(start, len(units)):
            unit = units[u]
            if u in by_unit:
                params = dict(unit.named_parameters())
                for loc in by_unit[u]:
                    params[loc.local] = model_params[loc.name] + perturbation[loc.name]
                out = functional_call(unit, (params, dict(unit.named_buffers())), (out,))
            else:
                out = unit(out)
        return per_sample_loss(out, y, loss).mean()

    return vmap(copy_loss, in_dims=(0, 0 if per_copy else None))(pert, h)


@torch.no_grad()
def head_projection(model: nn.Module, cache: list[torch.Tensor], locs: Sequence[ParamLocation],
                    directions: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W h + b, U h + u_b)`` of the first perturbed unit, a linear one, for every direction:
    shapes ``(N, out)`` and ``(K, N, out)``, ``h`` its input from ``cache``. Its pre-activation
    in copy ``w + s · u_k`` is ``base + s · proj[k]``."""
    first = min(loc.unit for loc in locs)
    head, h = units_of(model)[first], cache[first]
    k = next(iter(directions.values())).shape[0]
    base = torch.nn.functional.linear(h, head.weight, head.bias)              # (N, out)
    proj = torch.zeros((k, *base.shape), dtype=base.dtype, device=base.device)
    for loc in locs:
        if loc.unit != first:
            continue
        u = directions[loc.name]
        proj += torch.matmul(h, u.transpose(1, 2)) if loc.local == "weight" else u.unsqueeze(1)
    return base, proj


def direction_stream(shapes: dict[str, torch.Size], total: int, block: int, chunk: int, seed: int,
                     dtype: torch.dtype, device: torch.device) -> Iterator[tuple[int, torch.Tensor, dict[str, torch.Tensor]]]:
    """Chunks of ``total`` joint directions ``u ~ N(0, I)`` from a generator seeded with ``seed``,
    drawn on the CPU in blocks of ``block``: ``(start, flat (K, dim), {name: (K, *shape)})``."""
    dim = sum(math.prod(shape) for shape in shapes.values())
    gen = torch.Generator().manual_seed(int(seed))
    for start in range(0, total, chunk):
        k = min(chunk, total - start)
        draws = [torch.randn(min(block, start + k - b), dim, generator=gen, dtype=dtype)
                 for b in range(start, start + k, block)]
        flat = (draws[0] if len(draws) == 1 else torch.cat(draws)).to(device)
        dirs, off = {}, 0
        for n, shape in shapes.items():
            size = math.prod(shape)
            dirs[n] = flat[:, off:off + size].reshape(k, *shape)
            off += size
        yield start, flat, dirs
