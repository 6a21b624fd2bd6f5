"""Activation quantizers with surrogate (straight-through) gradients, in larq's spirit.

A :class:`Quantizer` module has two independent halves:

* the **forward quantizer** (``precision``), what the network computes:

  - ``binary``:  ``q(x) = copysign(1, x)``: ``+1`` for ``x > 0``, ``-1`` for ``x < 0``, and the
    sign bit decides at zero (``q(+0) = +1``, ``q(−0) = −1``), so ``q`` is never 0;
  - ``ternary``: ``q(x) = round(clip(x, -1, 1))`` ∈ {-1, 0, 1} (threshold 1/2);
  - ``2bit``:    four uniform levels {-1, -1/3, 1/3, 1}:
    ``q(x) = round((clip(x, -1, 1) + 1) · 3/2) · 2/3 − 1``;
  - ``fp``:      full precision, ``q(x) = x`` (its gradient is exact, the surrogate unused).

* the **surrogate derivative** (``surrogate``), what back-propagation uses in place of ``q'``;
  one small class per STE variant, its formula next to its code:

  - ``identity``:   ``1``;
  - ``clipped``:    ``1{|x| <= 1}``;
  - ``steep``:      ``k · 1{|x| <= 1/k}`` with ``k = 3`` (clipped, narrower and steeper);
  - ``swishsign``:  derivative of ``2σ(βx)(1 + βx(1 − σ(βx))) − 1``, β = 5;
  - ``polynomial``: ApproxSign, ``(2 − 2|x|) · 1{|x| <= 1}``.

The estimators swap the surrogate of every quantizer of a model with :func:`use_surrogate`,
so that the forward pass (and hence the loss) never depends on the STE variant.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from lib.core.names import PRECISIONS, STE_VARIANTS


# ----------------------------------------------------------------------------- forward quantizers

def quantize(x: torch.Tensor, precision: str) -> torch.Tensor:
    """The forward quantizer ``q_precision(x)`` (see the module docstring)."""
    if precision == "binary":
        return torch.copysign(x.new_tensor(1.0), x)
    if precision == "ternary":
        return torch.round(torch.clamp(x, -1.0, 1.0))
    if precision == "2bit":
        return torch.round((torch.clamp(x, -1.0, 1.0) + 1.0) * 1.5) / 1.5 - 1.0
    if precision == "fp":
        return x
    raise ValueError(f"precision: unknown activation precision {precision!r}; expected one of {PRECISIONS}")


# copysign(1, x) from the bits: x's sign bit joined to the bits of 1.0, per floating dtype
_SIGN_AND_ONE = {torch.float32: (torch.int32, -2**31, 0x3F800000),
                 torch.float64: (torch.int64, -2**63, 0x3FF0000000000000),
                 torch.float16: (torch.int16, -2**15, 0x3C00), torch.bfloat16: (torch.int16, -2**15, 0x3F80)}


def quantize_(x: torch.Tensor, precision: str) -> torch.Tensor:
    """:func:`quantize` in place, for a tensor the caller owns (a batched pass's temporaries):
    the same values bit for bit, without a new tensor per pass. ``binary`` keeps ``x``'s sign
    bit and sets the rest to the bits of 1.0, which is ``copysign(1, x)`` (±0 and NaN
    included) in two integer passes."""
    if precision == "binary":
        spec = _SIGN_AND_ONE.get(x.dtype)
        if spec is None:
            return torch.copysign(x.new_tensor(1.0), x, out=x)
        itype, sign, one = spec
        x.view(itype).bitwise_and_(sign).bitwise_or_(one)
        return x
    if precision == "ternary":
        return x.clamp_(-1.0, 1.0).round_()
    if precision == "2bit":
        return x.clamp_(-1.0, 1.0).add_(1.0).mul_(1.5).round_().div_(1.5).sub_(1.0)
    if precision == "fp":
        return x
    raise ValueError(f"precision: unknown activation precision {precision!r}; expected one of {PRECISIONS}")


def levels(precision: str) -> tuple[float, ...]:
    """The output levels of a step quantizer in increasing order (``fp`` has none: ``ValueError``).

    Consecutive levels are ``2 / (L − 1)`` apart and the thresholds of ``q`` are their midpoints."""
    table = {"binary": (-1.0, 1.0), "ternary": (-1.0, 0.0, 1.0), "2bit": (-1.0, -1 / 3, 1 / 3, 1.0)}
    if precision not in table:
        raise ValueError(f"precision: {precision!r} has no levels; expected one of {tuple(table)}")
    return table[precision]


def level_index(x: torch.Tensor, precision: str) -> torch.Tensor:
    """``k`` with ``q(x) = levels(precision)[k]``, by :func:`quantize`'s own formula without its last
    step (so ties at a threshold go as the forward pass sends them)."""
    if precision == "binary":
        return (~torch.signbit(x)).long()
    if precision == "ternary":
        return torch.round(torch.clamp(x, -1.0, 1.0)).long() + 1
    if precision == "2bit":
        return torch.round((torch.clamp(x, -1.0, 1.0) + 1.0) * 1.5).long()
    levels(precision)  # raises for fp and unknown names
    raise AssertionError  # unreachable


# ----------------------------------------------------------------------------- surrogate gradients

class Surrogate:
    """A surrogate derivative ``g(x)`` used by back-propagation in place of ``q'(x)``."""

    name = ""

    def grad(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class IdentitySte(Surrogate):
    """Vanilla STE: ``g(x) = 1``."""

    name = "identity"

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


class ClippedSte(Surrogate):
    """Clipped STE (hard-tanh): ``g(x) = 1{|x| <= 1}``."""

    name = "clipped"

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return (x.abs() <= 1.0).to(x.dtype)


class SteepSte(Surrogate):
    """Steep clipped STE: ``g(x) = k · 1{|x| <= 1/k}``, k = 3 (same area as ``clipped``)."""

    name = "steep"
    k = 3.0

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.k * (x.abs() <= 1.0 / self.k).to(x.dtype)


class SwishSignSte(Surrogate):
    """SwishSign (BNN+): derivative of ``f(x) = 2σ(βx)(1 + βx(1 − σ(βx))) − 1``, β = 5.

    ``g(x) = β (2 − βx · tanh(βx / 2)) / (1 + cosh(βx))``.
    """

    name = "swishsign"
    beta = 5.0

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        bx = self.beta * x
        return self.beta * (2.0 - bx * torch.tanh(bx / 2.0)) / (1.0 + torch.cosh(bx))


class PolynomialSte(Surrogate):
    """ApproxSign (Bi-Real Net): ``g(x) = (2 − 2|x|) · 1{|x| <= 1}``."""

    name = "polynomial"

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


# One class per STE variant, in the order of lib.core.names.STE_VARIANTS (tests check that they agree).
SURROGATES: dict[str, Surrogate] = {
    cls.name: cls() for cls in (IdentitySte, ClippedSte, SteepSte, SwishSignSte, PolynomialSte)
}


def get_surrogate(variant: str) -> Surrogate:
    """The surrogate named ``variant``; ``ValueError`` naming ``variant`` when unknown."""
    try:
        return SURROGATES[variant]
    except (KeyError, TypeError):
        raise ValueError(f"variant: unknown STE variant {variant!r}; expected one of {STE_VARIANTS}") from None


class _QuantizeSte(torch.autograd.Function):
    """``q(x)`` forward, ``grad_out · g(x)`` backward."""

    @staticmethod
    def forward(ctx, x, precision, surrogate):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return quantize(x, precision)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None, None


# ----------------------------------------------------------------------------- the module

class Quantizer(nn.Module):
    """Activation ``q_precision`` whose backward pass uses the surrogate ``g_surrogate``.

    Under ``torch.no_grad`` (or inside ``torch.func`` transforms without autograd) the plain
    quantizer runs, so batched loss evaluations pay nothing for the surrogate.
    """

    def __init__(self, precision: str = "binary", surrogate: str = "clipped") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision: unknown activation precision {precision!r}; expected one of {PRECISIONS}")
        get_surrogate(surrogate)
        self.precision = precision
        self.surrogate = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp":
            return x
        if torch.is_grad_enabled() and x.requires_grad:
            return _QuantizeSte.apply(x, self.precision, get_surrogate(self.surrogate))
        return quantize(x, self.precision)

    def extra_repr(self) -> str:
        return f"precision={self.precision!r}, surrogate={self.surrogate!r}"


@contextlib.contextmanager
def use_surrogate(model: nn.Module, variant: str) -> Iterator[nn.Module]:
    """Temporarily set the surrogate of every :class:`Quantizer` in ``model`` to ``variant``."""
    get_surrogate(variant)
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    saved = [q.surrogate for q in quantizers]
    try:
        for q in quantizers:
            q.surrogate = variant
        yield model
    finally:
        for q, s in zip(quantizers, saved):
            q.surrogate = s
