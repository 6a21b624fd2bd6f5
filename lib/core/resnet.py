"""The thin XNOR-ResNet-18 of docs/design.md §4 (Bi-Real / XNOR-ResNet-18 depth for 32×32 inputs).

Layout, with ``c = initial_channels`` and ``q`` a :class:`~lib.core.quantizers.Quantizer`::

    stem      h = BN(conv3x3(x))                              full precision, in_channels → c
    16 units  h' = conv3x3(q(BN(h))) + shortcut(h)            four stages × two blocks × two convs,
                                                              widths c, 2c, 4c, 8c
    head      logits = Linear(mean_{H,W} h)                   full precision, 8c → num_classes

The first conv of stages 2, 3, 4 has stride 2 and doubles the channels; its shortcut is
``BN(conv1x1(avgpool2(h)))``. Every other shortcut is the identity.

Parameter names (``model.named_parameters()``)::

    stem.conv.weight, stem.bn.weight, stem.bn.bias
    layer{s}.{b}.conv{k}.bn.weight / .bn.bias        s ∈ 1..4 (stage), b ∈ 0..1 (block), k ∈ 1..2
    layer{s}.{b}.conv{k}.conv.weight                 the 16 binary-input convs (binary_conv_names())
    layer{s}.0.conv1.shortcut.conv.weight            s ∈ 2..4, the 1×1 downsampling conv
    layer{s}.0.conv1.shortcut.bn.weight / .bias
    head.fc.weight, head.fc.bias

``model.units == [stem, layer1.0.conv1, layer1.0.conv2, layer1.1.conv1, …, layer4.1.conv2, head]``
and ``model(x)`` is their composition.

Single-weight perturbation (docs/design.md §7): for a unit with conv input ``a = q(BN(h))`` (see
:meth:`BinaryConvUnit.parts`), the conv is linear in its weight, so perturbing the
full-precision weight ``W[j, c, kh, kw]`` by ``δ`` changes only output channel ``j``::

    out'[:, j] = out[:, j] + δ · conv2d(a[:, c:c+1], E_{kh,kw}, stride, padding=1)
               = out[:, j] + δ · P[:, c·kH·kW + kh·kW + kw]        (P = unit.patches(a))

with ``E_{kh,kw}`` the one-hot 3×3 kernel. This identity holds for ``binary_weights=False``; with
XNOR weights the effective kernel of channel ``j``, ``sign(W_j) · mean|W_j|``, changes as a whole
(still only channel ``j``), see :meth:`XnorConv2d.effective_weight`.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import Quantizer


# ----------------------------------------------------------------------------- XNOR weights

def xnor_weight(weight: torch.Tensor) -> torch.Tensor:
    """``W_b = sign(W) · α`` with ``α_j = mean_{c,kh,kw} |W_{j,c,kh,kw}|`` per output channel ``j``
    and ``sign(0) = +1``. Forward value only; see :class:`XnorConv2d` for the gradient."""
    alpha = weight.abs().mean(dim=tuple(range(1, weight.dim())), keepdim=True)
    return torch.where(weight >= 0, alpha, -alpha)


class XnorConv2d(nn.Conv2d):
    """Conv whose forward uses the XNOR weight ``sign(W) · mean|W|`` (per output channel) and whose
    backward is straight-through to the latent ``W``: ``∂L/∂W := ∂L/∂W_b`` (identity)."""

    def effective_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``W + (xnor_weight(W) − W).detach()``: value ``xnor_weight(W)``, Jacobian the identity."""
        w = self.weight if weight is None else weight
        return w + (xnor_weight(w) - w).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


def _conv3x3(in_channels: int, out_channels: int, stride: int, binary_weights: bool) -> nn.Conv2d:
    cls = XnorConv2d if binary_weights else nn.Conv2d
    return cls(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


# ----------------------------------------------------------------------------- units

class Stem(nn.Module):
    """Full-precision stem: ``h = BN(conv3x3(x))`` (no activation; each unit normalises its input)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BinaryConvUnit(nn.Module):
    """One binary conv with its shortcut: ``out = conv(q(bn(h))) + shortcut(h)``.

    ``bn`` is BatchNorm over the ``in_channels`` of ``h``; ``q`` (attribute ``act``) the activation
    quantizer; ``conv`` a 3×3, padding 1, bias-free conv (``XnorConv2d`` with binary weights);
    ``shortcut`` the identity, or ``BN(conv1x1(avgpool2(h)))`` when the unit downsamples.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, act: str, surrogate: str,
                 binary_weights: bool) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride: expected 1 or 2, got {stride!r}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError("an identity shortcut needs in_channels == out_channels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.bn = nn.BatchNorm2d(in_channels)
        self.act = Quantizer(act, surrogate)
        self.conv = _conv3x3(in_channels, out_channels, stride, binary_weights)
        if stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(OrderedDict(
                pool=nn.AvgPool2d(2),
                conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                bn=nn.BatchNorm2d(out_channels),
            ))

    def parts(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, out)`` with ``a = q(bn(h))`` the conv input and ``out = conv(a) + shortcut(h)``."""
        a = self.act(self.bn(h))
        return a, self.conv(a) + self.shortcut(h)

    def patches(self, a: torch.Tensor) -> torch.Tensor:
        """im2col of the conv input: ``P[n, c·kH·kW + kh·kW + kw, y, x] = a_pad[n, c, y·s + kh, x·s + kw]``,
        shape ``(N, in_channels·kH·kW, H_out, W_out)``: ``∂out[:, j] / ∂W[j, c, kh, kw]`` for every ``j``.

        ``conv(a, W)[:, j] = Σ_i W[j].flatten()[i] · P[:, i]``.
        """
        kh, kw = self.conv.kernel_size
        cols = F.unfold(a, (kh, kw), padding=self.conv.padding, stride=self.conv.stride)
        h_out = (a.shape[-2] + 2 * self.conv.padding[0] - kh) // self.conv.stride[0] + 1
        w_out = (a.shape[-1] + 2 * self.conv.padding[1] - kw) // self.conv.stride[1] + 1
        return cols.reshape(a.shape[0], -1, h_out, w_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.parts(h)[1]


class BasicBlock(nn.Module):
    """Two binary conv units: ``conv2(conv1(h))`` (``conv1`` may downsample)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, act: str, surrogate: str,
                 binary_weights: bool) -> None:
        super().__init__()
        self.conv1 = BinaryConvUnit(in_channels, out_channels, stride, act, surrogate, binary_weights)
        self.conv2 = BinaryConvUnit(out_channels, out_channels, 1, act, surrogate, binary_weights)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(h))


class Head(nn.Module):
    """Full-precision classifier: ``logits = fc(mean_{H,W} h)``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(h), 1))


# ----------------------------------------------------------------------------- the network

class XnorResNet(nn.Module):
    """Stem, ``layer1 … layer4`` (``nn.ModuleList`` of two :class:`BasicBlock` each), head; see the
    module docstring for the formulas and parameter names."""

    def __init__(self, initial_channels: int = 8, num_classes: int = 10, act: str = "binary",
                 surrogate: str = "clipped", binary_weights: bool = False, in_channels: int = 3,
                 seed: int | None = None) -> None:
        super().__init__()
        for name, value in (("initial_channels", initial_channels), ("num_classes", num_classes),
                            ("in_channels", in_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        c = initial_channels
        self.initial_channels = c
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.act_precision = act
        self.binary_weights = bool(binary_weights)
        self.stem = Stem(in_channels, c)
        widths = (c, 2 * c, 4 * c, 8 * c)
        prev = c
        for s, width in enumerate(widths, start=1):
            stride = 1 if s == 1 else 2
            blocks = nn.ModuleList([
                BasicBlock(prev, width, stride, act, surrogate, binary_weights),
                BasicBlock(width, width, 1, act, surrogate, binary_weights),
            ])
            setattr(self, f"layer{s}", blocks)
            prev = width
        self.head = Head(prev, num_classes)
        self.reset_parameters(seed)

    @property
    def stages(self) -> list[nn.ModuleList]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    @property
    def binary_units(self) -> list[BinaryConvUnit]:
        """The 16 :class:`BinaryConvUnit`, front to back."""
        return [unit for stage in self.stages for block in stage for unit in (block.conv1, block.conv2)]

    @property
    def units(self) -> list[nn.Module]:
        """``[stem, 16 binary conv units, head]``; ``model(x)`` is their composition."""
        return [self.stem, *self.binary_units, self.head]

    def binary_convs(self) -> list[dict[str, object]]:
        """The 16 binary-input conv weights, front to back: ``{name, stage, block, conv}`` with the
        parameter name ``layer{stage}.{block}.conv{conv}.conv.weight``, stage 1–4, block 0–1, conv 1–2."""
        return [{"name": f"layer{s}.{b}.conv{k}.conv.weight", "stage": s, "block": b, "conv": k}
                for s in range(1, 5) for b in range(2) for k in (1, 2)]

    def binary_conv_names(self) -> list[str]:
        """Parameter names of the 16 binary-input conv weights, front to back."""
        return [c["name"] for c in self.binary_convs()]

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Convs: kaiming-normal ``N(0, 2 / fan_in)``, ``fan_in = C_in·kH·kW``; Linear:
        ``U(−1/√fan_in, 1/√fan_in)`` for weight and bias; BatchNorm: weight 1, bias 0, running
        mean 0, var 1. Drawn in module order from a generator seeded with ``seed`` (``None``: the
        global torch RNG), so the same seed gives identical parameters."""
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                w = torch.randn(module.weight.shape, generator=gen, dtype=torch.float64) * math.sqrt(2.0 / fan_in)
                module.weight.copy_(w)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                w = (torch.rand(module.weight.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
                module.weight.copy_(w)
                if module.bias is not None:
                    b = (torch.rand(module.bias.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
                    module.bias.copy_(b)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.weight.fill_(1.0)
                module.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected (N, {self.in_channels}, H, W) images, got shape {tuple(x.shape)}")
        for unit in self.units:
            x = unit(x)
        return x


def xnor_resnet18(initial_channels: int = 8, num_classes: int = 10, act: str = "binary",
                  surrogate: str = "clipped", binary_weights: bool = False, in_channels: int = 3,
                  seed: int | None = None) -> XnorResNet:
    """The thin XNOR-ResNet-18 of docs/design.md §4 with widths ``c, 2c, 4c, 8c`` (``c = initial_channels``);
    ``act`` is the activation precision of the 16 binary conv units, ``binary_weights`` switches
    their convs to XNOR weights ``sign(W) · mean|W|``."""
    return XnorResNet(initial_channels, num_classes, act, surrogate, binary_weights, in_channels, seed)
