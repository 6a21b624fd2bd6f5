"""Held-out loss decreases of steps on chosen layers against a brute-force loop over copies of the
model (lib/core/evaluate.HeldOutSet)."""
import copy

import numpy as np
import pytest
import torch

from lib.core.evaluate import HeldOutSet, loss_decrease
from lib.core.models import BinaryMLP


@torch.no_grad()
def brute_force(model, x, y, grads, lrs, layers):
    """Copy the model per lr, step the chosen layers by lr · g_l / ‖g_l‖, compute the MSE."""
    base = float(((model(x) - y) ** 2).mean())
    out = []
    for lr in lrs:
        m = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name in layers:
                    g = grads[name]
                    p -= lr * g / g.norm()
        out.append(base - float(((m(x) - y) ** 2).mean()))
    return np.array(out)


@pytest.mark.parametrize("layers", [["fc1.weight", "fc2.weight", "fc3.weight"], ["fc3.weight"], ["fc2.weight"],
                                    ["readout.weight"], ["fc1.weight", "fc2.weight", "fc3.weight", "readout.weight"]])
def test_decrease_of_a_step_on_chosen_layers(layers):
    torch.manual_seed(0)
    model = BinaryMLP(6, act="binary", seed=3).double()
    teacher = BinaryMLP(6, act="binary", seed=4).double()
    x = torch.randn(500, 6, dtype=torch.float64)
    with torch.no_grad():
        y = teacher(x)
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    lrs = [0.0, 0.01, 0.1, 0.5, 2.0]
    held = HeldOutSet(model, x, y)
    got = held.decrease(grads, lrs, layers)
    want = brute_force(model, x, y, grads, lrs, layers)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[0] == 0.0 and np.abs(want[1:]).max() > 0  # the steps change the loss
    if len(layers) == 4:  # every layer stepped: the same as the all-layer loss decrease
        np.testing.assert_allclose(got, loss_decrease(model, x, y, grads, lrs), rtol=0, atol=1e-12)


def test_unknown_or_missing_layers_are_refused():
    model = BinaryMLP(4, seed=0)
    held = HeldOutSet(model, torch.randn(10, 4), torch.randn(10, 1))
    with pytest.raises(ValueError, match="no estimate"):
        held.decrease({"fc1.weight": torch.ones(4, 4)}, [0.1], ["fc2.weight"])
    with pytest.raises(ValueError, match="no parameter"):
        held.decrease({"bogus": torch.ones(4, 4)}, [0.1], ["bogus"])
