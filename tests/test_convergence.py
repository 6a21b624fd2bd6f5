"""The reference-convergence experiment: the noise ceiling, the records, resume, its notebook and
its report section."""
import json
from pathlib import Path

import nbformat
import numpy as np
import papermill
import pytest
import torch

from lib.experiments.convergence import section
from lib.experiments.convergence.run import CEILING, LAYER_MEAN, noise_ceiling, run, ste_ceiling, ste_estimate
from lib.experiments.records import only, select
from lib.pipeline import execute
from lib.training.gaussian import toy_problem

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_dim=8, precisions=["binary", "fp"], eps=[0.1], batch_sizes=[100, 20000], num_init=3,
            ste_variants=["clipped", "identity"], coords_per_layer=6)


@pytest.fixture(scope="module")
def tiny():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # as the function-scoped tests run (conftest), so the numbers compare exactly
    try:
        return run(TINY, progress=False)
    finally:
        torch.set_num_threads(saved)


def test_noise_ceiling_is_one_on_the_same_batch():
    problem = toy_problem(8, 0)
    batch = problem.batch(500, 0)
    _, _, cos = noise_ceiling(problem.student, batch, batch, 0.1, 5, seed=1)
    assert cos["all"] == pytest.approx(1.0, abs=1e-12)
    _, _, other = noise_ceiling(problem.student, batch, problem.batch(500, 1), 0.1, 5, seed=1)
    assert other["all"] < 0.999


def test_noise_ceiling_rises_with_the_batch_and_faster_for_full_precision(tiny):
    def ceiling(precision, n):
        return only(tiny["cosines"], precision=precision, eps=0.1, batch_size=n, layer=LAYER_MEAN,
                    estimate=CEILING)["mean"]

    assert ceiling("binary", 20000) > ceiling("binary", 100) + 0.2
    assert ceiling("fp", 100) > ceiling("binary", 100) and ceiling("fp", 20000) > 0.99


def test_records(tiny):
    assert tiny["experiment"] == "convergence" and tiny["parameters"]["num_init"] == 3
    assert tiny["layers"] == ["fc1.weight", "fc2.weight", "fc3.weight", "readout.weight"]
    for precision in ("binary", "fp"):
        for n in (100, 20000):
            recs = select(tiny["cosines"], precision=precision, eps=0.1, batch_size=n, layer="all")
            assert len(recs) == 1 + 2 * 3  # the ceiling, 2 variants × (same batch, independent batch, own ceiling)
            for r in recs:
                assert r["n"] == 3 and len(r["values"]) == 3
                assert r["mean"] == pytest.approx(sum(r["values"]) / 3)
                assert r["interval"][0] < r["mean"] < r["interval"][1]
    same = only(tiny["cosines"], precision="fp", eps=0.1, batch_size=20000, layer="all",
                estimate=ste_estimate("identity", "same"))
    assert same["mean"] > 0.99  # full precision: the STE is the exact gradient, CDG a finite difference of it


def test_resume_gives_the_same_numbers(tiny, tmp_path, reporters):
    with pytest.raises(reporters.Killed):
        run(TINY, on_step=reporters.DiesAfter(tmp_path / "r.json", 2), progress=False)
    recording = reporters.Recording(tmp_path / "r.json")
    resumed = run(TINY, on_step=recording, progress=False)
    assert [c[0] for c in recording.calls] == [2, 3, 4, 5, 6]  # reported at once, then the rest
    assert resumed["cosines"] == tiny["cosines"]


def _records(ceilings, stes, own=None):
    """Hand-made mean per-layer cosines at N = 10, 100, 1000: one value per initialisation; ``own``:
    each variant's own ceiling (None: a run from before it was recorded)."""
    out = []
    pairs = [(CEILING, ceilings)] + [(ste_estimate(v, "independent"), x) for v, x in stes.items()]
    pairs += [(ste_ceiling(v), x) for v, x in (own or {}).items()]
    for estimate, values in pairs:
        out += [{"precision": "binary", "eps": 0.1, "batch_size": n, "layer": LAYER_MEAN, "estimate": estimate,
                 "values": vals, "mean": sum(vals) / len(vals) if None not in vals else None}
                for n, vals in zip((10, 100, 1000), values)]
    return {"parameters": {"ste_variants": list(stes), "batch_sizes": [10, 100, 1000], "eps": [0.1],
                           "precisions": ["binary"], "num_init": 3}, "cosines": out}


CEILINGS = [[0.25, 0.36, 0.49], [0.64, 0.81, 0.49], [0.9801, 0.9801, 0.9801]]  # √: 0.5 0.6 0.7; 0.8 0.9 0.7; 0.99


def test_where_each_variant_error_is_resolved():
    """Resolved at N: the STE's independent-batch cosine below √(c_STE · c_CDG), what an STE with no
    error of its own scores, paired over initialisations, Holm over the run's tests."""
    own = [[0.25, 0.36, 0.49], [0.64, 0.81, 0.49], [0.9801, 0.9801, 0.9801]]  # as noisy as CDG: threshold = ceiling
    r = _records(CEILINGS, {"a": [[0.05, 0.17, 0.28], [0.61, 0.68, 0.52], [0.90, 0.91, 0.92]],
                            "b": [[0.26, 0.35, 0.50], [0.63, 0.82, 0.48], [0.979, 0.981, 0.980]]},
                 {"a": own, "b": own})
    assert [section.resolved(r, "binary", 0.1, "a", n) for n in (10, 100, 1000)] == [True, False, True]
    gap = section.gap_to_unbiased(r, "binary", 0.1, "a", 10)
    assert gap.mean == pytest.approx(-0.2)  # (0.05 − 0.25, 0.17 − 0.36, 0.28 − 0.49) / 3
    assert section.resolved_at(r, "binary", 0.1, "a") == [10, 1000]
    # b sits at the score of an unbiased estimate as noisy as CDG (the ceiling itself), far below
    # √ceiling: the rule against √ceiling alone would call it resolved; it is not
    assert section.resolved_at(r, "binary", 0.1, "b") == []
    assert section.resolution_lines(r) == ["* binary, ε = 0.1: a at N ∈ {10, 1000}; b at no N ≤ 1000"]
    r = _records(CEILINGS, {"a": [[0.1]] * 3}, {"a": [[0.25]] * 3})  # one initialisation: nothing is claimed
    r["cosines"] = [dict(c, values=c["values"][:1]) for c in r["cosines"]]
    assert section.resolved_at(r, "binary", 0.1, "a") == []
    r = _records(CEILINGS, {"a": [[None, None, None]] * 3}, {"a": own})  # missing numbers resolve nothing
    assert section.resolved_at(r, "binary", 0.1, "a") == []


def test_a_run_without_the_ste_ceiling_gets_no_verdict():
    r = _records(CEILINGS, {"a": [[0.1, 0.11, 0.09]] * 3})
    assert section.resolution(r) == {} and section.resolved_at(r, "binary", 0.1, "a") == []
    (sentence,) = section.findings([{"id": "c", "entry": {}, "results": r}])
    assert "no verdict" in sentence


def test_the_rule_on_simulated_gradients():
    """Batch estimates as the population gradient plus noise (CDG noisier than the STE): an unbiased
    STE is resolved in about 5% of runs at most, one with an error of its own nearly always."""
    rng = np.random.default_rng(0)
    d, inits, runs = 400, 10, 200

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    def rates(bias):
        hits = 0
        for _ in range(runs):
            cross, c_cdg, c_ste = [], [], []
            for _ in range(inits):
                g = rng.normal(size=d)
                b = bias * np.linalg.norm(g) / np.sqrt(d) * rng.normal(size=d)
                cdg_a, cdg_b = g + 2.0 * rng.normal(size=d), g + 2.0 * rng.normal(size=d)
                ste_a, ste_b = g + b + 0.7 * rng.normal(size=d), g + b + 0.7 * rng.normal(size=d)
                cross.append(cos(ste_a, cdg_b)), c_cdg.append(cos(cdg_a, cdg_b)), c_ste.append(cos(ste_a, ste_b))
            r = _records([c_cdg] * 3, {"s": [cross] * 3}, {"s": [c_ste] * 3})
            hits += 10 in section.resolved_at(r, "binary", 0.1, "s")
        return hits / runs

    assert rates(0.0) <= 0.08
    assert rates(1.0) >= 0.9


def test_section_cells(tiny):
    cells = section.report_cells([{"id": "convergence", "entry": {}, "results": tiny}])
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert text.startswith("### Reference convergence") and "Where each STE variant's own error is resolved" in text
    assert "binary, ε = 0.1: " in text and "full precision, ε = 0.1: " in text
    assert sum(1 for c in cells if c.cell_type == "code") == 1  # one figure


def test_notebook_runs_under_papermill(tmp_path):
    out = tmp_path / "results.json"
    with execute.kernel_environment(execute.threads_per_job(1)):
        papermill.execute_notebook(str(ROOT / "notebooks" / "convergence.ipynb"), str(tmp_path / "run.ipynb"),
                                   parameters={**TINY, "batch_sizes": [100, 400], "results_path": str(out)},
                                   kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    results = json.loads(out.read_text())
    assert results["experiment"] == "convergence" and results["parameters"]["batch_sizes"] == [100, 400]
    nb = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_findings_sentence(tiny):
    (sentence,) = section.findings([{"id": "convergence", "entry": {}, "results": tiny}])
    assert sentence.startswith("**Reference convergence** ([section](#reference-convergence))")
    assert "at N = 20000, ε = 0.1" in sentence and "binary: CDG ceiling" in sentence and "n = 3" in sentence
    assert "√(c_STE · c_CDG)" in sentence
    fp = sentence.split("full precision:")[1]
    assert "(resolved)" not in fp  # every STE variant is the exact gradient of its batch there
