"""Models: the toy binary-activation MLP and (re-exported) the thin XNOR-ResNet-18.

Every model here is a composition of **units**: ``model(x) == units[-1](...units[0](x))``,
exposed as ``model.units`` (a list of sub-modules). The perturbation engine relies on it to
compute the prefix before a perturbed unit once and to evaluate only the suffix for each
perturbed copy.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .quantizers import Quantizer


class LinearAct(nn.Linear):
    """One MLP unit: ``h' = q(W h + b)``; ``act=None`` gives the linear readout ``h' = W h + b``."""

    def __init__(self, in_features: int, out_features: int, bias: bool, act: Quantizer | None) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.act = act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = super().forward(h)
        return z if self.act is None else self.act(z)


class BinaryMLP(nn.Module):
    """``num_dim → num_dim`` ``hidden_layers`` times, each followed by a quantizer, then a linear
    readout ``num_dim → out_dim`` (docs/design.md §3). Parameters: ``fc1.weight … fcH.weight`` and
    ``readout.weight`` (plus biases when ``bias=True``).

    Weights are drawn i.i.d. ``N(0, 1/fan_in)`` (so a hidden pre-activation on ±1 inputs has unit
    variance) from a generator seeded with ``seed``; ``seed=None`` uses the global torch RNG.
    """

    def __init__(
        self,
        num_dim: int,
        hidden_layers: int = 3,
        out_dim: int = 1,
        act: str = "binary",
        surrogate: str = "clipped",
        bias: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_dim", num_dim), ("hidden_layers", hidden_layers), ("out_dim", out_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        self.num_dim = num_dim
        self.hidden_layers = hidden_layers
        self.out_dim = out_dim
        self.act_precision = act
        for k in range(1, hidden_layers + 1):
            setattr(self, f"fc{k}", LinearAct(num_dim, num_dim, bias, Quantizer(act, surrogate)))
        self.readout = LinearAct(num_dim, out_dim, bias, None)
        self.reset_parameters(seed)

    @property
    def units(self) -> list[nn.Module]:
        return [getattr(self, f"fc{k}") for k in range(1, self.hidden_layers + 1)] + [self.readout]

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        for unit in self.units:
            w = torch.randn(unit.weight.shape, generator=gen, dtype=torch.float64) / math.sqrt(unit.in_features)
            unit.weight.copy_(w)
            if unit.bias is not None:
                unit.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.num_dim:
            raise ValueError(f"x: expected inputs of width num_dim={self.num_dim}, got shape {tuple(x.shape)}")
        for unit in self.units:
            x = unit(x)
        return x


def __getattr__(name: str):
    # The thin ResNet lives in its own module; import lazily so the toy needs nothing of it.
    if name == "xnor_resnet18":
        from .resnet import xnor_resnet18

        return xnor_resnet18
    raise AttributeError(name)
