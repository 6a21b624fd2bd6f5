"""The NES diagnosis on held-out rows (docs/design.md §3, "NES diagnosis"): where NES does not point
downhill, is it variance (too few samples), smoothing bias (σ too large), both, or neither?

Everything is scored on the **last hidden layer** (the ``fc3.weight`` population metric: a step
on that layer alone, readout held, relative decrease on the initialisation's evaluation set), where
the exact gradient of the Gaussian-smoothed loss (:func:`lib.core.estimators.smoothed_exact`) is
NES's infinite-sample limit. The lr of each estimate (and CDG's ε) is cross-fitted over
initialisations (:mod:`.protocol`). Per (num_dim, σ), with paired tests over initialisations and
Holm's correction over every test of the section:

* **variance** at S samples: NES with S samples scores below its limit at the same σ
  (``exact − NES_S > 0``);
* **smoothing bias**: the limit scores below the best CDG on the same layer (``CDG − exact > 0``);
* **both** / **bias** / **variance** as those hold; **neither** when NES with the most samples is
  equivalent to its limit and the limit to CDG (two one-sided tests within the params file's
  ``equivalence_margin``); otherwise **not distinguishable** at this n.

A rising cosine with the limit as samples grow is not evidence of variance that matters (every
Monte-Carlo estimate does that); only a shortfall in held-out decrease is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from lib.experiments.inference import ALPHA, Difference, holm, paired_difference
from lib.experiments.stats import with_interval

from . import protocol as PR
from .records import ToyResults as Results
from .records import params_of

LAYER = PR.LAST_HIDDEN
VERDICTS = ("both", "bias", "variance", "neither", "not distinguishable", "uninformative")
RULES = ("scored on the last hidden layer, held out, lr (and CDG's ε) cross-fitted; *variance* at S samples when "
         "NES with S samples decreases the loss less than its infinite-sample limit (the exact smoothed gradient, "
         "same σ); *smoothing bias* when that limit decreases it less than the best CDG on the same layer; *both* "
         "when both hold; *neither* when NES with the most samples matches its limit and the limit matches CDG "
         "(two one-sided tests within the equivalence margin); otherwise *not distinguishable*; *uninformative* "
         "where CDG does not beat a random direction on that layer. Paired over initialisations, "
         "Holm-corrected over every test of the section")


@dataclass(frozen=True)
class Test:
    """One paired test of the diagnosis, with its Holm-corrected p-values."""

    what: str  # "variance" (with samples) or "bias"
    samples: int | None
    difference: Difference
    p_holm: float = 1.0
    p_equivalent_holm: float = 1.0

    @property
    def holds(self) -> bool:
        return self.p_holm < ALPHA and self.difference.mean > 0

    @property
    def equivalent(self) -> bool:
        return self.p_equivalent_holm < ALPHA


@dataclass(frozen=True)
class SigmaVerdict:
    """The diagnosis at one (num_dim, σ)."""

    num_dim: int
    sigma: float
    tests: tuple[Test, ...]
    exact: PR.Score
    cdg: PR.Score
    control: Test | None = None  # CDG − the random direction on the same layer (None: a run without controls)

    @property
    def variance_at(self) -> list[int]:
        return [t.samples for t in self.tests if t.what == "variance" and t.holds]

    @property
    def verdict(self) -> str:
        if self.control is not None and not self.control.holds:
            return "uninformative"  # CDG does not beat a random direction on this layer
        bias = any(t.holds for t in self.tests if t.what == "bias")
        if bias and self.variance_at:
            return "both"
        if bias or self.variance_at:
            return "bias" if bias else "variance"
        largest = max((t for t in self.tests if t.what == "variance"), key=lambda t: t.samples or 0)
        if largest.equivalent and all(t.equivalent for t in self.tests if t.what == "bias"):
            return "neither"
        return "not distinguishable"


def _sigma_fixed(sigma: float):
    return lambda e: e.get("sigma") == sigma


def _control(r: Results) -> Test | None:
    """CDG − the random direction on the last hidden layer, paired (None without the control)."""
    fams = {f.name: f for f in PR.families(r, LAYER)}
    n = params_of(r).batch_size
    cdg, random = (PR.score(r, fams[name], LAYER, n) for name in ("CDG", "random direction"))
    return None if cdg is None or random is None else \
        Test("control", None, paired_difference(cdg.per_init, random.per_init))


def _raw(r: Results) -> list[tuple[float, list[Test], PR.Score, PR.Score]]:
    """Per σ of a run: its untested-for-multiplicity tests, the limit's and CDG's scores."""
    fams = {f.name: f for f in PR.families(r, LAYER)}
    n = params_of(r).batch_size
    margin = params_of(r).equivalence_margin
    cdg = PR.score(r, fams["CDG"], LAYER, n)
    out = []
    for sigma in params_of(r).sigma_grid:
        exact = PR.score(r, fams["exact smoothed"], LAYER, n, _sigma_fixed(sigma))
        if exact is None or cdg is None:
            continue
        tests = [Test("bias", None, paired_difference(cdg.per_init, exact.per_init, margin))]
        for s in params_of(r).nes_samples:
            nes = PR.score(r, fams[f"NES {s} (last two)"], LAYER, n, _sigma_fixed(sigma))
            if nes is not None:
                tests.append(Test("variance", s, paired_difference(exact.per_init, nes.per_init, margin)))
        out.append((sigma, tests, exact, cdg))
    return out


def diagnose_section(runs: Sequence[Results]) -> list[SigmaVerdict]:
    """The diagnosis of every (num_dim, σ) of a section's runs, Holm-corrected over all its tests
    and each run's control (CDG against the random direction on the same layer: where CDG does not
    beat it, the layer's metric tells no gradient from a data-free direction, and every verdict of
    that run is *uninformative*)."""
    used = [r for r in sorted(runs, key=lambda r: r["num_dim"]) if params_of(r).diagnose
            and r.get("population")]
    controls = {r["num_dim"]: _control(r) for r in used}
    raw = [(r["num_dim"], *entry) for r in used for entry in _raw(r)]
    flat = [t for _, _, tests, _, _ in raw for t in tests] + [c for c in controls.values() if c is not None]
    p = holm([t.difference.p for t in flat])
    q = holm([t.difference.p_equivalent if t.difference.p_equivalent is not None else 1.0 for t in flat])
    corrected = [Test(t.what, t.samples, t.difference, p[k], q[k]) for k, t in enumerate(flat)]
    fixed_controls = iter(corrected[len(flat) - sum(c is not None for c in controls.values()):])
    controls = {d: (next(fixed_controls) if c is not None else None) for d, c in controls.items()}
    out, k = [], 0
    for dim, sigma, tests, exact, cdg in raw:
        out.append(SigmaVerdict(dim, sigma, tuple(corrected[k:k + len(tests)]), exact, cdg, controls[dim]))
        k += len(tests)
    return out


def diagnosis_rows(verdicts: Sequence[SigmaVerdict]) -> list[list[str]]:
    """Table rows: num_dim, σ, the limit's and CDG's scores, NES's shortfall per sample count, verdict."""
    rows = []
    for v in verdicts:
        shortfalls = "; ".join(f"{t.samples}: {with_interval(t.difference.mean, t.difference.interval)}"
                               for t in v.tests if t.what == "variance")
        bias = next(t for t in v.tests if t.what == "bias")
        verdict = v.verdict + (f" (at {', '.join(map(str, v.variance_at))} samples)" if v.variance_at else "")
        rows.append([str(v.num_dim), f"{v.sigma:g}", with_interval(v.exact.estimate.mean, v.exact.estimate.interval),
                     with_interval(bias.difference.mean, bias.difference.interval), shortfalls, verdict])
    return rows


HEADER = ["num_dim", "σ", "exact smoothed (limit)", "CDG − limit", "limit − NES, per sample count", "verdict"]
