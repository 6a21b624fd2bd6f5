"""Estimators against independent references: brute-force loops, closed forms, exact autograd."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.core import directions, engine
from lib.core import estimators as E
from lib.core import evaluate as V
from lib.training.gaussian import toy_problem
from lib.core.losses import batch_loss
from lib.core.models import BinaryMLP
from lib.core.quantizers import Quantizer, get_surrogate, level_index, levels, quantize, quantize_


def brute_force_cdg(model, x, y, eps, central, loss="mse", names=None):
    """Perturb one weight in place, recompute the whole loss: the definition, coordinate by coordinate."""
    def value():
        with torch.no_grad():
            return batch_loss(model(x), y, loss).item()

    base = value()
    out = {}
    for name, p in model.named_parameters():
        if names is not None and name not in names:
            continue
        g = torch.zeros(p.numel(), dtype=torch.float64)
        flat = p.data.view(-1)
        for i in range(p.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            plus = value()
            flat[i] = old - eps
            minus = value()
            flat[i] = old
            g[i] = (plus - minus) / (2 * eps) if central else (plus - base) / eps
        out[name] = g.view(p.shape)
    return out


def small_problem(act="binary", num_dim=6, batch=200, seed=0, bias=False):
    prob = toy_problem(num_dim, seed, act=act, dtype=torch.float64)
    model = prob.student
    if bias:
        model = BinaryMLP(num_dim, act=act, bias=True, seed=seed).double()
        with torch.no_grad():
            for unit in model.units:
                unit.bias.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed + 7))
    x, y = prob.batch(batch, 0, dtype=torch.float64)
    return model, x, y


@pytest.mark.parametrize("act", ["binary", "ternary", "2bit", "fp"])
@pytest.mark.parametrize("central", [True, False])
def test_cdg_equals_brute_force_loop(act, central):
    model, x, y = small_problem(act)
    got = E.cdg(model, x, y, eps=0.1, central=central)
    ref = brute_force_cdg(model, x, y, 0.1, central)
    assert set(got) == set(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-11)
    assert any(ref[n].abs().max() > 1e-3 for n in ref)  # a non-trivial gradient was compared


@pytest.mark.parametrize("act", ["ternary", "2bit", "fp"])
@pytest.mark.parametrize("eps", [0.03, 0.9])
def test_cdg_with_biases_and_level_jumps_equals_brute_force_loop(act, eps):
    """ε = 0.9 moves 2-bit and ternary units over several levels at once; biases take the bias path;
    fp with biases takes the affine closed form (MSE) for every layer."""
    model, x, y = small_problem(act, bias=True)
    ref = brute_force_cdg(model, x, y, eps, True)
    got = E.cdg(model, x, y, eps=eps)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-11)
    assert all(ref[n].abs().max() > 1e-4 for n in ref)


def test_cdg_full_precision_cross_entropy_equals_brute_force():
    """Not MSE: the affine unit's rows go through the suffix instead of the closed form."""
    model = BinaryMLP(5, hidden_layers=2, out_dim=3, act="fp", bias=True, seed=2).double()
    x = torch.randn(120, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(1))
    ref = brute_force_cdg(model, x, y, 0.2, False, loss="cross_entropy")
    got = E.cdg(model, x, y, loss="cross_entropy", eps=0.2, central=False)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-11)


def test_cdg_with_biases_and_budget_independent_of_chunking():
    model, x, y = small_problem("binary", bias=True)
    ref = brute_force_cdg(model, x, y, 0.05, True)
    for budget in (8, 0.001):
        got = E.cdg(model, x, y, eps=0.05, budget_mb=budget)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-11)


def test_cdg_sampled_coordinates_are_seeded_and_nan_elsewhere():
    model, x, y = small_problem("binary", num_dim=8)
    ref = brute_force_cdg(model, x, y, 0.1, True)
    got = E.cdg(model, x, y, coords_per_layer=10, seed=3)
    again = E.cdg(model, x, y, coords_per_layer=10, seed=3)
    other = E.cdg(model, x, y, coords_per_layer=10, seed=4)
    for name, g in got.items():
        finite = torch.isfinite(g)
        assert int(finite.sum()) == min(10, g.numel())
        torch.testing.assert_close(g[finite], ref[name][finite], rtol=1e-9, atol=1e-11)
        assert torch.equal(torch.isfinite(again[name]), finite)
    assert any(not torch.equal(torch.isfinite(other[n]), torch.isfinite(got[n])) for n in got)


def test_cdg_cross_entropy_multiclass_equals_brute_force():
    torch.manual_seed(0)
    model = BinaryMLP(5, hidden_layers=2, out_dim=3, seed=1).double()
    x = torch.randn(150, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (150,))
    got = E.cdg(model, x, y, loss="cross_entropy", eps=0.2)
    ref = brute_force_cdg(model, x, y, 0.2, True, loss="cross_entropy")
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-11)


def test_central_cdg_on_readout_equals_autograd():
    """The loss is quadratic in the readout, so the central difference is exact there."""
    model, x, y = small_problem("binary", num_dim=10)
    got = E.cdg(model, x, y, eps=0.3, layers=["readout.weight"])
    w = model.readout.weight.detach().clone().requires_grad_(True)
    with torch.no_grad():
        h = x
        for unit in model.units[:-1]:
            h = unit(h)
    ref = torch.autograd.grad(F.mse_loss(h @ w.T, y), w)[0]
    assert list(got) == ["readout.weight"]
    torch.testing.assert_close(got["readout.weight"], ref, rtol=1e-10, atol=1e-12)


def test_smoothed_loss_matches_monte_carlo_average():
    model, x, y = small_problem("binary", num_dim=8, batch=64)
    sigma = 0.4
    exact = E.smoothed_loss(model, x, y, sigma).item()
    gen = torch.Generator().manual_seed(11)
    W, v = model.fc3.weight.detach(), model.readout.weight.detach()
    with torch.no_grad():
        h = model.fc2(model.fc1(x))
        samples = []
        for _ in range(4000):
            W2 = W + sigma * torch.randn(W.shape, generator=gen, dtype=W.dtype)
            v2 = v + sigma * torch.randn(v.shape, generator=gen, dtype=v.dtype)
            out = torch.where(h @ W2.T >= 0, 1.0, -1.0).double() @ v2.T
            samples.append(((out - y) ** 2).mean().item())
    mc, se = np.mean(samples), np.std(samples) / math.sqrt(len(samples))
    assert abs(mc - exact) < 4 * se + 1e-12


def test_nes_approaches_smoothed_exact_as_samples_grow():
    model, x, y = small_problem("binary", num_dim=8, batch=256)
    sigma = 0.3
    layers = ["fc3.weight", "readout.weight"]
    exact = E.smoothed_exact(model, x, y, sigma)
    assert set(exact) == set(layers)
    ests = E.nes_multi(model, x, y, sigma=sigma, samples=[100, 20000], layers=layers, seed=5)
    err = {s: math.sqrt(sum(((ests[s][n] - exact[n]) ** 2).sum().item() for n in layers)) for s in ests}
    scale = math.sqrt(sum((exact[n] ** 2).sum().item() for n in layers))
    assert err[20000] < err[100] / 5  # Monte-Carlo error shrinks like 1/sqrt(S): sqrt(200) ≈ 14
    assert V.cosine(ests[20000], exact)["all"] > 0.98
    assert err[20000] < 0.2 * scale


@pytest.mark.parametrize("layers,antithetic,shaping", [
    (None, True, False), (["fc3.weight", "readout.weight"], True, False), (None, False, False), (None, True, True),
    (["fc2.weight", "readout.bias"], False, True),
])
def test_nes_over_several_sigmas_is_each_sigmas_own_call_bit_for_bit(layers, antithetic, shaping):
    """One multi-σ call shares the stream and the head's projection; in float32, with chunks
    small enough to need several, each σ must equal its own nes_multi call exactly."""
    model, x, y = small_problem("binary", num_dim=6, bias=True)
    model, x, y = model.float(), x.float(), y.float()
    sigmas = [0.01, 0.3, 2.0]
    kw = dict(samples=[9, 40], layers=layers, antithetic=antithetic, fitness_shaping=shaping, seed=4, budget_mb=0.02)
    together = E.nes_sigmas(model, x, y, sigmas=sigmas, **kw)
    assert list(together) == sigmas
    for sigma in sigmas:
        alone = E.nes_multi(model, x, y, sigma=sigma, **kw)
        for s in (9, 40):
            for n, g in alone[s].items():
                assert torch.equal(together[sigma][s][n], g), (sigma, s, n)
    with pytest.raises(ValueError, match="^sigmas: expected distinct"):
        E.nes_sigmas(model, x, y, sigmas=[0.1, 0.1], **kw)


def _loop_weights(f_plus: list[float], f_minus: list[float], base: float, sigma: float, antithetic: bool,
                  shaping: bool) -> list[float]:
    """The NES weights w_k of g = Σ_k w_k u_k, written out: (f⁺ − f⁻)/2σS, or (f⁺ − L(w))/σS;
    with shaping, each loss replaced by its rank among all evaluations mapped onto [−0.5, 0.5]
    (and no baseline)."""
    s = len(f_plus)
    if shaping:
        values = f_plus + f_minus if antithetic else f_plus
        order = sorted(range(len(values)), key=lambda i: values[i])
        rank = [0.0] * len(values)
        for r, i in enumerate(order):
            rank[i] = r / (len(values) - 1) - 0.5
        f_plus, f_minus, base = rank[:s], rank[s:], 0.0
    if antithetic:
        return [(f_plus[k] - f_minus[k]) / (2 * sigma * s) for k in range(s)]
    return [(f_plus[k] - base) / (sigma * s) for k in range(s)]


@pytest.mark.parametrize("antithetic,shaping", [(True, False), (False, False), (True, True), (False, True)])
def test_nes_over_several_sigmas_equals_a_loop_over_perturbed_copies(antithetic, shaping):
    """Float64, several chunks: g_σ = Σ_k w_k u_k with u the seeded stream, each L from a
    perturbed deep copy of the model, w written out in :func:`_loop_weights`."""
    model, x, y = small_problem("ternary", num_dim=5, batch=50, bias=True)
    sigmas, samples, seed = [0.05, 0.5], 30, 8
    budget = 1e3 if antithetic and not shaping else 0.02  # one chunk, or several
    got = E.nes_sigmas(model, x, y, sigmas=sigmas, samples=[samples], seed=seed, budget_mb=budget,
                       antithetic=antithetic, fitness_shaping=shaping)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    dim = sum(params[n].numel() for n in names)
    u = torch.randn(samples, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def loss_at(offset: torch.Tensor) -> float:
        twin, off = copy.deepcopy(model), 0
        with torch.no_grad():
            for n, p in twin.named_parameters():
                p.add_(offset[off:off + p.numel()].reshape(p.shape))
                off += p.numel()
            return float(F.mse_loss(twin(x), y))

    base = loss_at(torch.zeros(dim, dtype=torch.float64))
    for sigma in sigmas:
        f_plus = [loss_at(sigma * u[k]) for k in range(samples)]
        f_minus = [loss_at(-sigma * u[k]) for k in range(samples)] if antithetic else []
        w = _loop_weights(f_plus, f_minus, base, sigma, antithetic, shaping)
        flat = sum(w[k] * u[k] for k in range(samples))
        want = torch.cat([got[sigma][samples][n].flatten() for n in names])
        torch.testing.assert_close(want, flat, rtol=1e-10, atol=1e-12)


def test_nes_nested_sample_counts_equal_separate_runs_and_seed_determinism():
    model, x, y = small_problem("binary", num_dim=6)
    multi = E.nes_multi(model, x, y, sigma=0.2, samples=[7, 40], seed=2, budget_mb=0.01)
    for s in (7, 40):
        single = E.nes(model, x, y, sigma=0.2, samples=s, seed=2, budget_mb=0.01)
        for n in single:
            torch.testing.assert_close(single[n], multi[s][n])
    again = E.nes(model, x, y, sigma=0.2, samples=40, seed=2, budget_mb=0.01)
    other = E.nes(model, x, y, sigma=0.2, samples=40, seed=3, budget_mb=0.01)
    assert all(torch.equal(again[n], multi[40][n]) for n in again)
    assert not all(torch.equal(other[n], multi[40][n]) for n in other)


def test_nes_non_antithetic_and_fitness_shaping_point_downhill_on_a_smooth_model():
    """With full-precision activations the smoothed gradient ≈ the true gradient (autograd)."""
    model, x, y = small_problem("fp", num_dim=5)
    true = E.ste(model, x, y)  # fp activations: back-propagation is exact
    for kwargs in ({"antithetic": False}, {"fitness_shaping": True}, {}):
        est = E.nes(model, x, y, sigma=0.01, samples=4000, seed=1, **kwargs)
        assert V.cosine(est, true)["all"] > 0.8, kwargs


def test_ste_full_precision_equals_autograd_of_plain_network():
    model, x, y = small_problem("fp")
    got = E.ste(model, x, y, variant="identity")
    ws = [u.weight.detach().clone().requires_grad_(True) for u in model.units]
    h = x
    for w in ws:
        h = h @ w.T
    ref = torch.autograd.grad(F.mse_loss(h, y), ws)
    for (name, g), r in zip(got.items(), ref):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("variant", ["identity", "clipped", "steep", "swishsign", "polynomial"])
def test_ste_equals_manual_backprop_with_surrogate(variant):
    model, x, y = small_problem("binary")
    got = E.ste(model, x, y, variant=variant)
    g = get_surrogate(variant).grad
    # manual chain rule through the three binary layers and the readout
    with torch.no_grad():
        acts, pres = [x], []
        for unit in model.units[:-1]:
            pres.append(acts[-1] @ unit.weight.T)
            acts.append(torch.where(pres[-1] >= 0, 1.0, -1.0).double())
        out = acts[-1] @ model.readout.weight.T
        d_out = 2 * (out - y) / y.numel()
        ref = {"readout.weight": d_out.T @ acts[-1]}
        d_h = d_out @ model.readout.weight
        for k in range(len(pres) - 1, -1, -1):
            d_z = d_h * g(pres[k])
            ref[f"fc{k + 1}.weight"] = d_z.T @ acts[k]
            d_h = d_z @ model.units[k].weight
    for name in ref:
        torch.testing.assert_close(got[name], ref[name])


def test_surrogate_shapes():
    x = torch.tensor([-2.0, -1.0, -0.5, -0.2, 0.0, 0.2, 0.5, 1.0, 2.0], dtype=torch.float64)
    assert torch.equal(get_surrogate("identity").grad(x), torch.ones_like(x))
    assert torch.equal(get_surrogate("clipped").grad(x), (x.abs() <= 1).double())
    assert torch.equal(get_surrogate("steep").grad(x), 3.0 * (x.abs() <= 1 / 3).double())
    torch.testing.assert_close(get_surrogate("polynomial").grad(x),
                               torch.tensor([0, 0, 1.0, 1.6, 2.0, 1.6, 1.0, 0, 0], dtype=torch.float64))
    xs = x.clone().requires_grad_(True)
    beta = 5.0
    s = torch.sigmoid(beta * xs)
    f = 2 * s * (1 + beta * xs * (1 - s)) - 1
    ref = torch.autograd.grad(f.sum(), xs)[0]
    torch.testing.assert_close(get_surrogate("swishsign").grad(x), ref)
    # every surrogate integrates to about 2 = sign(+inf) - sign(-inf), except identity
    grid = torch.linspace(-10, 10, 200001, dtype=torch.float64)
    for name in ("clipped", "steep", "swishsign", "polynomial"):
        area = torch.trapezoid(get_surrogate(name).grad(grid), grid).item()
        assert abs(area - 2.0) < 1e-3, name


def test_quantizer_forward_levels_and_backward_uses_surrogate():
    x = torch.tensor([-1.5, -0.7, -0.2, 0.0, 0.1, 0.4, 0.6, 3.0])
    assert quantize(x, "binary").tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]
    assert quantize(x, "ternary").tolist() == [-1, -1, 0, 0, 0, 0, 1, 1]
    assert torch.allclose(quantize(x, "2bit"), torch.tensor([-1, -1, -1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1]))
    q = Quantizer("binary", "polynomial")
    xs = x.clone().requires_grad_(True)
    q(xs).sum().backward()
    torch.testing.assert_close(xs.grad, torch.clamp(2 - 2 * x.abs(), min=0))


@pytest.mark.parametrize("precision", ["binary", "ternary", "2bit"])
def test_level_index_picks_the_quantized_level_including_ties(precision):
    lv = levels(precision)
    ties = [(u + v) / 2 for u, v in zip(lv, lv[1:])]  # the thresholds themselves
    x = torch.cat([torch.tensor(ties + [-0.0, 0.0, -5.0, 5.0]), torch.randn(1000, generator=torch.Generator().manual_seed(0))])
    k = level_index(x, precision)
    assert torch.equal(quantize(torch.tensor(lv), precision)[k], quantize(x, precision))  # exactly, ties too


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.mark.parametrize("dtype", list(_BITS))
@pytest.mark.parametrize("precision", ["binary", "ternary", "2bit", "fp"])
def test_in_place_quantizer_gives_the_same_bits(precision, dtype):
    """quantize_ against quantize, compared as bit patterns (so ±0 and NaN's sign count): the
    levels' thresholds, signed zeros, infinities, NaNs of both signs, subnormals, random values."""
    lv = [-1.0, -1 / 3, 0.0, 1 / 3, 1.0]
    special = [(u + v) / 2 for u, v in zip(lv, lv[1:])] + [-0.0, 0.0, 1e-40, -1e-40, 5e-324, float("inf"),
                                                          -float("inf"), float("nan"), -float("nan"), 1.0, -1.0]
    x = torch.cat([torch.tensor(special, dtype=torch.float64),
                   3 * torch.randn(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)]).to(dtype)
    x = x.reshape(-1, 1).expand(-1, 3).contiguous()  # a 2-d block, as in a batched pass
    want = quantize(x, precision)
    got = quantize_(x.clone(), precision)
    assert torch.equal(got.view(_BITS[dtype]), want.view(_BITS[dtype]))
    with pytest.raises(ValueError, match="precision"):
        quantize_(x.clone(), "4bit")


def test_level_index_refuses_full_precision():
    with pytest.raises(ValueError, match="precision"):
        level_index(torch.zeros(3), "fp")


def test_same_seed_same_numbers():
    model, x, y = small_problem("binary", num_dim=8)
    a = E.cdg(model, x, y, coords_per_layer=5, seed=9)
    b = E.cdg(model, x, y, coords_per_layer=5, seed=9)
    assert all(torch.equal(torch.nan_to_num(a[n], nan=7.0), torch.nan_to_num(b[n], nan=7.0)) for n in a)
    p1, p2 = toy_problem(8, 4), toy_problem(8, 4)
    x1, y1 = p1.batch(32, 2)
    x2, y2 = p2.batch(32, 2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert all(torch.equal(u.weight, w.weight) for u, w in zip(p1.student.units, p2.student.units))


def test_estimators_leave_the_model_unchanged():
    model, x, y = small_problem("binary")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    E.cdg(model, x, y)
    E.nes(model, x, y, samples=10)
    E.ste(model, x, y)
    E.smoothed_exact(model, x, y, 0.2)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("call, name", [
    (lambda m, x, y: E.cdg(m, x, y, eps=0), "eps"),
    (lambda m, x, y: E.cdg(m, x, y, eps=-0.1), "eps"),
    (lambda m, x, y: E.nes(m, x, y, sigma=0), "sigma"),
    (lambda m, x, y: E.nes(m, x, y, sigma=-1.0), "sigma"),
    (lambda m, x, y: E.nes(m, x, y, samples=0), "samples"),
    (lambda m, x, y: E.smoothed_exact(m, x, y, sigma=0.0), "sigma"),
    (lambda m, x, y: E.cdg(m, x, y, layers=["fc9.weight"]), "layers"),
    (lambda m, x, y: E.nes(m, x, y, layers=["nope"]), "layers"),
    (lambda m, x, y: E.ste(m, x, y, layers="nope"), "layers"),
    (lambda m, x, y: E.ste(m, x, y, variant="tanh"), "variant"),
    (lambda m, x, y: E.cdg(m, x[:, :3], y), "x"),
    (lambda m, x, y: E.nes(m, x[:, :3], y), "x"),
    (lambda m, x, y: E.ste(m, x[:, :3], y), "x"),
    (lambda m, x, y: E.smoothed_exact(m, x[:, :3], y, 0.1), "x"),
    (lambda m, x, y: E.cdg(m, x, y, loss="hinge"), "loss"),
    (lambda m, x, y: E.cdg(m, x, y, coords_per_layer=0), "coords_per_layer"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(call, name):
    model, x, y = small_problem("binary")
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call(model, x, y)


@pytest.mark.parametrize("estimator", [E.cdg, E.nes, E.nes_multi, E.nes_sigmas, E.ste])
def test_options_after_the_batch_are_keyword_only(estimator):
    """``cdg(model, x, y, "mse", 0.1)`` would silently bind ε to a σ or a variant name elsewhere."""
    model, x, y = small_problem("binary")
    with pytest.raises(TypeError, match="positional"):
        estimator(model, x, y, "mse")


def test_loss_decrease_equals_explicit_step_and_cosine_ignores_nan():
    model, x, y = small_problem("binary", num_dim=8)
    grads = E.cdg(model, x, y, coords_per_layer=20, seed=1)
    lrs = [0.0, 0.01, 0.1, 1.0]
    curve = V.loss_decrease(model, x, y, grads, lrs, normalize_mode="layer")
    base = batch_loss(model(x), y, "mse").item()
    for lr, got in zip(lrs, curve):
        stepped = BinaryMLP(8, seed=0).double()
        with torch.no_grad():
            for (n, p), (_, q) in zip(stepped.named_parameters(), model.named_parameters()):
                g = torch.nan_to_num(grads[n], nan=0.0)
                p.copy_(q - lr * g / g.norm())
        assert got == pytest.approx(base - batch_loss(stepped(x), y, "mse").item(), abs=1e-12)
    assert curve[0] == 0.0
    a = {"w": torch.tensor([1.0, float("nan"), 0.0]), "v": torch.tensor([2.0])}
    b = {"w": torch.tensor([1.0, 5.0, 1.0]), "v": torch.tensor([-2.0])}
    cos = V.cosine(a, b)
    assert cos["w"] == pytest.approx(1 / math.sqrt(2))
    assert cos["v"] == pytest.approx(-1.0)
    assert cos["all"] == pytest.approx((1 - 4) / (math.sqrt(5) * math.sqrt(6)))
    assert V.best_decrease([0.1, 1.0, 10.0], [0.2, 0.5, -1.0]) == (0.5, 1.0)
    g = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 12.0])}
    assert torch.allclose(V.normalize(g, "global")["b"], torch.tensor([0.0, 12 / 13]))
    assert torch.allclose(V.normalize(g, "layer")["a"], torch.tensor([0.6, 0.8]))


@pytest.mark.parametrize("names", [
    ["fc1.weight", "readout.bias"],                         # fc2 unperturbed between two perturbed units
    ["fc2.weight", "fc2.bias", "readout.weight"],           # head in the middle, biases too
    ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "readout.weight", "readout.bias"],
])
def test_direction_losses_equal_a_loop_over_perturbed_copies(names):
    """directions.direction_losses against perturbing a float64 copy of the model and running it."""
    model = BinaryMLP(5, hidden_layers=2, out_dim=3, act="ternary", bias=True, seed=4).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(len(n)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    params = dict(model.named_parameters())
    dirs = {n: torch.randn(4, *params[n].shape, generator=gen, dtype=torch.float64) for n in names}
    locs = [engine.locate_parameters(model)[n] for n in names]
    scales = (0.3, -0.3, 1.5)
    got = directions.direction_losses(model, engine.forward_cache(model, x), y, "mse", locs, dirs, scales)
    assert got.shape == (3, 4)
    for i, s in enumerate(scales):
        for k in range(4):
            twin = copy.deepcopy(model)
            with torch.no_grad():
                for n in names:
                    dict(twin.named_parameters())[n].add_(s * dirs[n][k])
                expected = F.mse_loss(twin(x), y)
            torch.testing.assert_close(got[i, k], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("total_mb,want", [(256, 32.0), (1600, 100.0), (10**6, 4096.0)])
def test_chunk_budget_on_a_cuda_device_follows_its_memory(monkeypatch, total_mb, want):
    """A sixteenth of the device's memory (the total: the same every call), at least the CPU
    budget, at most 4 GiB; the CPU's unchanged."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1, total_mb * 2**20))
    assert engine.chunk_budget_mb(32.0, torch.device("cuda")) == want
    assert engine.chunk_budget_mb(32.0, torch.device("cpu")) == 32.0


@pytest.mark.parametrize("layers", [None, ["fc3.weight", "readout.weight"]])
def test_nes_with_a_devices_larger_chunks_uses_the_same_directions(monkeypatch, layers):
    """A device's chunks hold several of the CPU's draw blocks: the estimate is the CPU's up to
    summation order (torch's sampler would give other directions for other block sizes)."""
    model, x, y = small_problem("binary", num_dim=6, bias=True)
    kw = dict(sigmas=[0.05, 0.5], samples=[13, 90], layers=layers, seed=3, budget_mb=0.2)  # blocks of 2+ directions
    cpu = E.nes_sigmas(model, x, y, **kw)
    monkeypatch.setattr(engine, "chunk_budget_mb", lambda budget_mb, device: 7.3 * budget_mb)
    grouped = E.nes_sigmas(model, x, y, **kw)
    for sigma in cpu:
        for s in (13, 90):
            for n, g in cpu[sigma][s].items():
                torch.testing.assert_close(grouped[sigma][s][n], g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("antithetic", [True, False])
def test_nes_with_a_non_finite_perturbed_loss_raises(antithetic):
    """σ = 1e38 in float32 overflows the perturbed readout: the estimate must not be returned."""
    model, x, y = small_problem("binary", num_dim=6)
    model, x, y = model.float(), x.float(), y.float()
    with pytest.raises(FloatingPointError, match="perturbed model is not finite"):
        E.nes_sigmas(model, x, y, sigmas=[0.1, 1e38], samples=[20], antithetic=antithetic, budget_mb=0.01)


def test_a_devices_chunk_stays_within_its_budget_when_one_direction_exceeds_the_cpus(monkeypatch):
    """One direction's copies (~79 kB here) exceed the CPU budget (1 kB), so a block is one
    direction; a device budget of 4 kB must still give chunks of one direction, not four."""
    model, x, y = small_problem("binary", num_dim=6)
    seen = []
    real = directions.head_projection

    def recording(model, cache, locs, dirs):
        seen.append(len(next(iter(dirs.values()))))  # the directions of this chunk
        return real(model, cache, locs, dirs)

    monkeypatch.setattr(engine, "chunk_budget_mb", lambda budget_mb, device: 4 * budget_mb)
    monkeypatch.setattr(directions, "head_projection", recording)
    E.nes_sigmas(model, x, y, sigmas=[0.1], samples=[6], budget_mb=2**-10)
    assert seen and max(seen) == 1


_NES_IN_A_FRESH_PROCESS = """
import sys, torch
from lib.core import engine
from lib.core import estimators as E
from lib.training.gaussian import toy_problem
engine.KEEP_FREED_MEMORY = sys.argv[1] == "keep"
prob = toy_problem(16, 3)
x, y = prob.batch(512, 0)
g = E.nes_sigmas(prob.student, x, y, sigmas=[0.01, 1.0], samples=[40, 300], seed=5, budget_mb=2)
flat = torch.cat([g[sg][count][name].flatten() for sg in g for count in g[sg] for name in g[sg][count]])
print(engine.keep_freed_memory(), flat.numpy().tobytes().hex())
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keeping_freed_memory_changes_no_number():
    """NES (chunks of a few MiB, so the heap serves them) gives the same bits in a process that
    keeps freed memory for the next chunk and in one with glibc's own settings."""
    import subprocess
    import sys

    runs = {mode: subprocess.run([sys.executable, "-c", _NES_IN_A_FRESH_PROCESS, mode], check=True,
                                 capture_output=True, text=True).stdout.split() for mode in ("keep", "default")}
    assert runs["keep"][0] == "True" and runs["default"][0] == "False"
    assert runs["keep"][1] == runs["default"][1]
    assert engine.keep_freed_memory() is True  # this process: set by the estimators, once
