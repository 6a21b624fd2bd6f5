"""The estimator-equality tests on a CUDA device (marked ``cuda``; skipped without one). Each
compares the estimate computed on the device with an independent CPU reference in float64.

``TEST_DEVICE=cpu`` runs the same code on the CPU, to check the tests themselves."""
from __future__ import annotations

import os

import pytest
import torch

from lib.core import estimators as E
from lib.core.names import PRECISIONS
from test_estimators import brute_force_cdg, small_problem

DEVICE = os.environ.get("TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device")]


def _close(got: dict, ref: dict, **tol) -> None:
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].device.type == torch.device(DEVICE).type
        torch.testing.assert_close(got[name].cpu(), ref[name].to(got[name].dtype), equal_nan=True, **tol)


@pytest.mark.parametrize("act", PRECISIONS)
def test_cdg_on_the_device_equals_the_cpu_brute_force_loop(act):
    model, x, y = small_problem(act, bias=True)
    _close(E.cdg(model, x, y, eps=0.1, device=DEVICE), brute_force_cdg(model, x, y, 0.1, True), rtol=1e-9, atol=1e-11)


def test_nes_on_the_device_equals_nes_on_the_cpu():
    """The directions come from the same seeded CPU generator, so only the arithmetic moves."""
    model, x, y = small_problem("binary", num_dim=8)
    got = E.nes_sigmas(model, x, y, sigmas=[0.01, 0.1, 1.0], samples=[50, 400], seed=5, device=DEVICE)
    ref = E.nes_sigmas(model, x, y, sigmas=[0.01, 0.1, 1.0], samples=[50, 400], seed=5)
    for sigma in got:
        for s in (50, 400):
            _close(got[sigma][s], ref[sigma][s], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("variant", ["identity", "clipped", "swishsign"])
def test_ste_and_smoothed_exact_on_the_device_equal_the_cpu(variant):
    model, x, y = small_problem("binary", num_dim=8)
    ref_ste, ref_exact = E.ste(model, x, y, variant=variant), E.smoothed_exact(model, x, y, 0.3)
    model.to(DEVICE)
    x, y = x.to(DEVICE), y.to(DEVICE)
    _close(E.ste(model, x, y, variant=variant), ref_ste, rtol=1e-9, atol=1e-11)
    _close(E.smoothed_exact(model, x, y, 0.3), ref_exact, rtol=1e-8, atol=1e-10)


def test_thin_resnet_conv_cdg_on_the_device_equals_the_cpu():
    from lib.core.resnet import xnor_resnet18

    torch.manual_seed(0)
    model = xnor_resnet18(initial_channels=2, num_classes=3).double().eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    names = model.binary_conv_names()[:2] + model.binary_conv_names()[-1:]
    kw = dict(loss="cross_entropy", eps=0.1, layers=names, coords_per_layer=4, seed=1)
    _close(E.cdg(model, x, y, device=DEVICE, **kw), E.cdg(model, x, y, **kw), rtol=1e-9, atol=1e-11)
