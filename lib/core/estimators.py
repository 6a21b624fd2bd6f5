"""Gradient estimators for binary-activation networks (docs/design.md §2).

Every estimator takes ``(model, x, y, ...)`` and returns ``{parameter name as in
model.named_parameters(): tensor shaped like that parameter}`` for the selected parameters
(``layers``; default all). ``loss`` is ``"mse"``, ``"cross_entropy"`` or a callable giving
per-sample losses (:mod:`lib.core.losses`). The model is evaluated in eval mode (BatchNorm uses its
running statistics, so every sample is independent) and is never modified.

* :func:`cdg`  coordinate discrete gradient (BinaryDuo): central
  ``g_i = (L(w + ε e_i) − L(w − ε e_i)) / 2ε`` or one-sided ``(L(w + ε e_i) − L(w)) / ε``.
* :func:`nes`  Gaussian-smoothing (evolution-strategies) gradient with ``S`` directions:
  antithetic ``g = 1/(2σS) Σ_s (L(w + σu_s) − L(w − σu_s)) u_s`` or plain
  ``g = 1/(σS) Σ_s (L(w + σu_s) − L(w)) u_s``, ``u_s ~ N(0, I)``, all selected layers jointly.
  Three layers of one computation: :func:`nes` (one σ, one ``S``) is :func:`nes_multi` with
  ``samples=[S]``, which is :func:`nes_sigmas` with ``sigmas=[σ]``; the last draws one direction
  stream for every σ and every sample count.
* :func:`ste`  back-propagation with the surrogate derivative of an STE variant.
* :func:`smoothed_exact`  the closed-form gradient of the Gaussian-smoothed loss of the toy
  MLP's last hidden layer and readout: the infinite-sample limit of NES on those two layers.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from . import coordinates, directions, engine
from .losses import LossSpec, batch_loss, check_loss, per_sample_loss
from .models import BinaryMLP, LinearAct
from .quantizers import get_surrogate, use_surrogate

Grads = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- shared checks

def select_parameters(model: nn.Module, layers: Iterable[str] | str | None) -> list[str]:
    """Names of the selected parameters in model order; ``ValueError`` naming ``layers`` if unknown."""
    names = [n for n, _ in model.named_parameters()]
    if layers is None:
        return names
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ValueError(f"layers: unknown parameter name(s) {unknown}; the model has {names}")
    if not layers:
        raise ValueError("layers: empty selection")
    return [n for n in names if n in layers]


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def _check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x: expected a batch tensor of at least 2 dimensions, got {getattr(x, 'shape', x)!r}")
    if not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]:
        raise ValueError(f"y: expected {x.shape[0]} targets, got {getattr(y, 'shape', y)!r}")
    try:
        with torch.no_grad(), engine.eval_mode(model):
            model(x[:1])
    except ValueError:
        raise
    except RuntimeError as err:
        raise ValueError(f"x: input of shape {tuple(x.shape)} does not fit the model ({err})") from None


@contextlib.contextmanager
def _prepared(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              device: str | torch.device | None) -> Iterator[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """The model (a copy only when moved to another ``device``) in eval mode, and ``x, y`` on it;
    host memory is kept for reuse from chunk to chunk (:func:`lib.core.engine.keep_freed_memory`)."""
    engine.keep_freed_memory()
    ref = next(model.parameters())
    dev = torch.device(device) if device is not None else ref.device
    if dev != ref.device:
        model = copy.deepcopy(model).to(dev)
    x = x.to(device=dev, dtype=ref.dtype if x.is_floating_point() else x.dtype)
    y = y.to(device=dev, dtype=ref.dtype if y.is_floating_point() else y.dtype)
    with engine.eval_mode(model):
        yield model, x, y


def _base(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
          loss: LossSpec) -> tuple[list[torch.Tensor], torch.Tensor]:
    cache = engine.forward_cache(model, x)
    base = per_sample_loss(cache[-1], y, loss)
    if not torch.isfinite(base).all():
        raise FloatingPointError("loss of the unperturbed model is not finite")
    return cache, base


def _sampled_coords(numel: int, coords_per_layer: int | None, gen: torch.Generator) -> torch.Tensor:
    if coords_per_layer is None or coords_per_layer >= numel:
        return torch.arange(numel)
    return torch.randperm(numel, generator=gen)[:coords_per_layer].sort().values


# ----------------------------------------------------------------------------- CDG

def cdg(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: LossSpec = "mse", eps: float = 0.1,
        central: bool = True, layers: Iterable[str] | str | None = None,
        coords_per_layer: int | None = None, seed: int = 0,
        device: str | torch.device | None = None, budget_mb: float = engine.DEFAULT_BUDGET_MB) -> Grads:
    """Coordinate discrete gradient with step ``eps`` on every (or ``coords_per_layer`` sampled)
    coordinate of the selected parameters; unsampled coordinates are NaN.

    central: ``g_i = (L(w + ε e_i) − L(w − ε e_i)) / (2ε)``; one-sided: ``(L(w + ε e_i) − L(w)) / ε``.
    Coordinates are sampled without replacement from a generator seeded with ``seed``. Work is
    chunked to ``budget_mb`` (more on a CUDA device: :func:`lib.core.engine.chunk_budget_mb`).
    """
    _check_positive("eps", eps)
    check_loss(loss)
    if coords_per_layer is not None and (not isinstance(coords_per_layer, int) or coords_per_layer < 1):
        raise ValueError(f"coords_per_layer: expected a positive integer or None, got {coords_per_layer!r}")
    names = select_parameters(model, layers)
    _check_batch(model, x, y)
    with _prepared(model, x, y, device) as (model, x, y):
        locs = engine.locate_parameters(model)
        params = dict(model.named_parameters())
        cache, base = _base(model, x, y, loss)
        budget = engine.chunk_budget_mb(budget_mb, x.device)
        gen = torch.Generator().manual_seed(int(seed))
        out: Grads = {}
        for name in names:
            p = params[name]
            coords = _sampled_coords(p.numel(), coords_per_layer, gen).to(x.device)
            deltas = (eps, -eps) if central else (eps,)
            changes = coordinates.coordinate_loss_changes(model, cache, base, y, loss, locs[name], coords,
                                                          deltas, budget)
            values = (changes[0] - changes[1]) / (2 * eps) if central else changes[0] / eps
            g = torch.full((p.numel(),), float("nan"), dtype=p.dtype, device=p.device)
            g[coords] = values.to(p.dtype)
            out[name] = g.reshape(p.shape)
        return out


# ----------------------------------------------------------------------------- NES
#
# Three layers over one engine: nes (one σ, one sample count) calls nes_multi (one σ, several
# sample counts from one direction stream), which calls nes_sigmas (several σ on the same stream),
# where the work is done. Every argument after (model, x, y) is keyword-only, as for cdg and ste.

def nes_multi(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: LossSpec = "mse",
              sigma: float = 0.1, samples: Sequence[int] = (500,),
              layers: Iterable[str] | str | None = None, antithetic: bool = True,
              fitness_shaping: bool = False, seed: int = 0, device: str | torch.device | None = None,
              budget_mb: float = engine.NES_BUDGET_MB) -> dict[int, Grads]:
    """NES estimates for several sample counts from **one** stream of directions.

    The estimate for ``S`` uses the first ``S`` directions of the seeded stream, so the estimates
    for 500, 5000 and 50000 cost the 50000 alone; each is exactly :func:`nes` with that ``S``.
    Loss evaluations: ``2S`` (antithetic) or ``S + 1``. Fitness shaping replaces the losses by
    their centred ranks in [−0.5, 0.5] among the first ``S`` evaluations.
    """
    _check_positive("sigma", sigma)
    return nes_sigmas(model, x, y, loss=loss, sigmas=[sigma], samples=samples, layers=layers, antithetic=antithetic,
                      fitness_shaping=fitness_shaping, seed=seed, device=device, budget_mb=budget_mb)[sigma]


def nes_sigmas(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: LossSpec = "mse",
               sigmas: Sequence[float] = (0.1,), samples: Sequence[int] = (500,),
               layers: Iterable[str] | str | None = None, antithetic: bool = True,
               fitness_shaping: bool = False, seed: int = 0, device: str | torch.device | None = None,
               budget_mb: float = engine.NES_BUDGET_MB) -> dict[float, dict[int, Grads]]:
    """:func:`nes_multi` for several σ at once, ``{σ: {S: grads}}``: every σ uses the same seeded
    directions, so the stream is drawn once and, when the first perturbed unit is linear, its
    projection ``U h`` is computed once per chunk for all σ and both signs. Each σ's estimate is
    that of ``nes_multi(σ)``, bit for bit (the same chunks and the same arithmetic). The
    directions are drawn in blocks that fit ``budget_mb``; a CUDA device evaluates several blocks
    per chunk (:func:`lib.core.engine.chunk_budget_mb`), with the same directions."""
    sigmas, samples = _check_nes_args(loss, sigmas, samples)
    names = select_parameters(model, layers)
    _check_batch(model, x, y)
    total = max(samples)
    with _prepared(model, x, y, device) as (model, x, y):
        locs = engine.locate_parameters(model)
        sel = [locs[n] for n in names]
        params = dict(model.named_parameters())
        shapes = {n: params[n].shape for n in names}  # in the order of names: the layout of a flat direction
        dim = sum(math.prod(shape) for shape in shapes.values())
        cache, base = _base(model, x, y, loss)
        head = min(loc.unit for loc in sel)
        block, chunk = _stream_sizes(cache[head], dim, total, antithetic, budget_mb)
        head_is_linear = isinstance(engine.units_of(model)[head], LinearAct)
        baseline = 0.0 if fitness_shaping else base.mean()  # the plain estimate's L(w)

        def stream() -> Iterator[tuple[int, torch.Tensor, dict[str, torch.Tensor]]]:
            return directions.direction_stream(shapes, total, block, chunk, seed, cache[head].dtype, x.device)

        plus = {sg: torch.empty(total, dtype=base.dtype, device=x.device) for sg in sigmas}
        minus = {sg: torch.empty(total, dtype=base.dtype, device=x.device) for sg in sigmas} if antithetic else {}
        sums = _Sums(sigmas, samples, dim, x.device)
        for start, flat, dirs in stream():
            k = flat.shape[0]
            shared = directions.head_projection(model, cache, sel, dirs) if head_is_linear else None
            for sigma in sigmas:
                losses = directions.direction_losses(model, cache, y, loss, sel, dirs,
                                                     (sigma, -sigma) if antithetic else (sigma,), shared)
                plus[sigma][start:start + k] = losses[0]
                if antithetic:
                    minus[sigma][start:start + k] = losses[1]
                if not fitness_shaping:  # weights known now: one pass over the directions
                    sums.add(sigma, start, flat, lambda s: _nes_weights(sigma, s, plus[sigma], minus.get(sigma),
                                                                        baseline))
        # Checked once, after the stream: a check per chunk would wait for a CUDA device each time.
        if not all(torch.isfinite(f).all() for f in [*plus.values(), *minus.values()]):
            raise FloatingPointError("loss of a perturbed model is not finite")
        if fitness_shaping:  # ranks need every loss first: replay the same directions
            shaped = {sg: {s: _nes_weights(sg, s, *_shaped(plus[sg][:s], minus[sg][:s] if antithetic else None), 0.0)
                           for s in samples} for sg in sigmas}
            for start, flat, _ in stream():
                for sigma in sigmas:
                    sums.add(sigma, start, flat, lambda s: shaped[sigma][s])
        dtypes = {n: params[n].dtype for n in names}
        return {sigma: {s: _unflatten(sums.sums[sigma][s], shapes, dtypes) for s in samples} for sigma in sigmas}


def _stream_sizes(row: torch.Tensor, dim: int, total: int, antithetic: bool, budget_mb: float) -> tuple[int, int]:
    """``(block, chunk)``: the directions drawn at a time, and evaluated at a time, for inputs
    ``row`` of the first perturbed unit and ``dim`` perturbed weights.

    The block is sized from ``budget_mb`` alone: torch's normal sampler gives other numbers for
    other block sizes, so the directions must not follow the device. A device with a larger
    budget (:func:`lib.core.engine.chunk_budget_mb`) evaluates several blocks per chunk."""
    per_copy = row.numel() * 4 + dim  # activations of a copy (a few live layers) + its noise
    per_direction = per_copy * row.element_size() * (1 + antithetic)  # bytes, both signs
    block = max(1, min(total, int(budget_mb * 2**20 / per_direction)))
    per_chunk = int(engine.chunk_budget_mb(budget_mb, row.device) * 2**20 / (per_direction * block))
    return block, block * max(1, per_chunk)


def _nes_weights(sigma: float, s: int, f_plus: torch.Tensor, f_minus: torch.Tensor | None,
                 baseline: float | torch.Tensor) -> torch.Tensor:
    """The weights ``w_k`` of ``g = Σ_k w_k u_k`` over the first ``s`` directions (longer inputs
    are sliced later): ``(f⁺ − f⁻) / 2σS`` (antithetic) or ``(f⁺ − baseline) / σS``."""
    if f_minus is not None:
        return (f_plus - f_minus) / (2 * sigma * s)
    return (f_plus - baseline) / (sigma * s)


def _shaped(f_plus: torch.Tensor, f_minus: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fitness shaping: the losses replaced by their centred ranks among all ``2S`` (or ``S``)."""
    if f_minus is None:
        return _centred_ranks(f_plus), None
    ranks = _centred_ranks(torch.cat([f_plus, f_minus]))
    return ranks[:len(f_plus)], ranks[len(f_plus):]


class _Sums:
    """``sums[σ][S] = Σ_{k<S} w_k u_k`` in float64, for every σ and sample count, chunk by chunk."""

    def __init__(self, sigmas: Sequence[float], samples: Sequence[int], dim: int, device: torch.device) -> None:
        self.samples = samples
        self.sums = {sg: {s: torch.zeros(dim, dtype=torch.float64, device=device) for s in samples} for sg in sigmas}

    def add(self, sigma: float, start: int, flat: torch.Tensor, weights_of: Callable[[int], torch.Tensor]) -> None:
        """Add this chunk's directions ``flat`` (those from ``start`` on) that belong to the first
        ``S``, weighted by ``weights_of(S)`` (indexed from direction 0)."""
        for s in self.samples:
            k = min(s, start + flat.shape[0]) - start
            if k > 0:
                w = weights_of(s)[start:start + k].to(flat.dtype)
                self.sums[sigma][s] += (w @ flat[:k]).to(torch.float64)


def _check_nes_args(loss: LossSpec, sigmas: Sequence[float], samples: Sequence[int] | int) -> tuple[list, list]:
    """``(sigmas, samples)`` as lists, checked: distinct positive σ, positive integer sample counts."""
    sigmas = list(sigmas)
    if not sigmas or len(set(sigmas)) != len(sigmas):
        raise ValueError(f"sigmas: expected distinct σ values, at least one, got {sigmas!r}")
    for sigma in sigmas:
        _check_positive("sigma", sigma)
    check_loss(loss)
    samples = [samples] if isinstance(samples, int) else list(samples)
    if not samples or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in samples):
        raise ValueError(f"samples: expected positive integers, got {samples!r}")
    return sigmas, samples


def _unflatten(flat: torch.Tensor, shapes: dict[str, torch.Size], dtypes: dict[str, torch.dtype]) -> Grads:
    """``{name: tensor of its shape and dtype}`` from one flat vector over the parameters, in order."""
    out, off = {}, 0
    for n, shape in shapes.items():
        size = math.prod(shape)
        out[n] = flat[off:off + size].reshape(shape).to(dtypes[n])
        off += size
    return out


def _centred_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks of ``values`` mapped linearly onto [−0.5, 0.5] (Salimans et al. fitness shaping)."""
    ranks = torch.empty_like(values)
    ranks[values.argsort()] = torch.arange(len(values), dtype=values.dtype, device=values.device)
    return ranks / max(1, len(values) - 1) - 0.5


def nes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: LossSpec = "mse", sigma: float = 0.1,
        samples: int = 500, layers: Iterable[str] | str | None = None, antithetic: bool = True,
        fitness_shaping: bool = False, seed: int = 0, device: str | torch.device | None = None,
        budget_mb: float = engine.NES_BUDGET_MB) -> Grads:
    """NES gradient of the Gaussian-smoothed loss ``L_σ(w) = E_u[L(w + σu)]`` with ``samples``
    directions ``u_s ~ N(0, I)`` drawn jointly over the selected layers from a generator seeded
    with ``seed``: ``g = 1/(2σS) Σ_s (L(w + σu_s) − L(w − σu_s)) u_s`` (antithetic, ``2S`` loss
    evaluations) or ``g = 1/(σS) Σ_s (L(w + σu_s) − L(w)) u_s`` (``S + 1`` evaluations)."""
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples: expected a positive integer, got {samples!r}")
    return nes_multi(model, x, y, loss=loss, sigma=sigma, samples=[samples], layers=layers, antithetic=antithetic,
                     fitness_shaping=fitness_shaping, seed=seed, device=device, budget_mb=budget_mb)[samples]


# ----------------------------------------------------------------------------- STE

def ste(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: LossSpec = "mse",
        variant: str = "clipped", layers: Iterable[str] | str | None = None) -> Grads:
    """Back-propagation with ``q`` forward and the surrogate ``g_variant`` backward:
    ``∂L/∂w`` where every quantizer's ``∂q/∂z`` is replaced by ``g_variant(z)``."""
    get_surrogate(variant)
    check_loss(loss)
    names = select_parameters(model, layers)
    _check_batch(model, x, y)
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    saved = [p.requires_grad for p in chosen]
    try:
        for p in chosen:
            p.requires_grad_(True)
        with use_surrogate(model, variant), engine.eval_mode(model), torch.enable_grad():
            value = batch_loss(model(x), y, loss)
            grads = torch.autograd.grad(value, chosen, allow_unused=True)
    finally:
        for p, s in zip(chosen, saved):
            p.requires_grad_(s)
    return {n: (g if g is not None else torch.zeros_like(p)).detach()
            for n, g, p in zip(names, grads, chosen)}


# ----------------------------------------------------------------------------- exact smoothed gradient

def smoothed_loss(model: BinaryMLP, x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """Closed-form ``L_σ = E_u[L(w + σu)]`` when only the last hidden layer ``W`` (then ``sign``)
    and the readout ``v`` are perturbed, MSE loss, earlier output ``h`` fixed:

    ``m_k = erf(w_k·h / (√2 σ ‖h‖))``,
    ``L_σ = mean_n[(Σ_k v_k m_k − t)² + Σ_k (v_k² + σ² − v_k² m_k²)]``.

    Differentiable in ``W`` and ``v`` (autograd gives :func:`smoothed_exact`).
    """
    _check_smoothable(model)
    last = model.units[-2]
    with torch.no_grad():
        h = engine.run_units(model.units[:-2], x)
    norm = h.norm(dim=1, keepdim=True)
    m = torch.erf((h @ last.weight.T) / (math.sqrt(2.0) * sigma * norm))
    v = model.readout.weight[0]
    mean_out = m @ v
    var = (v * v + sigma**2 - (v * v) * m * m).sum(dim=1)
    return ((mean_out - y[:, 0]) ** 2 + var).mean()


def _check_smoothable(model: nn.Module) -> None:
    if not isinstance(model, BinaryMLP):
        raise ValueError("model: smoothed_exact needs the toy BinaryMLP")
    if model.act_precision != "binary" or model.out_dim != 1 or model.readout.bias is not None \
            or model.units[-2].bias is not None:
        raise ValueError("model: smoothed_exact needs binary activations, out_dim=1 and no bias")


def smoothed_exact(model: BinaryMLP, x: torch.Tensor, y: torch.Tensor, sigma: float) -> Grads:
    """Exact gradient of the Gaussian-smoothed MSE loss with respect to the last hidden layer and
    the readout (see :func:`smoothed_loss`): the infinite-sample limit of :func:`nes` with
    ``layers=[last hidden weight, readout weight]`` and the same ``sigma``."""
    _check_positive("sigma", sigma)
    _check_smoothable(model)
    _check_batch(model, x, y)
    if y.dim() != 2 or y.shape[1] != 1:
        raise ValueError(f"y: expected targets of shape (N, 1), got {tuple(y.shape)}")
    names = [n for n, p in model.named_parameters()
             if p is model.units[-2].weight or p is model.readout.weight]
    chosen = [model.units[-2].weight, model.readout.weight]
    saved = [p.requires_grad for p in chosen]
    try:
        for p in chosen:
            p.requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(smoothed_loss(model, x, y, sigma), chosen)
    finally:
        for p, s in zip(chosen, saved):
            p.requires_grad_(s)
    return {n: g.detach() for n, g in zip(names, grads)}
