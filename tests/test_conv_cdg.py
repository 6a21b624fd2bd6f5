"""Conv CDG of the engine against an independent brute-force loop (float64).

The reference perturbs one weight in place, evaluates the whole network in eval mode twice and
restores the weight: nothing of the engine (prefix cache, single-channel update, chunking) is
used. Sampled coordinates cover the stem, BatchNorm parameters, plain and strided binary convs,
a downsampling shortcut conv, the head, and XNOR weights.
"""
import pytest
import torch
import torch.nn.functional as F

from lib.core import coordinates
from lib.core.estimators import cdg
from lib.core.models import xnor_resnet18

LAYERS = [
    "stem.conv.weight",
    "stem.bn.weight",
    "layer1.0.conv1.bn.bias",
    "layer1.0.conv1.conv.weight",            # first binary conv, stride 1
    "layer1.1.conv2.conv.weight",
    "layer2.0.conv1.conv.weight",            # strided
    "layer2.0.conv1.shortcut.conv.weight",   # 1×1 downsampling conv
    "layer2.0.conv1.shortcut.bn.weight",
    "layer3.1.conv1.conv.weight",
    "layer4.1.conv2.conv.weight",            # last binary conv: the suffix is the head only
    "head.fc.weight",
    "head.fc.bias",
]


def tiny_resnet(act="binary", binary_weights=False, c=2, seed=0):
    """A float64 thin ResNet with non-trivial BatchNorm statistics and affine parameters."""
    model = xnor_resnet18(c, num_classes=4, act=act, binary_weights=binary_weights, seed=seed).double()
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                k = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(k, generator=gen, dtype=torch.float64))
                m.running_var.copy_(0.5 + torch.rand(k, generator=gen, dtype=torch.float64))
                m.weight.copy_(0.5 + torch.rand(k, generator=gen, dtype=torch.float64))
                m.bias.copy_(0.2 * torch.randn(k, generator=gen, dtype=torch.float64))
    return model.eval()


def batch(n=3, size=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=gen)
    return x, y


@torch.no_grad()
def brute_force(model, x, y, name, eps, central, coords=None):
    """``(L(w + ε e_i) − L(w − ε e_i)) / 2ε`` (or one-sided) for each flat coordinate in ``coords``
    (default: all), by a plain loop; the others are NaN."""
    model.eval()
    p = dict(model.named_parameters())[name]
    flat = p.view(-1)

    def loss():
        return F.cross_entropy(model(x), y).item()

    base = loss()
    out = torch.full((p.numel(),), float("nan"), dtype=torch.float64)
    for i in (range(p.numel()) if coords is None else coords.tolist()):
        saved = flat[i].clone()
        flat[i] = saved + eps
        plus = loss()
        if central:
            flat[i] = saved - eps
            minus = loss()
            out[i] = (plus - minus) / (2 * eps)
        else:
            out[i] = (plus - base) / eps
        flat[i] = saved
    return out.reshape(p.shape)


def check_against_brute_force(model, x, y, layers, eps, central, coords_per_layer, seed=0, **kw):
    grads = cdg(model, x, y, loss="cross_entropy", eps=eps, central=central, layers=layers,
                coords_per_layer=coords_per_layer, seed=seed, **kw)
    assert list(grads) == [n for n, _ in model.named_parameters() if n in layers]
    for name in layers:
        g = grads[name]
        sampled = ~torch.isnan(g)
        ref = brute_force(model, x, y, name, eps, central, sampled.flatten().nonzero()[:, 0])
        numel = g.numel()
        expected = numel if coords_per_layer is None else min(numel, coords_per_layer)
        assert int(sampled.sum()) == expected, name
        torch.testing.assert_close(g[sampled], ref[sampled], rtol=1e-9, atol=1e-11, msg=name)
    return grads


@pytest.mark.parametrize("eps,central", [(0.3, True), (0.05, False)])
def test_conv_cdg_matches_brute_force(eps, central):
    model = tiny_resnet()
    x, y = batch()
    grads = check_against_brute_force(model, x, y, LAYERS, eps, central, coords_per_layer=12)
    # the perturbations do flip activations downstream: CDG is not the linearisation
    assert any(torch.nan_to_num(g).abs().sum() > 0 for g in grads.values())


def test_conv_cdg_all_coordinates_of_small_layers_and_16x16():
    model = tiny_resnet(c=2, seed=3)
    x, y = batch(n=2, size=16, seed=4)
    check_against_brute_force(model, x, y, ["layer1.0.conv2.conv.weight", "layer2.0.conv1.conv.weight"],
                              eps=0.2, central=True, coords_per_layer=None)


def test_xnor_weights_match_brute_force():
    model = tiny_resnet(binary_weights=True, seed=5)
    x, y = batch(seed=6)
    layers = ["layer1.0.conv1.conv.weight", "layer2.0.conv1.conv.weight", "layer3.1.conv2.conv.weight",
              "layer4.1.conv2.conv.weight"]
    # a large ε flips weight signs (the kernel's sign pattern changes), a small one only moves α
    for eps in (0.6, 0.01):
        check_against_brute_force(model, x, y, layers, eps=eps, central=True, coords_per_layer=16)


def test_xnor_sign_flip_case_is_exercised():
    model = tiny_resnet(binary_weights=True, seed=5)
    w = model.layer1[0].conv1.conv.weight
    with torch.no_grad():  # put a weight exactly at 0 and one just below: sign(0) = +1
        w.view(-1)[0] = 0.0
        w.view(-1)[1] = -0.01
    x, y = batch(seed=7)
    grads = cdg(model, x, y, loss="cross_entropy", eps=0.05, layers=["layer1.0.conv1.conv.weight"])
    ref = brute_force(model, x, y, "layer1.0.conv1.conv.weight", 0.05, True)
    torch.testing.assert_close(grads["layer1.0.conv1.conv.weight"], ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("act", ["ternary", "2bit", "fp"])
def test_other_precisions_match_brute_force(act):
    model = tiny_resnet(act=act, seed=8)
    x, y = batch(seed=9)
    check_against_brute_force(model, x, y, ["layer1.0.conv1.conv.weight", "layer2.0.conv1.conv.weight"],
                              eps=0.2, central=True, coords_per_layer=8)


def test_fast_path_is_used_for_binary_convs(monkeypatch):
    """Binary conv weights (full precision and XNOR) never take the generic vmap path."""
    def refuse(*args, **kwargs):
        raise AssertionError("generic path used for a conv weight")

    monkeypatch.setattr(coordinates, "_generic_unit_outputs", refuse)
    x, y = batch(seed=10)
    for binary_weights in (False, True):
        model = tiny_resnet(binary_weights=binary_weights, seed=11)
        names = model.binary_conv_names()
        cdg(model, x, y, loss="cross_entropy", eps=0.1, layers=names, coords_per_layer=3)


def test_chunking_sampling_and_device_do_not_change_results():
    model = tiny_resnet(seed=12)
    x, y = batch(n=4, seed=13)
    layers = ["layer1.0.conv1.conv.weight", "layer3.0.conv1.conv.weight"]
    small = cdg(model, x, y, loss="cross_entropy", eps=0.1, layers=layers, coords_per_layer=20, seed=4,
                budget_mb=0.001)
    large = cdg(model, x, y, loss="cross_entropy", eps=0.1, layers=layers, coords_per_layer=20, seed=4,
                budget_mb=256, device="cpu")
    again = cdg(model, x, y, loss="cross_entropy", eps=0.1, layers=layers, coords_per_layer=20, seed=4,
                budget_mb=0.001)
    other = cdg(model, x, y, loss="cross_entropy", eps=0.1, layers=layers, coords_per_layer=20, seed=5)
    for name in layers:
        torch.testing.assert_close(small[name], large[name], rtol=1e-12, atol=1e-14, equal_nan=True)
        assert torch.equal(torch.isnan(again[name]), torch.isnan(small[name]))
        torch.testing.assert_close(again[name], small[name], rtol=0, atol=0, equal_nan=True)
        assert not torch.equal(torch.isnan(other[name]), torch.isnan(small[name]))


def test_windows_equal_patches_columns():
    """The gathered windows are the im2col columns of ``BinaryConvUnit.patches`` (stride 1 and 2)."""
    model = tiny_resnet(c=4, seed=14)
    h = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    for unit, hin in ((model.layer1[0].conv1, h), (model.layer2[0].conv1, h)):
        a, out = unit.parts(hin)
        patches = unit.patches(a)
        coords = torch.arange(unit.conv.weight.numel())
        j, c, kh, kw, i = coordinates._conv_coords(unit.conv.weight.shape, coords)
        windows = coordinates._conv_windows(unit.conv, a, c, kh, kw, tuple(out.shape[-2:]))
        torch.testing.assert_close(windows, patches[:, i].transpose(0, 1), rtol=0, atol=0)
