"""The training experiment: the trainer against hand-written loops, the arms, determinism, resume,
the cross-fitted choices and the analysis on records with known answers."""
from __future__ import annotations

import copy
import json
import math

import nbformat
import papermill
import pytest
import torch

from lib.common.paths import ROOT
from lib.pipeline import execute

from lib.core import estimators as E
from lib.experiments.schema import SchemaError, build
from lib.experiments.training import section
from lib.experiments.training.analysis import TARGET_SHARE, blocks, comparisons
from lib.experiments.training.arms import READOUT, Arm, arm_gradient, arms_for
from lib.experiments.toy.params import TUNING_INIT
from lib.experiments.training.params import TrainingParams
from lib.experiments.training.run import chosen_lrs, run
from lib.experiments.training.trainer import Evaluation, train
from lib.training.gaussian import toy_problem

TINY = {"num_dim": 4, "batch_sizes": [64], "steps": 6, "eval_every": 3, "lrs": [0.05, 0.2], "ste_variants":
        ["identity", "clipped"], "nes_samples": [20], "nes_batch_sizes": [64], "num_init": 2, "tune_inits": 1,
        "eval_rows": 256, "reference_rows": 128}


@pytest.fixture(scope="module")
def tiny():
    return run(TINY, progress=False)


def _wide_problem(num_dim=4, seed=0):
    problem = toy_problem(num_dim, seed, dtype=torch.float64)
    return problem, (lambda t: problem.batch(32, t, dtype=torch.float64))


def test_normalized_steps_match_a_hand_written_loop():
    problem, batch = _wide_problem()
    x_eval, y_eval = problem.batch(200, 99, dtype=torch.float64)
    arm, lr = Arm("ste", variant="clipped"), 0.1
    trained, curve = train(problem.student, arm, batch, 4, lr, "normalized", Evaluation(x_eval, y_eval), 2, seed=0)
    model = copy.deepcopy(problem.student)
    losses = []
    for t in range(5):
        if t % 2 == 0 or t == 4:
            with torch.no_grad():
                losses.append(float(((model(x_eval) - y_eval) ** 2).mean()))
        if t == 4:
            break
        g = E.ste(model, *batch(t), variant="clipped")
        with torch.no_grad():
            for name, w in model.named_parameters():
                w -= lr * g[name] / g[name].norm()
    assert curve.steps == [0, 2, 4]
    assert curve.loss == pytest.approx(losses, rel=1e-12)
    for (name, a), b in zip(trained.named_parameters(), model.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), name


def test_adam_steps_match_torch_adam():
    problem, batch = _wide_problem()
    arm, lr = Arm("cdg", eps=0.1), 0.01
    x_eval, y_eval = problem.batch(100, 99, dtype=torch.float64)
    trained, _ = train(problem.student, arm, batch, 3, lr, "adam", Evaluation(x_eval, y_eval), 3, seed=0)
    model = copy.deepcopy(problem.student)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    for t in range(3):
        g = arm_gradient(arm, model, *batch(t), seed=t)
        for name, w in model.named_parameters():
            w.grad = g[name].clone()
        opt.step()
    for (name, a), b in zip(trained.named_parameters(), model.parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name


def test_every_arm_takes_the_exact_readout_gradient():
    problem, batch = _wide_problem()
    x, y = batch(0)
    model = problem.student
    w = model.readout.weight.detach().clone().requires_grad_(True)
    with torch.no_grad():
        h = x
        for unit in model.units[:-1]:
            h = unit(h)
    exact = torch.autograd.grad(((h @ w.T - y) ** 2).mean(), w)[0]  # by hand: the readout is linear
    for arm in arms_for(build(TrainingParams, {**TINY, "large_batch_rows": 50}), 64):
        g = arm_gradient(arm, model, x, y, seed=3, large_batch=lambda: batch(1))
        assert torch.allclose(g[READOUT], exact, rtol=1e-10, atol=1e-12), arm.label
        assert set(g) == {n for n, _ in model.named_parameters()}


def test_a_zero_hidden_gradient_leaves_the_hidden_layers_unchanged():
    problem, batch = _wide_problem()
    x_eval, y_eval = problem.batch(100, 99, dtype=torch.float64)
    trained, curve = train(problem.student, Arm("readout_only"), batch, 5, 0.1, "normalized",
                           Evaluation(x_eval, y_eval), 5, seed=0)
    before = dict(problem.student.named_parameters())
    for name, w in trained.named_parameters():
        same = torch.equal(w, before[name])
        assert same == (name != READOUT), name
    assert all(math.isnan(c) for c in curve.cosine)


def test_the_controls_are_what_they_say():
    problem, batch = _wide_problem()
    x, y = batch(0)
    a = arm_gradient(Arm("random"), problem.student, x, y, seed=1)
    b = arm_gradient(Arm("random"), problem.student, x * 0, y * 0, seed=1)  # data-free: the data does not matter
    c = arm_gradient(Arm("random"), problem.student, x, y, seed=2)
    assert torch.equal(a["fc1.weight"], b["fc1.weight"]) and not torch.equal(a["fc1.weight"], c["fc1.weight"])


def _numbers(records):
    """The records without their CPU seconds (measured, so never the same twice)."""
    return [{k: v for k, v in r.items() if k != "estimate_cpu_s"} for r in records]


def test_the_same_seed_gives_the_same_curves(tiny):
    again = run(TINY, progress=False)
    assert _numbers(again["records"]) == _numbers(tiny["records"])


def test_records_and_pairing(tiny):
    p = build(TrainingParams, TINY)
    recs = tiny["records"]
    arms = arms_for(p, 64)
    assert len(recs) == (p.tune_inits * len(p.lrs) + p.num_init) * len(arms)
    tuned = {r["init"] for r in recs if r["phase"] == "tune"}
    reported = {r["init"] for r in recs if r["phase"] == "report"}
    assert tuned == {TUNING_INIT} and reported == {0, 1}
    for init in reported:  # paired: every arm of an initialisation starts at the same population loss
        starts = {r["loss"][0] for r in recs if r["phase"] == "report" and r["init"] == init}
        assert len(starts) == 1
    for r in recs:
        assert r["steps"] == [0, 3, 6]
        assert r["estimate_cpu_s"][0] == 0 and r["estimate_cpu_s"][-1] > 0


def test_resume_gives_the_same_numbers(tiny, tmp_path, reporters):
    with pytest.raises(reporters.Killed):
        run(TINY, on_step=reporters.DiesAfter(tmp_path / "r.json", 2), progress=False)
    recording = reporters.Recording(tmp_path / "r.json")
    resumed = run(TINY, on_step=recording, progress=False)
    assert [c[0] for c in recording.calls] == [2, 3, 4]
    assert _numbers(resumed["records"]) == _numbers(tiny["records"])


def _record(phase, init, arm, lr, losses, n=64, cosine0=0.5):
    return {"phase": phase, "batch_size": n, "init": init, "arm": arm.to_json(), "lr": lr,
            "steps": list(range(0, 10 * len(losses), 10)), "loss": losses, "cosine": [cosine0] * len(losses),
            "estimate_cpu_s": [0.01 * k for k in range(len(losses))]}


def test_the_lr_is_chosen_on_the_tuning_inits_only():
    arm = Arm("ste", variant="clipped")
    recs = [_record("tune", 500, arm, 0.1, [1.0, 0.5]), _record("tune", 500, arm, 0.3, [1.0, 0.7]),
            _record("report", 0, arm, 0.3, [1.0, 0.01])]  # the reported init would prefer 0.3
    assert chosen_lrs(recs, 64) == {arm: 0.1}
    diverged = [_record("tune", 500, arm, 0.1, [1.0, float("nan")]), _record("tune", 500, arm, 0.3, [1.0, 0.9])]
    assert chosen_lrs(diverged, 64) == {arm: 0.3}
    p = build(TrainingParams, {"num_init": 5, "tune_inits": 3})
    assert not set(p.tuning_inits()) & set(range(p.num_init))


def _known_run(gap, inits=8):
    """Records whose answers are known: CDG ends ``gap`` below the best STE (clipped) on every reported
    init, with a small init-dependent wobble; identity ends 0.3 above; on the tuning init, identity
    looks better than clipped at the chosen lr only on the reported data (it must not be chosen)."""
    clipped, identity, cdg = Arm("ste", variant="clipped"), Arm("ste", variant="identity"), Arm("cdg", eps=0.1)
    recs = []
    for arm, end in ((clipped, 0.5), (identity, 0.6), (cdg, 0.5)):
        recs.append(_record("tune", 500, arm, 0.1, [1.0, 0.8, end]))
    for i in range(inits):
        wobble = 0.01 * ((i * 7) % 5 - 2)
        recs.append(_record("report", i, clipped, 0.1, [1.0, 0.7, 0.5 + wobble], cosine0=0.3))
        recs.append(_record("report", i, identity, 0.1, [1.0, 0.9, 0.8 + wobble], cosine0=0.1))
        recs.append(_record("report", i, cdg, 0.1, [1.0, 0.6, 0.5 - gap + wobble], cosine0=0.9))
    params = {**build(TrainingParams, {"batch_sizes": [64], "nes_batch_sizes": []}).__dict__, "steps": 20}
    return {"parameters": params, "records": recs}


def test_comparisons_on_records_with_known_answers():
    (b,) = blocks([_known_run(0.1)])
    assert b.best_ste == Arm("ste", variant="clipped")
    assert b.target == pytest.approx(1 - TARGET_SHARE * 0.5)  # 0.625: clipped's tuning decrease, three quarters
    cdg = b.score(Arm("cdg", eps=0.1))
    assert cdg.estimate.mean == pytest.approx(0.4 + sum(0.01 * ((i * 7) % 5 - 2) for i in range(8)) / 8)
    assert cdg.steps_to_target == {i: 10.0 for i in range(8)} and cdg.reached == 8
    identity = b.score(Arm("ste", variant="identity"))
    assert identity.steps_to_target == {i: 20.0 for i in range(8)} and identity.reached == 0  # never: counts K
    comps = {(c.arm.label, c.measure): c for c in comparisons([b], 0.02)}
    assert comps[("CDG ε=0.1", "final")].verdict == "lower"
    assert comps[("CDG ε=0.1", "final")].claim.difference.mean == pytest.approx(-0.1)
    assert comps[("STE identity", "final")].verdict == "higher"
    assert comps[("CDG ε=0.1", "steps")].verdict == "lower"  # 10 steps against clipped's 20 on every init
    assert b.correlation.mean == pytest.approx(-0.999)  # higher first cosine, lower final loss, on every init (ρ = −1, clipped)
    (tied,) = blocks([_known_run(0.0)])
    same = {(c.arm.label, c.measure): c for c in comparisons([tied], 0.02)}
    assert same[("CDG ε=0.1", "final")].verdict == "equivalent"


def test_bad_parameters_name_the_key():
    with pytest.raises(SchemaError) as err:
        build(TrainingParams, {"batch_sizes": [256], "nes_batch_sizes": [1024]})
    assert err.value.key == "nes_batch_sizes"
    with pytest.raises(SchemaError) as err:
        build(TrainingParams, {"optimizer": "sgd"})
    assert err.value.key == "optimizer"
    with pytest.raises(SchemaError) as err:
        build(TrainingParams, {"steps": 5, "eval_every": 10})
    assert err.value.key == "eval_every"


def test_section_and_findings(tiny):
    runs = [{"id": "training", "entry": {}, "results": tiny}]
    cells = section.report_cells(runs)
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert text.startswith("### Training with each estimator (beyond the notes)")
    assert "n = 2 reported initialisations" in text and "STE clipped" in text and "readout only" in text
    assert sum(1 for c in cells if c.cell_type == "code") == 2  # against step and against CPU seconds
    (sentence,) = section.findings(runs)
    assert sentence.startswith("**Training with each estimator** ([section](#training-with-each-estimator-beyond-the-notes))")
    assert "num_dim 4, from initialisation, N = 64: CDG ε=0.1 " in sentence and "NES 20, σ=0.1" in sentence
    failed = section.report_cells([{"id": "t", "entry": {"status": "failed", "error": "boom"}, "results": None}])
    assert "No successful training run" in failed[1].source and "boom" in failed[-1].source


def test_notebook_runs_under_papermill(tmp_path):
    out = tmp_path / "results.json"
    with execute.kernel_environment(execute.threads_per_job(1)):
        papermill.execute_notebook(str(ROOT / "notebooks" / "training.ipynb"), str(tmp_path / "run.ipynb"),
                                   parameters={**TINY, "results_path": str(out)},
                                   kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    results = json.loads(out.read_text())
    assert results["experiment"] == "training" and results["parameters"]["num_dim"] == 4
    nb = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_the_mean_correlation_stays_within_its_range():
    from lib.experiments.training.analysis import fisher_mean
    est = fisher_mean([-0.9, -0.2, 0.5])
    assert -1 <= est.interval[0] < est.mean < est.interval[1] <= 1
    assert est.mean == pytest.approx(math.tanh((math.atanh(-0.9) + math.atanh(-0.2) + math.atanh(0.5)) / 3))
    assert fisher_mean([-1.0, -1.0, -1.0]).mean == pytest.approx(-0.999)  # clipped, finite
