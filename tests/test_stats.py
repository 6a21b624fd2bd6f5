"""The 95% t-interval against hand-computed cases."""
import math

import pytest

from lib.experiments.stats import interval, separated, t_halfwidth, with_interval


def test_t_interval_by_hand():
    # values 1, 2, 3, 4: mean 2.5, s = sqrt(5/3) = 1.2909944, t_{0.975, 3} = 3.1824463
    h = 3.1824463 * math.sqrt(5 / 3) / 2
    assert t_halfwidth([1, 2, 3, 4]) == pytest.approx(h, rel=1e-6)
    assert interval(2.5, [1, 2, 3, 4]) == pytest.approx([2.5 - h, 2.5 + h], rel=1e-6)
    # two values 0 and 2: s = sqrt(2), t_{0.975, 1} = 12.7062047
    assert t_halfwidth([0, 2]) == pytest.approx(12.7062047 * math.sqrt(2) / math.sqrt(2), rel=1e-6)


def test_no_interval_without_two_finite_values():
    assert t_halfwidth([3.0]) is None and interval(3.0, [3.0]) is None
    assert t_halfwidth([1.0, None, float("nan")]) is None
    assert t_halfwidth([1.0, None, 3.0]) == pytest.approx(t_halfwidth([1.0, 3.0]))
    assert interval(float("nan"), [1.0, 2.0]) is None


def test_separated():
    assert separated([0.0, 1.0], [1.5, 2.0]) and separated([1.5, 2.0], [0.0, 1.0])
    assert not separated([0.0, 1.0], [0.9, 2.0]) and not separated(None, [0.0, 1.0])


def test_with_interval():
    assert with_interval(0.91234, [0.8612, 0.96349]) == "0.912 [0.861, 0.963]"
    assert with_interval(0.91234, None) == "0.912" and with_interval(None, None) == "–"
    assert with_interval(float("nan"), [0.0, 1.0]) == "–"


def test_lr_band_is_the_interval_of_the_mean_curve():
    """The band of an lr curve, from the population spread the results store, equals the
    t-interval of the values at that lr."""
    import numpy as np

    from lib.experiments.toy.figures import band_halfwidth

    values = np.array([[0.1, 0.5], [0.3, 0.2], [0.2, 0.8]])  # 3 repetitions × 2 learning rates
    half = band_halfwidth(values.std(axis=0), 3)
    assert half == pytest.approx([t_halfwidth(values[:, 0]), t_halfwidth(values[:, 1])])
    assert band_halfwidth(np.zeros(2), 1) is None
