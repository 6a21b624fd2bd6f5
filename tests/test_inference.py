"""Inference over initialisations against closed forms, hand-computed cases and simulations with
a known answer (lib/experiments/inference.py)."""
import math

import numpy as np
import pytest

from lib.experiments.inference import (cross_fit, holm, init_means, over_inits, paired_difference, t_test_p,
                                       tost_p)
from lib.experiments.stats import interval


def t2_cdf(t: float) -> float:
    """Student's t CDF with 2 degrees of freedom, closed form: 1/2 + t / (2 √(2 + t²))."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_init_means_average_batches_within_an_initialisation():
    means = init_means([1.0, 3.0, 10.0, float("nan"), 4.0], [0, 0, 1, 1, 2])
    assert means == {0: 2.0, 1: 10.0, 2: 4.0}
    with pytest.raises(ValueError):
        init_means([1.0], [0, 1])


def test_interval_over_initialisations_covers_a_known_mean_where_pooling_does_not():
    """Nested data with a known mean: 5 initialisations (sd 1) × 3 batches (sd 0.3). The interval
    over initialisation means covers the mean in 93–97% of 2,000 replications; the pooled-t
    interval over the 15 values as if independent covers far less."""
    rng = np.random.default_rng(12345)
    true_mean, inits, batches, reps = 0.7, 5, 3, 2000
    ours = pooled = 0
    labels = np.repeat(np.arange(inits), batches)
    for _ in range(reps):
        values = true_mean + np.repeat(rng.normal(0, 1.0, inits), batches) + rng.normal(0, 0.3, inits * batches)
        est = over_inits(init_means(list(values), list(labels)))
        ours += est.interval[0] <= true_mean <= est.interval[1]
        iv = interval(float(values.mean()), list(values))
        pooled += iv[0] <= true_mean <= iv[1]
    assert 0.93 <= ours / reps <= 0.97
    assert pooled / reps < 0.85
    assert est.n == inits


def test_paired_difference_by_hand():
    a, b = {0: 1.0, 1: 2.0, 2: 4.0, 3: 9.0}, {0: 0.5, 1: 1.0, 2: 2.0}  # init 3 has no partner
    d = paired_difference(a, b, margin=0.5)
    diffs = [0.5, 1.0, 2.0]
    mean, s = np.mean(diffs), np.std(diffs, ddof=1)
    se = s / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(mean)
    t = mean / se
    assert d.p == pytest.approx(2 * (1 - t2_cdf(t)), rel=1e-9)
    # TOST: the larger one-sided p, H0 mean ≥ margin: P[T < (mean − margin)/se]
    assert d.p_equivalent == pytest.approx(max(1 - t2_cdf((mean + 0.5) / se), t2_cdf((mean - 0.5) / se)), rel=1e-9)
    assert d.interval == pytest.approx([mean - 4.30265273 * se, mean + 4.30265273 * se], rel=1e-7)


def test_degenerate_tests():
    assert t_test_p([0.3]) == 1.0 and t_test_p([0.0, 0.0]) == 1.0 and t_test_p([0.2, 0.2]) == 0.0
    assert tost_p([0.1], 1.0) == 1.0 and tost_p([0.1, 0.3], 0.0) == 1.0
    assert tost_p([0.1, 0.1], 0.5) == 0.0 and tost_p([0.9, 0.9], 0.5) == 1.0


def test_holm_by_hand():
    # sorted 0.005 (×4 = 0.02), 0.01 (×3 = 0.03), 0.03 (×2 = 0.06), 0.04 (×1, raised to 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_holm_controls_the_familywise_error():
    """Ten true null hypotheses, 2,000 families: Holm rejects any in at most ~5% of families,
    the uncorrected tests in far more."""
    rng = np.random.default_rng(7)
    any_holm = any_raw = 0
    for _ in range(2000):
        p = [t_test_p(rng.normal(0, 1, 6)) for _ in range(10)]
        any_holm += min(holm(p)) < 0.05
        any_raw += min(p) < 0.05
    assert any_holm / 2000 <= 0.065 and any_raw / 2000 > 0.3


def test_tost_holds_its_level_at_the_margin():
    """True difference exactly at the margin: equivalence is declared in at most ~5% of samples;
    far inside the margin with little noise, nearly always."""
    rng = np.random.default_rng(3)
    at_margin = sum(tost_p(list(0.2 + rng.normal(0, 0.1, 8)), 0.2) < 0.05 for _ in range(2000))
    inside = sum(tost_p(list(rng.normal(0, 0.02, 8)), 0.2) < 0.05 for _ in range(200))
    assert at_margin / 2000 <= 0.065 and inside == 200


def test_cross_fit_by_hand():
    table = {"a": {0: 1.0, 1: 0.0, 2: 0.0}, "b": {0: 0.0, 1: 0.5, 2: 0.5}}
    cf = cross_fit(table)
    # init 0 chooses on {1, 2}: b (0.5 > 0); inits 1 and 2 choose on {0, other}: a (0.5 > 0.25)
    assert cf.choices == {0: "b", 1: "a", 2: "a"} and cf.scores == {0: 0.0, 1: 0.0, 2: 0.0} and cf.cross_fitted
    one = cross_fit({"a": {4: 1.0}, "b": {4: 2.0}})
    assert one.choices == {4: "b"} and not one.cross_fitted


def test_cross_fitting_removes_the_optimism_of_choosing_on_the_scored_data():
    """Twenty options with the same true value 0: the best mean chosen on the scored data is
    biased upward; the cross-fitted score is not (500 replications of 6 initialisations)."""
    rng = np.random.default_rng(11)
    chosen, crossed = [], []
    for _ in range(500):
        table = {o: dict(enumerate(rng.normal(0, 1, 6))) for o in range(20)}
        chosen.append(max(np.mean(list(per.values())) for per in table.values()))
        crossed.append(over_inits(cross_fit(table).scores).mean)
    se = np.std(crossed) / math.sqrt(500)
    assert abs(np.mean(crossed)) < 4 * se
    assert np.mean(chosen) > 0.5
