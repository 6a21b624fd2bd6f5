"""What the training runs say (docs/design.md §3): each arm's final population loss, its steps to a
target, its compute, paired against the best STE variant and corrected over the section.

Per run (``num_dim``, pretrained or not) and batch size ``N``:

* an arm's score on a reported initialisation ``i`` is ``r_i = L(w_K) / L(w_0)``, its population
  loss after ``K`` steps over that at the start (lower is better), at the lr chosen on the tuning
  initialisations;
* the **best STE** variant is chosen on the tuning initialisations too (lowest mean ``r`` at its lr),
  so neither choice sees the initialisations it is reported on;
* each other arm is compared with it by the paired difference ``r_i(arm) − r_i(best STE)`` over the
  reported initialisations (negative: the arm trains further), Holm over every comparison of the
  section, and TOST within the equivalence margin;
* **steps to target**: the first evaluation step ``t`` with ``L(w_t) / L(w_0)`` at or below the
  target ``1 − 0.75 (1 − r̄)``, three quarters of the decrease the best STE reaches on the tuning
  initialisations (``r̄``, its mean ``r`` there: a target fixed on other data); an initialisation
  that never reaches it counts ``K`` (so the difference understates a slower arm's lag);
* the **one-step cosine** predicts the outcome when arms with a higher cosine with the reference
  at ``t = 0`` end lower: per reported initialisation, Spearman's ρ over the arms with a cosine
  between it and ``r``, then its mean and 95% interval over the initialisations on Fisher's scale
  (``z = atanh ρ``, ρ clipped to ±0.999; the t-interval of the z's, mapped back by ``tanh``, so it
  stays within [−1, 1]); ρ < 0: it predicts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _scipy_stats

from lib.experiments.inference import Claim, Estimate, corrected, over_inits, paired_difference
from lib.experiments.stats import rank

from .arms import Arm
from .records import Results, TrainingRecord, arm_of, number, params_of, relative, relative_final
from .run import chosen_lrs, tuning_means

RHO_CLIP = 0.999  # Fisher's z of a rank correlation of ±1 is infinite
TARGET_SHARE = 0.75  # the target of "steps to target": this share of the best STE's decrease on the tuning inits


@dataclass(frozen=True)
class ArmScore:
    """One arm at one (run, N): its lr, ``r`` over the reported initialisations, steps and CPU
    seconds to the target, and the CPU seconds of one estimate."""

    arm: Arm
    lr: float
    final: dict[int, float]            # {init: L_K / L_0}
    steps_to_target: dict[int, float]  # {init: first evaluation step at or below the target; K if none}
    reached: int                       # initialisations that reached the target
    cpu_per_step: float                # mean CPU seconds of one estimate
    first_cosine: dict[int, float]     # {init: cosine with the reference at t = 0}

    @property
    def estimate(self) -> Estimate:
        return over_inits(self.final)


@dataclass(frozen=True)
class Block:
    """One (run, N): the arms' scores, the best STE, the target and the cosine's rank correlation."""

    num_dim: int
    pretrained: bool
    batch_size: int
    steps: int
    best_ste: Arm
    target: float
    arms: list[ArmScore]
    correlation: Estimate  # mean Spearman ρ(one-step cosine, r) over the reported initialisations
    lrs: tuple[float, ...] = ()  # the lr grid the choices were made on

    def at_edge(self, lr: float) -> bool:
        """Whether ``lr`` is the smallest or largest of the grid (a longer or shorter one might do better)."""
        return bool(self.lrs) and lr in (min(self.lrs), max(self.lrs))

    def score(self, arm: Arm) -> ArmScore:
        return next(a for a in self.arms if a.arm == arm)

    @property
    def state(self) -> str:
        return "pretrained" if self.pretrained else "from initialisation"


@dataclass(frozen=True)
class Comparison:
    """An arm against the best STE of its block, on ``measure`` (``final`` or ``steps``)."""

    block: Block
    arm: Arm
    measure: str
    claim: Claim

    @property
    def verdict(self) -> str:
        """``lower``/``higher`` (the arm's value against the best STE's), ``equivalent`` or ``not distinguishable``."""
        v = self.claim.verdict
        if v in ("equivalent", "not distinguishable"):
            return v
        return "lower" if self.claim.difference.mean < 0 else "higher"


def _steps_to(record: TrainingRecord, target: float) -> float | None:
    """The first evaluation step with ``L_t / L_0 ≤ target``; ``None`` if none."""
    return next((float(t) for t, v in zip(record["steps"], relative(record)) if v <= target), None)


def _censored(steps: float | None, k: int) -> float:
    """Steps to target, ``K`` for an initialisation that never reached it."""
    return float(k) if steps is None else steps


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    ok = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if len(ok) < 3:
        return math.nan
    rho = _scipy_stats.spearmanr([x for x, _ in ok], [y for _, y in ok]).statistic
    return float(rho)


def fisher_mean(rhos: Sequence[float]) -> Estimate:
    """The mean of correlations on Fisher's scale and its 95% interval (module docstring)."""
    z = [math.atanh(min(max(r, -RHO_CLIP), RHO_CLIP)) for r in rhos if math.isfinite(r)]
    est = over_inits(z)
    back = None if est.interval is None else [math.tanh(v) for v in est.interval]
    return Estimate(math.tanh(est.mean) if z else math.nan, back, est.n)


def block(results: Results, n: int) -> Block:
    """The :class:`Block` of batch size ``n`` of one run."""
    p, records = params_of(results), results["records"]
    lrs = chosen_lrs(records, n)
    stes = [a for a in lrs if a.estimator == "ste"]
    tuned = {a: by_lr[lrs[a]] for a, by_lr in tuning_means(records, n).items()}  # each arm at its chosen lr
    best = min(stes, key=lambda a: (-rank(-tuned[a]), p.ste_variants.index(a.variant)))  # lowest first, NaN last
    target = 1 - TARGET_SHARE * (1 - tuned[best])
    reported = [r for r in records if r["phase"] == "report" and r["batch_size"] == n]
    scores = []
    for arm in dict.fromkeys(arm_of(r) for r in reported):
        mine = [r for r in reported if arm_of(r) == arm]
        scores.append(ArmScore(
            arm, lrs[arm], {r["init"]: relative_final(r) for r in mine},
            {r["init"]: _censored(_steps_to(r, target), p.steps) for r in mine},
            sum(_steps_to(r, target) is not None for r in mine),
            float(np.mean([number(r["estimate_cpu_s"][-1]) / p.steps for r in mine])),
            {r["init"]: number(r["cosine"][0]) for r in mine}))
    inits = sorted({i for a in scores for i in a.final})
    rhos = [_spearman([a.first_cosine.get(i, math.nan) for a in scores], [a.final.get(i, math.nan) for a in scores])
            for i in inits]
    return Block(p.num_dim, p.pretrained, n, p.steps, best, target, scores, fisher_mean(rhos),
                 tuple(p.lrs))


def blocks(runs: Sequence[Results]) -> list[Block]:
    """Every (run, N), by state, then num_dim, then N."""
    out = [block(r, n) for r in runs for n in params_of(r).batch_sizes]
    return sorted(out, key=lambda b: (b.pretrained, b.num_dim, b.batch_size))


def comparisons(bs: Sequence[Block], margin: float) -> list[Comparison]:
    """Every arm but the best STE against it, per block, on the final ``r`` (TOST within ``margin``)
    and on the steps to target; Holm over each measure's family (all blocks)."""
    out = []
    per_init = {"final": lambda a: a.final, "steps": lambda a: a.steps_to_target}
    for measure, of in per_init.items():
        pairs = [(b, a) for b in bs for a in b.arms if a.arm != b.best_ste]
        diffs = [paired_difference(of(a), of(b.score(b.best_ste)), margin if measure == "final" else None)
                 for b, a in pairs]
        p_holm, p_eq = corrected(diffs)
        out += [Comparison(b, a.arm, measure, Claim(a.arm.label, b.best_ste.label, d, ph, pe, margin))
                for (b, a), d, ph, pe in zip(pairs, diffs, p_holm, p_eq)]
    return out
