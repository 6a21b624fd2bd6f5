"""The thin ResNet's single-layer decreases held out over gradient batches
(lib/experiments/thin_resnet/held_out.py, decrease_claims.py): the curves against a full forward
pass by hand, the claims on records with a known answer, the parameters and the batches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lib.core.estimators import cdg, ste
from lib.experiments.records import only
from lib.experiments.thin_resnet import decrease_claims as DC
from lib.experiments.thin_resnet import section, states
from lib.experiments.thin_resnet.analysis import coord_seed
from lib.experiments.thin_resnet.held_out import CDG, RANDOM, STE, random_on
from lib.experiments.thin_resnet.params import ThinResNetParams
from lib.experiments.thin_resnet.run import run as run_thin_resnet

from test_thin_resnet import tiny_params


@pytest.fixture(scope="module")
def held_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("held")
    params = tiny_params(tmp, states=["init"], acts=["binary"], eps=[0.1, 0.3], decrease_batches=3)
    return ThinResNetParams(**params), run_thin_resnet(params, log=None)


def test_curves_equal_a_full_forward_pass_by_hand(held_run):
    """r_b(lr) of CDG, an STE variant and the control, recomputed with whole forward passes (no
    prefix cache) on batch 1: the estimates drawn again from the batch's seed."""
    p, r = held_run
    held = only(r["analyses"], state="init", act="binary")["held_out"]
    assert held["batches"] == 3 and held["images"] == 16 and held["coordinates"] == 3
    data = states.load_data(p)
    model, _ = states.make_state(p, "binary", "init", data, torch.device("cpu"))
    x, y = data["decrease_batches"][1]
    layer = r["decrease_layers"][1]
    g_cdg = cdg(model, x, y, loss="cross_entropy", eps=0.3, central=True, layers=r["decrease_layers"],
                coords_per_layer=3, seed=coord_seed(p, 1))[layer]
    mask = torch.isfinite(g_cdg)
    g_ste = torch.where(mask, ste(model, x, y, loss="cross_entropy", variant="clipped", layers=[layer])[layer], 0.0)
    with torch.no_grad():
        base = F.cross_entropy(model(data["x_test"]), data["y_test"]).item()
        weight = dict(model.named_parameters())[layer]
        for key, g in (((CDG, 0.3, None), torch.nan_to_num(g_cdg)), ((STE, None, "clipped"), g_ste)):
            rec = only(held["records"], layer=layer, estimator=key[0], eps=key[1], variant=key[2])
            for k, lr in enumerate(p.lrs):
                saved = weight.clone()
                weight -= lr * g / g.norm()
                stepped = F.cross_entropy(model(data["x_test"]), data["y_test"]).item()
                weight.copy_(saved)
                assert rec["curves"][1][k] == pytest.approx((base - stepped) / base, rel=1e-4, abs=1e-7)
    assert held["base_loss"] == pytest.approx(base, rel=1e-6)


def test_control_lives_on_the_sampled_coordinates():
    masks = {"a": torch.tensor([True, False, True, False])}
    d = random_on(masks, 5)["a"]
    assert (d[~masks["a"]] == 0).all() and (d[masks["a"]] != 0).all()
    assert torch.equal(d, random_on(masks, 5)["a"]) and not torch.equal(d, random_on(masks, 6)["a"])


def test_decrease_batches_are_disjoint_from_the_other_batches(tmp_path):
    p = ThinResNetParams(**tiny_params(tmp_path, decrease_batches=3))
    data = states.load_data(p)
    seen = [img for img in torch.cat([data["x"], data["x_ref"]])]
    for x, _ in data["decrease_batches"]:
        assert len(x) == p.batch_size
        for img in x:
            assert not any(torch.equal(img, s) for s in seen)
            seen.append(img)
    assert p.images_needed() == 8 * (2 + 3)


@pytest.mark.parametrize("over,key", [({"decrease_batches": 1}, "decrease_batches"),
                                      ({"decrease_batches": 2, "test_limit": 0}, "test_limit")])
def test_parameters_that_cannot_compare_name_the_key(over, key):
    with pytest.raises(ValueError, match=key):
        ThinResNetParams(**over)
    ThinResNetParams(decrease_batches=2, decrease_acts=[], test_limit=0)  # nothing held out to score


# ----------------------------------------------------------------------------- claims, known answers

LRS = [0.1, 1.0]


def _record(layer, estimator, curves, eps=None, variant=None):
    return {"layer": layer, "estimator": estimator, "eps": eps, "variant": variant, "curves": curves}


def _result(records, layers, variants=("identity", "clipped"), margin=0.002):
    held = {"base_loss": 2.0, "images": 64, "batches": 8, "coordinates": 4, "records": records}
    return {"initial_channels": 8, "lrs": LRS, "ste_variants": list(variants), "decrease_layers": layers,
            "data": {"batch_size": 16},
            "layers": [{"name": n, "label": f"1.0.{k}"} for k, n in enumerate(layers)],
            "parameters": {"equivalence_margin": margin, "states": ["init"], "acts": ["binary"]},
            "analyses": [{"state": "init", "act": "binary", "held_out": held}]}


def _noise(seed, n=8, scale=1e-4):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).mul(scale).tolist()


def _curves(peak_at_1, seed):
    """r_b at lr 0.1 and 1 for 8 batches: 0.001 and ``peak_at_1``, plus batch noise."""
    return [[0.001 + e, peak_at_1 + e] for e in _noise(seed)]


def test_claims_on_records_with_a_known_answer():
    """Layer a: identity 0.01 below CDG (a difference), clipped within 1e-4 of it (equivalent at
    ±0.002), CDG above the control; layer b: the control as good as CDG (uninformative)."""
    base = _curves(0.03, 1)
    common = [[v + e for v in c] for c, e in zip(base, _noise(9, scale=1e-3))]
    records = [
        _record("a", CDG, [[v - 0.02 for v in c] for c in base], eps=0.1),  # worse ε: cross-fitting picks 0.3
        _record("a", CDG, base, eps=0.3),
        _record("a", STE, [[v - 0.01 + e for v in c] for c, e in zip(base, _noise(2))], variant="identity"),
        _record("a", STE, [[v + e for v in c] for c, e in zip(base, _noise(3))], variant="clipped"),
        _record("a", RANDOM, [[e, e] for e in _noise(4)]),
        _record("b", CDG, common, eps=0.3),
        _record("b", STE, common, variant="identity"),
        _record("b", STE, common, variant="clipped"),
        _record("b", RANDOM, [[v + e for v in c] for c, e in zip(common, _noise(5))]),
    ]
    r = _result(records, ["a", "b"])
    scores = DC.family_scores(r["analyses"][0]["held_out"], LRS, "a")
    assert scores["CDG"].choice == "ε=0.3, lr=1" and scores["CDG"].cross_fitted
    assert scores["CDG"].estimate.mean == pytest.approx(sum(c[1] for c in base) / 8)
    assert scores[DC.BEST_STE].choice == "clipped, lr=1"
    found = {(c.layer, c.a, c.b): c for c in DC.claims([r])}
    assert len(found) == 2 * 4 and all(c.difference.n == 8 for c in found.values())
    assert found[("a", "STE identity", "CDG")].verdict == "STE identity < CDG"
    assert found[("a", "STE identity", "CDG")].difference.mean == pytest.approx(-0.01, abs=2e-4)
    assert found[("a", "STE clipped", "CDG")].verdict == "equivalent"
    assert found[("a", "CDG", DC.CONTROL)].verdict == f"CDG > {DC.CONTROL}"
    assert DC.informative(list(found.values()), (8, "init", "binary", "a"))
    assert not DC.informative(list(found.values()), (8, "init", "binary", "b"))
    text = "\n".join(c.source for c in section.held_out_cells([r]) if c.cell_type == "markdown")
    assert "Holm-corrected over the section's 8 tests" in text and "n = 8" in text and "one model" in text
    table = section.held_out_cells([r])[1].source
    row_a, row_b = table.splitlines()[-2:]
    assert "| &lt; -0.01 [" in row_a  # identity − CDG (the table escapes "<")
    assert "| ≈ " in row_a and "| (≈ " in row_b  # layer b's verdicts bracketed: uninformative
    sentence = section.held_out_finding([r])
    assert "c = 8 init, layer 1.0.0: best STE matches CDG within ±0.002" in sentence
    assert sentence.endswith("uninformative (CDG not shown to beat the random direction on the same coordinates) "
                             "at c = 8 init, layer 1.0.1.")


def test_claims_do_not_hold_a_difference_hidden_by_the_batches():
    """Differences of ±0.01 that alternate in sign over 8 batches: not distinguishable."""
    base = _curves(0.03, 1)
    flip = [(-1) ** b * 0.01 for b in range(8)]
    records = [_record("a", CDG, base, eps=0.1),
               _record("a", STE, [[v + f for v in c] for c, f in zip(base, flip)], variant="identity"),
               _record("a", RANDOM, [[e, e] for e in _noise(4)])]
    (claim,) = [c for c in DC.claims([_result(records, ["a"], variants=["identity"])]) if c.a == "STE identity"]
    assert claim.verdict == "not distinguishable" and claim.difference.n == 8


# ----------------------------------------------------------------------------- the N an answer needs

def test_ceiling_bound_on_k_covers_a_simulated_gradient():
    """Batches of N images estimate G + noise of variance σ²/N per coordinate: the ceiling follows
    1/(1 + k/N), k = σ²d/|G|², and the bound k ≥ N(1/c⁺ − 1) from 4 coordinate sets holds in at least
    95% of 400 replications (independent simulation, numpy only)."""
    import numpy as np

    from lib.experiments.inference import over_inits
    from lib.experiments.thin_resnet.resolution import k_lower_bound

    rng = np.random.default_rng(0)
    d, sigma2, n = 512, 2000.0, 512
    k_true = sigma2  # |G|² = d in expectation (unit entries), so k = σ²d/|G|² ≈ σ²
    held, means = 0, []
    for _ in range(400):
        cos = []
        for _ in range(4):
            g = rng.standard_normal(d)
            a, b = (g + rng.standard_normal(d) * np.sqrt(sigma2 / n) for _ in range(2))
            cos.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
        est = over_inits(cos)
        means.append(est.mean)
        held += k_lower_bound(n, est.interval[1]) <= k_true
    assert np.mean(means) == pytest.approx(1 / (1 + k_true / n), abs=0.01)
    assert held / 400 >= 0.95


def test_projection_by_hand():
    from lib.experiments.thin_resnet.resolution import k_lower_bound, projections

    sets = [0.1, 0.2, 0.3]
    upper = 0.2 + 4.302652729911275 * 0.1 / 3 ** 0.5  # mean + t_{0.975,2} s/√3
    rec = {"eps": 0.1, "all": 0.2, "sets": [{"all": v, "per_layer": []} for v in sets]}
    entry = {"state": "init", "act": "binary", "ceiling": [rec], "cross_cosines": [],
             "sampled": [[4] * 16] * 3, "timings": {"cdg_s": [{"eps": 0.1, "seconds": 19.2}]}}
    result = {"initial_channels": 8, "eps_main": 0.1, "parameters": {"states": ["init"], "acts": ["binary"]},
              "data": {"batch_size": 100}, "analyses": [entry]}
    (pr,) = projections([result])
    assert pr.k_lower == pytest.approx(100 * (1 / upper - 1)) and pr.batch_size == 100
    assert pr.images_for(0.9) == pytest.approx(9 * pr.k_lower)
    assert pr.seconds_per_coordinate_image == pytest.approx(19.2 / (192 * 100))
    assert pr.core_hours_for(0.9) == pytest.approx(2 * 9 * pr.k_lower * 192 * 0.001 / 3600)
    assert k_lower_bound(100, -0.01) == float("inf") and k_lower_bound(100, 1.2) == 0
    # a larger N measured (by_batch) is the one projected from
    entry["by_batch"] = [{"batch_size": 400, "eps": 0.1, "ceiling": rec, "cross": []}]
    (pr,) = projections([result])
    assert pr.batch_size == 400 and pr.k_lower == pytest.approx(400 * (1 / upper - 1))
    text = "\n".join(c.source for c in section.projection_cells([result]))
    assert "k ≥ N (1/c⁺ − 1)" in text and f"{pr.k_lower:,.0f}" in text
