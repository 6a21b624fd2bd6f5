"""NES's σ found by successive halving on tuning initialisations (lib/experiments/toy/sigma_tuning.py):
the rungs against a hand-sorted answer, choices made only on never-reported initialisations, the
reported estimates equal to the grid's at the chosen σ, and the report's account of it."""
from __future__ import annotations

import json

import pytest
import torch

from lib.core import estimators as E
from lib.experiments.toy import population as P
from lib.experiments.toy import sigma_tuning as T
from lib.experiments.toy.params import ToyParams
from lib.experiments.toy.run import run as run_toy
from lib.experiments.toy.sigma_tuning_report import tuned, tuning_markdown
from lib.training.gaussian import toy_problem

GRID = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]


def _gain(sigma: float, samples: int) -> float:
    """A known score: at 500 directions σ = 0.1 is best, then 1.0, 0.03, 0.3; at 5,000, among
    those four, 0.3 is best."""
    if samples == 500:
        return {0.1: 0.9, 1.0: 0.8, 0.03: 0.7, 0.3: 0.6}.get(sigma, 0.1)
    return {0.3: 0.95}.get(sigma, 0.5)


def test_the_search_keeps_the_better_half_and_chooses_per_sample_count():
    p = ToyParams(sigma_grid=GRID, nes_samples=[500, 5000, 50000], tune_inits=2)
    calls, rungs = [], []

    def curves_of(init, sigmas, samples):
        calls.append((init, tuple(sigmas), samples))
        return {s: [0.0, _gain(s, samples) + 0.01 * (init - 500), -1.0] for s in sigmas}

    for k in range(T.tuning_steps(p)):
        T.tuning_step(p, rungs, k, curves_of)
    top_four = sorted(GRID, key=lambda s: -_gain(s, 500))[:4]  # by hand: 0.1, 1.0, 0.03, 0.3
    assert top_four == [0.1, 1.0, 0.03, 0.3]
    assert calls == [(500, tuple(GRID), 500), (501, tuple(GRID), 500),
                     (500, tuple(top_four), 5000), (501, tuple(top_four), 5000)]
    assert T.chosen(p, rungs) == {500: 0.1, 5000: 0.3, 50000: 0.3}
    assert T.plan(p, rungs) == {0.1: [500], 0.3: [5000, 50000]}
    record = T.record(p, rungs)
    assert record["directions"] == {"tuning": 2 * (8 * 500 + 4 * 5000), "reported": 500 + 50000, "grid": 8 * 50000}
    assert {c["samples"]: c["sigma"] for c in record["chosen"]} == {500: 0.1, 5000: 0.3, 50000: 0.3}
    json.dumps(record)


def test_a_single_sample_count_is_chosen_on_one_rung_of_every_sigma():
    p = ToyParams(sigma_grid=[0.1, 1.0, 10.0], nes_samples=[200], tune_inits=1)
    rungs = []
    T.tuning_step(p, rungs, 0, lambda init, sigmas, n: {s: [{0.1: 0.5, 1.0: 2.0, 10.0: 0.7}[s]] for s in sigmas})
    assert T.tuning_steps(p) == 1 and T.chosen(p, rungs) == {200: 1.0}
    with pytest.raises(RuntimeError, match="rungs finished"):
        T.chosen(ToyParams(nes_samples=[20, 50, 100]), rungs[:0])


def test_a_nan_score_ranks_last():
    rung = T.Rung(samples=10, sigmas=[0.1, 1.0, 10.0],
                  curves=[[[float("nan")]], [[0.2, float("nan")]], [[0.1]]])
    assert T.ranked(rung) == [1.0, 10.0, 0.1]


def _tiny(**kw):
    base = dict(num_dim=4, eps_grid=[0.1], sigma_grid=[0.05, 0.5, 5.0], nes_samples=[20, 60, 120],
                ste_variants=["clipped"], num_lr=4, num_lr_refine=2, batch_size=32, num_init=2, num_batch=1,
                eval_rows=2048)
    return ToyParams(**{**base, **kw})


@pytest.fixture(scope="module")
def runs():
    torch.set_num_threads(1)
    return run_toy(_tiny(), progress=False), run_toy(_tiny(sigma_search="grid"), progress=False)


def test_the_search_runs_on_the_tuning_initialisations_only(runs):
    """Rung 1's curve of tuning initialisation 500 is NES on that initialisation's own batch 0,
    scored on its own evaluation set; the reported initialisations 0 and 1 never enter it. Rung
    2 (the students kept from rung 1) is the same by hand on both tuning initialisations."""
    halving, _ = runs
    p = _tiny()
    search = halving["sigma_search"]
    assert search["tuning_inits"] == [500, 501]
    assert {i for r in halving["population"]["records"] for i in r["inits"]} == {0, 1}

    def by_hand(init: int, sigma: float = 0.05, samples: int = 20) -> list[float]:
        problem = toy_problem(4, init)
        x, y = problem.batch(32, 0)
        scorer = P.Scorer(problem.student, *problem.batch(2048, P.EVAL_BATCH), p.lrs(), p.normalize)
        g = E.nes(problem.student, x, y, sigma=sigma, samples=samples, seed=init * 1009)
        return scorer.curve(g, P.HIDDEN).tolist()

    rung = search["rungs"][0]
    assert rung["sigmas"] == [0.05, 0.5, 5.0] and rung["samples"] == 20
    assert rung["curves"][0][0] == by_hand(500)
    assert rung["curves"][0][0] != by_hand(0)
    second = search["rungs"][1]
    assert second["samples"] == 60 and len(second["sigmas"]) == 2
    for k, sigma in enumerate(second["sigmas"]):
        assert second["curves"][k] == [by_hand(500, sigma, 60), by_hand(501, sigma, 60)]


def test_reported_estimates_are_the_grids_at_the_chosen_sigma(runs):
    halving, grid = runs

    def records(r):
        return {json.dumps([x["estimate"], x["metric"], x["batch_size"]], sort_keys=True): x["curves"]
                for x in r["population"]["records"]}

    h, g = records(halving), records(grid)
    assert set(h) < set(g) and all(h[k] == g[k] for k in h)
    chosen = {c["samples"]: c["sigma"] for c in halving["sigma_search"]["chosen"]}
    nes = {(c["sigma"], c["samples"]) for c in halving["curves"] if c["estimator"] == "nes" and c["layers"] == "all"}
    assert nes == {(s, n) for n, s in chosen.items()}
    assert grid["sigma_search"]["mode"] == "grid" and not grid["sigma_search"]["rungs"]


def test_the_report_states_the_choice_and_the_directions_saved(runs):
    halving, grid = runs
    assert tuned([grid]) == [] and tuning_markdown([grid]) == ""
    (t,) = tuned([halving])
    d = halving["sigma_search"]["directions"]
    assert t.n == 2 and t.saving == pytest.approx(2 * 3 * 120 / (d["tuning"] + 2 * d["reported"]))
    assert d["tuning"] == 2 * (3 * 20 + 2 * 60)
    text = tuning_markdown([halving])
    chosen = {c["samples"]: c["sigma"] for c in halving["sigma_search"]["chosen"]}
    assert f"| 4 | {chosen[20]:g} / {chosen[60]:g} / {chosen[120]:g} |" in text
    assert f"({t.saving:.1f}× fewer)" in text


def test_the_search_is_compared_with_its_grid_twin_over_the_same_initialisations(runs):
    """A grid run of the same setting is the halving run's twin: the search's NES at the largest
    count is the grid's NES at the searched σ (the same estimates), paired with the brute force
    over both initialisations; a grid run of another setting is no twin."""
    from lib.experiments.toy import protocol as PR
    from lib.experiments.toy.population import HIDDEN
    from lib.experiments.toy.sigma_tuning_report import against_grid, against_grid_markdown

    halving, grid = runs
    (a,) = against_grid([halving], [halving, grid])
    sigma = {c["samples"]: c["sigma"] for c in halving["sigma_search"]["chosen"]}[120]
    family = next(f for f in PR.families(grid) if f.name == "NES 120")
    at_sigma = PR.score(grid, family, HIDDEN, 32, lambda e: e["sigma"] == sigma)
    brute = PR.score(grid, family, HIDDEN, 32)
    assert a.search.mean == pytest.approx(at_sigma.estimate.mean)
    diffs = [at_sigma.per_init[i] - brute.per_init[i] for i in (0, 1)]
    assert a.claim.difference.n == 2 and a.claim.difference.mean == pytest.approx(sum(diffs) / 2)
    assert "| 4 |" in against_grid_markdown([a])
    other = {**grid, "parameters": {**grid["parameters"], "eps_grid": [0.3]}}
    assert against_grid([halving], [halving, other]) == [] and against_grid_markdown([]) == ""


def test_the_protocol_sentences_say_how_nes_sigma_was_chosen(runs):
    """A halving run's σ comes from the search on the tuning initialisations, not from cross-fitting
    over the reported ones; the report's protocol sentences say so, and a grid run's do not."""
    from lib.experiments.toy.population_report import population_cells
    from lib.experiments.toy.section import _difficulty_answer

    def text(r):
        cells = population_cells(4, [r], pretrained=False)
        return _difficulty_answer([r]) + " ".join(c.source for c in cells if c.cell_type == "markdown")

    halving, grid = runs
    assert "NES's σ from the σ search on the tuning initialisations" in text(halving)
    assert "NES's σ is the σ search's" in text(halving) and "The ε, STE variant and lr" in text(halving)
    assert "σ search" not in text(grid) and "The ε, σ, STE variant and lr" in text(grid)
