"""Inference over initialisations (docs/design.md §2, "Uncertainty"): the initialisation is the
unit of replication, comparisons are paired and corrected, and choices are cross-fitted.

* **Initialisation means.** Batches are nested in an initialisation, so values are first averaged
  within it: ``m_i = mean_b v_ib``; the estimate is ``mean_i m_i`` with the 95% Student-t interval
  over the ``n`` initialisation means (:func:`lib.experiments.stats.interval`), ``n`` stated in
  initialisations. Pooling the ``n · B`` values as independent under-covers whenever the
  initialisation carries variance (``tests/test_inference.py`` simulates it).
* **Paired difference** of A and B measured on the same initialisations, batches and evaluation
  rows: ``d_i = m_i(A) − m_i(B)``, its mean and t-interval, and the two-sided p-value of the
  one-sample t-test of ``mean d = 0``.
* **Holm's step-down correction** over the family of tests a section makes: with the p-values
  sorted ``p_(1) ≤ … ≤ p_(k)``, ``p̃_(j) = max_{l ≤ j} min(1, (k − l + 1) p_(l))``; a difference is
  claimed when ``p̃ < 0.05``.
* **Equivalence** (two one-sided tests, TOST) within a margin ``δ`` fixed in the params file:
  ``p = max(P[t > (d̄ + δ)/se], P[t < (d̄ − δ)/se])`` with ``t`` on ``n − 1`` degrees of freedom;
  "A matches B" when the Holm-corrected ``p < 0.05``; otherwise "not distinguishable at n = …".
* **Cross-fitting** (leave one initialisation out): a choice among options (an lr, an ε or σ, an
  STE variant) for initialisation ``i`` is the option with the best mean over the *other*
  initialisations, ``o*_i = argmax_o mean_{j≠i} m_j(o)``, and ``i`` is scored at ``o*_i``; the
  scores ``m_i(o*_i)`` are free of the optimism of choosing on the data scored. With a single
  initialisation there is nothing to hold out: the choice is made on it, and flagged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats as _scipy_stats

from .stats import LEVEL, interval, with_interval

ALPHA = 1 - LEVEL  # the familywise error rate of a section's claims


def init_means(values: Sequence[float], inits: Sequence[int]) -> dict[int, float]:
    """``{init: mean of its values}`` over the finite values, initialisations in order of first
    appearance (one with no finite value is left out)."""
    if len(values) != len(inits):
        raise ValueError(f"init_means: {len(values)} values for {len(inits)} initialisation labels")
    groups: dict[int, list[float]] = {}
    for v, i in zip(values, inits):
        if v is not None and math.isfinite(v):
            groups.setdefault(int(i), []).append(float(v))
    return {i: float(np.mean(vs)) for i, vs in groups.items()}


@dataclass(frozen=True)
class Estimate:
    """A mean over initialisation means with its 95% t-interval (``None`` for ``n < 2``)."""

    mean: float
    interval: list[float] | None
    n: int  # initialisations


def over_inits(per_init: Mapping[int, float] | Sequence[float]) -> Estimate:
    """The mean of the initialisation means and its t-interval over them."""
    vals = [float(v) for v in (per_init.values() if isinstance(per_init, Mapping) else per_init)
            if v is not None and math.isfinite(v)]
    mean = float(np.mean(vals)) if vals else float("nan")
    return Estimate(mean, interval(mean, vals), len(vals))


@dataclass(frozen=True)
class Difference:
    """The paired difference A − B over initialisations: mean, 95% interval, n, the p-value of
    ``mean = 0`` (two-sided t) and, when a margin is given, the TOST p-value of ``|mean| < margin``."""

    mean: float
    interval: list[float] | None
    n: int
    p: float
    p_equivalent: float | None = None


def t_test_p(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test of ``mean = 0``; 1 without two values; 0 when
    every difference is the same non-zero number (no spread), 1 when all are zero."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return 1.0
    se = d.std(ddof=1) / math.sqrt(len(d))
    if se == 0:
        return 1.0 if d.mean() == 0 else 0.0
    return float(2 * _scipy_stats.t.sf(abs(d.mean()) / se, len(d) - 1))


def tost_p(diffs: Sequence[float], margin: float) -> float:
    """The TOST p-value of equivalence ``−margin < mean < margin``: the larger of the two
    one-sided t-test p-values; 1 without two values or without a positive margin."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2 or not margin > 0:
        return 1.0
    se = d.std(ddof=1) / math.sqrt(len(d))
    if se == 0:
        return 0.0 if abs(d.mean()) < margin else 1.0
    dof = len(d) - 1
    p_low = _scipy_stats.t.sf((d.mean() + margin) / se, dof)  # H0: mean ≤ −margin
    p_high = _scipy_stats.t.cdf((d.mean() - margin) / se, dof)  # H0: mean ≥ margin
    return float(max(p_low, p_high))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], margin: float | None = None) -> Difference:
    """A − B over the initialisations both have (``{init: initialisation mean}`` each)."""
    shared = [i for i in a if i in b and math.isfinite(a[i]) and math.isfinite(b[i])]
    diffs = [a[i] - b[i] for i in shared]
    est = over_inits(diffs)
    return Difference(est.mean, est.interval, est.n, t_test_p(diffs),
                      None if margin is None else tost_p(diffs, margin))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (module docstring)."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda j: pvalues[j])
    adjusted = [1.0] * k
    running = 0.0
    for rank_, j in enumerate(order):
        running = max(running, min(1.0, (k - rank_) * float(pvalues[j])))
        adjusted[j] = running
    return adjusted


@dataclass(frozen=True)
class CrossFit:
    """Leave-one-initialisation-out choice: ``scores`` ``{init: value at its choice}``, ``choices``
    ``{init: option chosen on the others}``, and ``cross_fitted`` (False: one initialisation, the
    choice made on the data scored)."""

    scores: dict[int, float]
    choices: dict[int, Hashable]
    cross_fitted: bool


def mean_over(per_unit: Mapping[int, float], units: Sequence[int]) -> float:
    """The mean of ``per_unit`` over ``units`` (finite values only); ``−∞`` when none."""
    vals = [per_unit[j] for j in units if j in per_unit and math.isfinite(per_unit[j])]
    return float(np.mean(vals)) if vals else -math.inf


def best_on(table: Mapping[Hashable, Mapping[int, float]], units: Sequence[int],
            options: Sequence[Hashable] | None = None) -> tuple[Hashable | None, float]:
    """The option (of ``options``, default all of ``table``) with the highest :func:`mean_over`
    ``units``, the first on a tie, and that mean; ``(None, −∞)`` when none has a value there."""
    best, value = None, -math.inf
    for option in table if options is None else options:
        m = mean_over(table[option], units)
        if m > value:
            best, value = option, m
    return best, value


def cross_fit(table: Mapping[Hashable, Mapping[int, float]]) -> CrossFit:
    """Cross-fitted scores from ``{option: {init: initialisation mean}}`` (higher is better);
    options missing an initialisation, or NaN there, are skipped for it."""
    inits = sorted({i for per in table.values() for i in per})
    if not inits:
        return CrossFit({}, {}, False)
    scores, choices = {}, {}
    for i in inits:
        others = [j for j in inits if j != i] or [i]
        candidates = [o for o in table if i in table[o] and math.isfinite(table[o][i])]
        if not candidates:
            continue
        best, _ = best_on(table, others, candidates)
        best = candidates[0] if best is None else best
        choices[i], scores[i] = best, table[best][i]
    return CrossFit(scores, choices, len(inits) > 1)


@dataclass(frozen=True)
class Score:
    """A family's cross-fitted score (:func:`cross_fitted`): the estimate over the units
    (initialisations; batches of one model in the thin ResNet), the per-unit scores, the choice most
    units made, and whether it was cross-fitted."""

    family: str
    estimate: Estimate
    per_init: dict[int, float]  # {unit: score at the option chosen on the other units}
    choice: str
    cross_fitted: bool

    def text(self, choice: bool = True) -> str:
        """``0.0123 [0.01, 0.0146] (ε=0.1, lr=1)``: the mean, its interval and the common choice."""
        out = with_interval(self.estimate.mean, self.estimate.interval)
        return f"{out} ({self.choice})" if choice and self.choice else out


def cross_fitted(family: str, table: Mapping[tuple[str, ...], Mapping[int, float]]) -> Score:
    """The :class:`Score` of ``{option: {unit: value}}``, an option being a tuple of its parts
    (``("ε=0.1", "lr=1")``), by :func:`cross_fit`; the choice is shown with its parts joined."""
    fit = cross_fit(table)
    chosen = [", ".join(x for x in c if x) for c in fit.choices.values()]
    common = max(set(chosen), key=chosen.count) if chosen else ""
    return Score(family, over_inits(fit.scores), fit.scores, common, fit.cross_fitted)


@dataclass(frozen=True)
class Claim:
    """A paired comparison ``a − b`` with its Holm-corrected p-values (difference and equivalence)
    over the family a section tests (:func:`corrected`), and the equivalence margin."""

    a: str
    b: str
    difference: Difference
    p_holm: float
    p_equivalent_holm: float
    margin: float

    @property
    def verdict(self) -> str:
        """``a > b``, ``a < b``, ``equivalent`` (within ± margin) or ``not distinguishable``."""
        if self.p_holm < ALPHA:
            return f"{self.a} > {self.b}" if self.difference.mean > 0 else f"{self.a} < {self.b}"
        if self.p_equivalent_holm < ALPHA:
            return "equivalent"
        return "not distinguishable"

    def sentence(self) -> str:
        """The verdict in words with the difference, its interval and the Holm p-value."""
        d = self.difference
        iv = "" if d.interval is None else f" [{d.interval[0]:.3g}, {d.interval[1]:.3g}]"
        words = {"equivalent": f"{self.a} matches {self.b} within ±{self.margin:g}",
                 "not distinguishable": f"{self.a} and {self.b} not distinguishable at n = {d.n}"}
        return f"{words.get(self.verdict, self.verdict)} ({self.a} − {self.b} = {d.mean:.3g}{iv}, Holm p = {self.p_holm:.2g})"


def corrected(differences: Sequence[Difference]) -> tuple[list[float], list[float]]:
    """Holm over a section's family: the adjusted p-values of the differences and, as a family of
    its own, of their equivalences (1 where no margin was given)."""
    return (holm([d.p for d in differences]),
            holm([d.p_equivalent if d.p_equivalent is not None else 1.0 for d in differences]))
