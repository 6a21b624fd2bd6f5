"""Uncertainty of a mean over repetitions (initialisations × batches), as every number in the
report carries it: the 95% Student-t interval ``mean ± t_{0.975, n−1} · s / √n`` with ``s`` the
sample standard deviation (``n − 1`` in the denominator); no interval for fewer than two values."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95


def finite(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers and finite (``None`` stands for NaN in the results files)."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def finite_mean(values: Iterable[float | None]) -> float:
    """The mean of the finite values; NaN when there is none."""
    vals = finite(values)
    return float(np.mean(vals)) if vals else float("nan")


def rank(value: float | None) -> float:
    """A sort key for a number that may be missing (``None``) or NaN: those rank lowest."""
    return value if value is not None and math.isfinite(value) else -math.inf


def t_quantile(dof: int, level: float = LEVEL) -> float:
    """``t_{(1+level)/2, dof}``: the two-sided ``level`` quantile of Student's t."""
    return float(_scipy_stats.t.ppf((1 + level) / 2, dof))


def t_halfwidth(values: Iterable[float | None], level: float = LEVEL) -> float | None:
    """``t_{(1+level)/2, n−1} · s / √n`` of the finite ``values``; ``None`` when ``n < 2``."""
    vals = finite(values)
    if len(vals) < 2:
        return None
    s = float(np.std(vals, ddof=1))
    return t_quantile(len(vals) - 1, level) * s / math.sqrt(len(vals))


def interval(mean: float | None, values: Iterable[float | None], level: float = LEVEL) -> list[float] | None:
    """``[mean − h, mean + h]`` with ``h`` = :func:`t_halfwidth` of ``values``; ``None`` without one."""
    h = t_halfwidth(values, level)
    if h is None or mean is None or not math.isfinite(mean):
        return None
    return [mean - h, mean + h]


def separated(a: list[float] | None, b: list[float] | None) -> bool:
    """Whether two intervals are disjoint (a comparison the text may claim)."""
    return a is not None and b is not None and (a[0] > b[1] or b[0] > a[1])


def with_interval(mean: float | None, iv: list[float] | None, digits: int = 3) -> str:
    """``0.912 [0.861, 0.963]``: a mean with its interval, ``digits`` significant digits; the mean
    alone when there is no interval; ``–`` for no number."""
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}g}"
    return text if iv is None else f"{text} [{iv[0]:.{digits}g}, {iv[1]:.{digits}g}]"
