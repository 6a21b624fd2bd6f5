"""The held-out NES diagnosis on synthetic results with a known answer, one per branch
(lib/experiments/toy/nes_diagnosis.py)."""
import numpy as np
import pytest

from lib.experiments.toy.nes_diagnosis import diagnose_section

INITS = 10


def results(cdg, exact, nes, sd=0.01, margin=0.05, num_dim=8, seed=0):
    """A run whose last-hidden-layer held-out decreases are ``cdg``, ``exact`` and ``nes[samples]``
    plus N(0, sd) per initialisation, at σ = 0.1 and the larger of two lrs (the smaller gives 0)."""
    rng = np.random.default_rng(seed)

    def record(estimate, value):
        return {"estimate": estimate, "metric": "fc3.weight", "batch_size": 64, "inits": list(range(INITS)),
                "curves": [[0.0, float(value + rng.normal(0, sd))] for _ in range(INITS)]}

    recs = [record({"estimator": "cdg", "layers": "all", "eps": 0.1}, cdg),
            record({"estimator": "smoothed_exact", "layers": "last_two", "sigma": 0.1}, exact)]
    recs += [record({"estimator": "nes", "layers": "last_two", "sigma": 0.1, "samples": s}, v) for s, v in nes.items()]
    return {"num_dim": num_dim, "lrs": [0.01, 0.1],
            "parameters": {"batch_size": 64, "sigma_grid": [0.1], "nes_samples": sorted(nes), "diagnose": True,
                           "equivalence_margin": margin, "ste_variants": []},
            "population": {"records": recs, "base_losses": [{"init": i, "loss": 1.0} for i in range(INITS)]}}


@pytest.mark.parametrize("cdg, exact, nes, sd, verdict, variance_at", [
    (1.0, 0.5, {500: 0.5, 5000: 0.5}, 0.01, "bias", []),
    (1.0, 1.0, {500: 0.7, 5000: 1.0}, 0.01, "variance", [500]),
    (1.0, 0.5, {500: 0.2, 5000: 0.45}, 0.01, "both", [500, 5000]),
    (1.0, 1.0, {500: 1.0, 5000: 1.0}, 0.01, "neither", []),
    (1.0, 1.0, {500: 1.0, 5000: 1.0}, 1.0, "not distinguishable", []),
])
def test_each_branch(cdg, exact, nes, sd, verdict, variance_at):
    (v,) = diagnose_section([results(cdg, exact, nes, sd)])
    assert v.verdict == verdict and v.variance_at == variance_at and v.sigma == 0.1 and v.num_dim == 8


def test_a_cosine_that_rises_with_the_samples_is_not_variance():
    """The old rule's num_dim 8 case: NES's cosine with its limit rose from 0.92 to 1.00 with more
    samples, which the old rule called variance; but NES at 500 samples decreases the held-out loss
    as much as its limit does, so it is not variance."""
    (v,) = diagnose_section([results(1.0, 1.0, {500: 0.995, 50000: 1.0}, sd=0.005)])
    assert v.verdict == "neither" and v.variance_at == []


def test_holm_over_the_section_can_undo_a_marginal_test():
    """A variance shortfall significant alone is not after Holm over many (num_dim) tests."""
    alone = diagnose_section([results(1.0, 1.0, {500: 0.98}, sd=0.012, margin=0.001, seed=3)])
    many = diagnose_section([results(1.0, 1.0, {500: 0.98}, sd=0.012, margin=0.001, num_dim=d, seed=3)
                             for d in (8, 16, 32, 64, 128, 256, 512, 1024)])  # the same data 8 times
    assert alone[0].tests[1].p_holm < 0.05 and alone[0].verdict == "variance"
    assert many[0].tests[1].p_holm > 0.05 and many[0].verdict == "not distinguishable"
    assert all(t.p_holm >= t.difference.p for v in many for t in v.tests)


def test_where_cdg_does_not_beat_a_random_direction_the_verdicts_are_uninformative():
    """The control: a random direction on the last hidden layer. Scoring like CDG, it makes the
    layer's metric unable to tell a gradient from no information; far below CDG, the verdict stands."""
    def with_random(value, **kw):
        r = results(1.0, 0.5, {500: 0.5, 5000: 0.5}, **kw)
        rec = dict(r["population"]["records"][0], estimate={"estimator": "random", "layers": "all"},
                   curves=[[0.0, value + 0.01 * ((i % 3) - 1)] for i in range(INITS)])
        r["population"]["records"].append(rec)
        return r

    (v,) = diagnose_section([with_random(0.0)])
    assert v.verdict == "bias" and v.control.holds
    (v,) = diagnose_section([with_random(1.0)])
    assert v.verdict == "uninformative" and not v.control.holds
