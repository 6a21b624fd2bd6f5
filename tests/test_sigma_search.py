"""Successive halving over σ (lib/experiments/toy/sigma_search.py) on records with a known answer:
the rung sizes, choices made only on the other initialisations, and the comparison with the
brute-force grid."""
from __future__ import annotations

import math

import pytest

from lib.experiments.toy import sigma_search as S

LRS = [0.1, 1.0]


def _run(values, num_dim=8, samples=(10, 100, 1000), margin=0.01):
    """A toy result whose NES record at (σ, S) has, per initialisation, the curve ``values(σ, S, i)``
    (a pair over LRS); 4 initialisations, one batch each."""
    sigmas = sorted({s for s, *_ in values})
    lookup = {(s, n, i): c for s, n, i, c in values}
    records = []
    for s in sigmas:
        for n in samples:
            records.append({"estimate": {"estimator": "nes", "layers": "all", "sigma": s, "samples": n},
                            "metric": "hidden", "batch_size": 64, "inits": [0, 1, 2, 3],
                            "curves": [lookup[(s, n, i)] for i in range(4)]})
    return {"num_dim": num_dim, "lrs": LRS, "population": {"records": records, "base_losses": []},
            "parameters": {"batch_size": 64, "nes_samples": list(samples), "ste_variants": [],
                           "equivalence_margin": margin}}


def test_rung_sizes():
    assert S.rung_sizes(8, 3) == [8, 4, 1] and S.rung_sizes(8, 2) == [8, 1] and S.rung_sizes(8, 1) == [8]
    assert S.rung_sizes(5, 4) == [5, 3, 2, 1] and S.rung_sizes(1, 3) == [1, 1, 1]


def test_one_best_sigma_everywhere_is_found_and_matches_the_brute_force():
    """σ = 0.3 is best at every sample count on every initialisation: the search ends there, and
    its scores are the brute force's, so the paired difference is 0 and equivalent."""
    gain = {0.01: 0.1, 0.03: 0.2, 0.1: 0.3, 0.3: 0.5}
    values = [(s, n, i, [g * 0.5 + 0.01 * i, g + 0.01 * i]) for s, g in gain.items() for n in (10, 100, 1000)
              for i in range(4)]
    (found,) = S.searches([_run(values)])
    assert found.chosen == "σ=0.3" and found.directions == 4 * 10 + 2 * 100 + 1000 and found.brute_directions == 4000
    assert found.search.mean == pytest.approx(found.brute.mean) and found.claim.difference.mean == 0
    assert found.claim.verdict == "equivalent"


def test_choices_use_only_the_other_initialisations():
    """On initialisation 0 alone σ = 0.01 is far better (1.5 against 0.1) at every rung; on each of
    the other three σ = 0.1 is (0.5 against 0.2). With all four pooled 0.01 would win (0.525 against
    0.4): the search for initialisation 0 sees only 1–3 and ends on 0.1; the searches for 1–3 see
    initialisation 0 among their others and end on 0.01."""
    def curve(s, i):
        if i == 0:
            return [0.0, 1.5 if s == 0.01 else 0.1]
        return [0.0, 0.5 if s == 0.1 else 0.2]

    values = [(s, n, i, curve(s, i)) for s in (0.01, 0.1, 1.0) for n in (10, 100, 1000) for i in range(4)]
    tables = S._tables(_run(values), "hidden")
    assert S.halving(tables, 0, [0, 1, 2, 3]) == ("σ=0.1", 0.1)
    for i in (1, 2, 3):
        assert S.halving(tables, i, [0, 1, 2, 3]) == ("σ=0.01", 0.2)


def test_a_sigma_cut_at_the_first_rung_costs_the_search_what_it_would_have_scored():
    """σ = 1 is the best at 1000 directions but the worst at 10 (its few-sample estimate is noisy):
    halving drops it at the first rung, the brute force keeps it, and the search loses
    0.4 − 0.3 = 0.1 on every initialisation, a difference the paired test finds."""
    def curve(s, n, i):
        level = {0.01: 0.1, 0.1: 0.3, 1.0: 0.4}[s] if n == 1000 else {0.01: 0.2, 0.1: 0.3, 1.0: 0.0}[s]
        return [0.0, level + 0.001 * i * (1 if n == 1000 else 0)]

    values = [(s, n, i, curve(s, n, i)) for s in (0.01, 0.1, 1.0) for n in (10, 100, 1000) for i in range(4)]
    (found,) = S.searches([_run(values)])
    assert found.chosen == "σ=0.1"
    assert found.claim.difference.mean == pytest.approx(-0.1) and found.claim.verdict == "σ search < every σ"
    assert math.isclose(found.brute.mean, 0.4 + 0.0015)


def _with_controls(run, cdg_gain):
    """The run with CDG (one ε) and the random direction on the same initialisations: CDG's decrease
    at lr 1 is ``cdg_gain`` plus a little batch noise, the random direction's is 0 ± that noise."""
    noise = [0.001, -0.002, 0.0015, -0.0005]
    run["population"]["records"] += [
        {"estimate": {"estimator": "cdg", "layers": "all", "eps": 0.1}, "metric": "hidden", "batch_size": 64,
         "inits": [0, 1, 2, 3], "curves": [[0.0, cdg_gain + e] for e in noise]},
        {"estimate": {"estimator": "random", "layers": "hidden"}, "metric": "hidden", "batch_size": 64,
         "inits": [0, 1, 2, 3], "curves": [[0.0, e] for e in noise[::-1]]}]
    return run


@pytest.mark.parametrize("cdg_gain,informative", [(0.3, True), (0.0, False)])
def test_a_search_is_uninformative_where_cdg_does_not_beat_the_random_direction(cdg_gain, informative):
    """Two searches that agree where nothing decreases the loss say nothing: the comparison is
    marked uninformative unless the section's reference, CDG, beats the random direction."""
    values = [(s, n, i, [0.0, 0.001 * i]) for s in (0.01, 0.1) for n in (10, 100, 1000) for i in range(4)]
    run = _with_controls(_run(values), cdg_gain)
    (found,) = S.searches([run])
    assert found.informative is informative and found.claim.verdict == "equivalent"
    row = S.search_markdown([run]).splitlines()[-1]
    assert ("| (≈ " in row) is not informative
    assert ("uninformative" in S.search_finding([run], "x")) is not informative
