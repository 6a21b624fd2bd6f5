import pytest
import torch
import torch.nn.functional as F

from lib.core.models import xnor_resnet18
from lib.core.quantizers import Quantizer, use_surrogate
from lib.core.resnet import BinaryConvUnit, XnorConv2d, xnor_weight


def expected_param_count(c: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """Counted by hand: stem conv + BN; per unit BN(in) + 3×3 conv; downsampling 1×1 conv + BN; head."""
    total = in_channels * c * 9 + 2 * c  # stem
    prev = c
    for s, w in enumerate((c, 2 * c, 4 * c, 8 * c)):
        for u in range(4):
            cin = prev if u == 0 else w
            total += 2 * cin + 9 * cin * w
            if s > 0 and u == 0:
                total += cin * w + 2 * w
        prev = w
    return total + 8 * c * num_classes + num_classes


def prefix(model, x, k):
    """Input of ``model.units[k]``."""
    for unit in model.units[:k]:
        x = unit(x)
    return x


@pytest.mark.parametrize("c", [8, 16])
def test_output_shape_and_param_count(c):
    model = xnor_resnet18(c, seed=0).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_param_count(c) == 2724 * c * c + 243 * c + 10


def test_units_compose_to_forward_and_names():
    model = xnor_resnet18(8, seed=1).eval()
    assert len(model.units) == 18
    assert sum(isinstance(u, BinaryConvUnit) for u in model.units) == 16
    x = torch.randn(3, 3, 32, 32)
    h = x
    for unit in model.units:
        h = unit(h)
    torch.testing.assert_close(h, model(x), rtol=0, atol=0)
    names = model.binary_conv_names()
    params = dict(model.named_parameters())
    assert len(names) == 16 and len(set(names)) == 16
    assert names[0] == "layer1.0.conv1.conv.weight" and names[-1] == "layer4.1.conv2.conv.weight"
    for name, unit in zip(names, model.binary_units):
        assert params[name] is unit.conv.weight
    strides = [u.stride for u in model.binary_units]
    assert strides == [1] * 4 + [2, 1, 1, 1] * 3
    assert {"stem.conv.weight", "head.fc.weight", "layer2.0.conv1.shortcut.conv.weight"} <= set(params)
    # every quantizer of the network is in a binary unit
    assert sum(isinstance(m, Quantizer) for m in model.modules()) == 16


def test_parts_consistent_with_forward():
    model = xnor_resnet18(8, seed=2).eval()
    x = torch.randn(2, 3, 32, 32)
    for k in (1, 5):  # non-strided, strided
        unit = model.units[k]
        h = prefix(model, x, k)
        a, out = unit.parts(h)
        assert set(a.unique().tolist()) <= {-1.0, 1.0}
        torch.testing.assert_close(out, unit(h), rtol=0, atol=0)
        torch.testing.assert_close(out, unit.conv(a) + unit.shortcut(h), rtol=0, atol=0)


@pytest.mark.parametrize("k", [3, 5])  # layer1.1.conv2 (stride 1), layer2.0.conv1 (stride 2)
def test_single_weight_perturbation_identity(k):
    model = xnor_resnet18(8, seed=3).double().eval()
    unit = model.units[k]
    assert unit.stride == (2 if k == 5 else 1)
    h = prefix(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), k)
    a, out = unit.parts(h)
    w = unit.conv.weight.detach()
    patches = unit.patches(a)
    assert patches.shape == (2, unit.in_channels * 9) + out.shape[-2:]
    delta = 0.37
    for j, c, kh, kw in [(0, 0, 0, 0), (3, 5, 1, 2), (unit.out_channels - 1, unit.in_channels - 1, 2, 1)]:
        e = torch.zeros_like(w)
        e[j, c, kh, kw] = 1.0
        direct = F.conv2d(a, w + delta * e, stride=unit.stride, padding=1) + unit.shortcut(h)
        onehot = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
        onehot[0, 0, kh, kw] = 1.0
        resp = F.conv2d(a[:, c:c + 1], onehot, stride=unit.stride, padding=1)
        via = out.clone()
        via[:, j:j + 1] += delta * resp
        torch.testing.assert_close(via, direct, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(patches[:, c * 9 + kh * 3 + kw], resp[:, 0], rtol=0, atol=0)
    # conv(a, W)[:, j] = Σ_i W[j].flatten()[i] · P[:, i]
    torch.testing.assert_close(torch.einsum("ji,nihw->njhw", w.flatten(1), patches), unit.conv(a))


def test_xnor_weights_forward_and_straight_through():
    model = xnor_resnet18(8, binary_weights=True, seed=4).double().eval()
    unit = model.units[5]
    assert isinstance(unit.conv, XnorConv2d)
    w = unit.conv.weight
    alpha = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    wb = torch.sign(w.detach()) * alpha
    torch.testing.assert_close(xnor_weight(w.detach()), wb, rtol=0, atol=0)
    a = torch.randn(2, unit.in_channels, 16, 16, dtype=torch.float64)
    out = unit.conv(a)
    torch.testing.assert_close(out, F.conv2d(a, wb, stride=2, padding=1))
    # backward: identity to the latent weight, i.e. the gradient of a plain conv at W_b
    g = torch.randn_like(out)
    (out * g).sum().backward()
    wb_leaf = wb.clone().requires_grad_(True)
    (F.conv2d(a, wb_leaf, stride=2, padding=1) * g).sum().backward()
    torch.testing.assert_close(w.grad, wb_leaf.grad)
    # full-precision default is a plain conv
    assert type(xnor_resnet18(8, seed=4).units[5].conv) is torch.nn.Conv2d


def test_seed_determinism():
    a = xnor_resnet18(8, seed=7).state_dict()
    b = xnor_resnet18(8, seed=7).state_dict()
    c = xnor_resnet18(8, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layer1.0.conv1.conv.weight"], c["layer1.0.conv1.conv.weight"])
    model = xnor_resnet18(8, seed=7)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)


@pytest.mark.parametrize("binary_weights", [False, True])
def test_gradient_reaches_every_parameter(binary_weights):
    torch.manual_seed(0)
    model = xnor_resnet18(8, binary_weights=binary_weights, seed=5).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with use_surrogate(model, "clipped"):
        F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_invalid_arguments():
    with pytest.raises(ValueError, match="initial_channels"):
        xnor_resnet18(0)
    with pytest.raises(ValueError, match="precision"):
        xnor_resnet18(8, act="bogus")
    with pytest.raises(ValueError, match="x:"):
        xnor_resnet18(8, seed=0)(torch.randn(2, 1, 32, 32))
