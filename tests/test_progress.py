"""Progress files of running notebooks (lib/experiments/progress.py), the steps the toy reports, and
resuming a toy run from its partial state (lib/experiments/resume.py)."""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from lib.experiments import progress
from lib.experiments.resume import Checkpoint, partial_path
from lib.experiments.toy.params import ToyParams
from lib.experiments.toy.run import run as run_toy


def test_reporter_writes_what_read_progress_returns(tmp_path):
    results = tmp_path / "results" / "run.json"
    assert progress.read_progress(results) is None            # nothing yet
    report = progress.Reporter(results)
    report(3, 9, "init 0 batch 2")
    path = tmp_path / "results" / "run.json.progress"
    assert progress.progress_path(results) == path and not results.exists()
    got = progress.read_progress(results)
    assert (got["done"], got["total"], got["what"]) == (3, 9, "init 0 batch 2") and got["elapsed_s"] >= 0
    assert abs(got["written"] - time.time()) < 60
    path.write_text("{not json")
    assert progress.read_progress(results) is None


@pytest.mark.parametrize("state,now,left,text", [
    ({"done": 2, "total": 8, "elapsed_s": 60.0}, None, 180.0, "2/8, ~3 min left"),
    ({"done": 4, "total": 5, "elapsed_s": 40.0}, None, 10.0, "4/5, ~10 s left"),
    ({"done": 5, "total": 5, "elapsed_s": 40.0}, None, 0.0, "5/5, ~0 s left"),
    ({"done": 0, "total": 5, "elapsed_s": 40.0}, None, None, "0/5"),
    # counts down from the last report: 180 s left when written, 30 s ago
    ({"done": 2, "total": 8, "elapsed_s": 60.0, "written": 1000.0}, 1030.0, 150.0, "2/8, ~2 min left"),
    ({"done": 2, "total": 8, "elapsed_s": 60.0, "written": 1000.0}, 1500.0, 0.0, "2/8, ~0 s left"),
    # resumed after 4 steps: this attempt did 2 steps in 60 s, so 2 more take 60 s
    ({"done": 6, "total": 8, "done_at_start": 4, "elapsed_s": 60.0}, None, 60.0, "6/8, ~1 min left"),
    ({"done": 4, "total": 8, "done_at_start": 4, "elapsed_s": 60.0}, None, None, "4/8"),
    # before this attempt's first step: how long it has run, counted on from the last report
    ({"done": 0, "total": 9, "elapsed_s": 0.0, "written": 1000.0}, 1240.0, None, "0/9, 4 min in"),
    ({"done": 4, "total": 8, "done_at_start": 4, "elapsed_s": 0.0, "written": 1000.0}, 1030.0, None, "4/8, 30 s in"),
])
def test_time_left_is_linear_extrapolation(state, now, left, text):
    assert progress.seconds_left(state, now) == left
    assert progress.describe(state, now) == text


def test_describe_before_any_progress():
    assert progress.describe(None) == "starting"


def test_a_fresh_run_reports_its_start_at_once(tmp_path):
    """The runner shows a run's step count from its start, not "starting" until a step is done."""
    p = ToyParams(num_dim=4, eps_grid=[0.1], sigma_grid=[0.1], nes_samples=[20], ste_variants=["clipped"],
                  num_lr=3, num_lr_refine=2, batch_size=16, num_init=1, num_batch=2, diagnose=False,
                  sigma_search="grid")
    seen = []

    class Watching(progress.Reporter):
        def __call__(self, done, total, what=""):
            super().__call__(done, total, what)
            seen.append(progress.read_progress(self.results_path))

    run_toy(p, progress=False, on_step=Watching(tmp_path / "run.json"))
    assert [(s["done"], s["total"], s["what"]) for s in seen] == \
        [(0, 2, "started"), (1, 2, "init 0 batch 0"), (2, 2, "init 0 batch 1")]
    assert progress.describe(seen[0], seen[0]["written"] + 130) == "0/2, 2 min in"


def test_toy_reports_one_step_per_initialisation_and_batch():
    calls = []
    p = ToyParams(num_dim=4, eps_grid=[0.1], sigma_grid=[0.1, 0.5], nes_samples=[20], ste_variants=["clipped"],
                  num_lr=3, num_lr_refine=2, batch_size=16, num_init=1, num_batch=2, diagnose=False,
                  sigma_search="grid")
    run_toy(p, progress=False, on_step=lambda *a: calls.append(a))
    assert calls == [(1, 2, "init 0 batch 0"), (2, 2, "init 0 batch 1")]
    json.dumps(calls)


def test_toy_with_the_sigma_search_reports_its_rungs_first():
    """Halving over 3 sample counts: 2 rungs × 2 tuning initialisations, then the reported steps."""
    calls = []
    p = ToyParams(num_dim=4, eps_grid=[0.1], sigma_grid=[0.1, 0.5, 2.0], nes_samples=[10, 20, 40],
                  ste_variants=["clipped"], num_lr=3, num_lr_refine=2, batch_size=16, num_init=1, num_batch=1,
                  diagnose=False)
    run_toy(p, progress=False, on_step=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(k, 5) for k in range(1, 6)]
    assert [c[2] for c in calls] == ["σ search: 3 σ at 10 directions, tuning init 500",
                                     "σ search: 3 σ at 10 directions, tuning init 501",
                                     "σ search: 2 σ at 20 directions, tuning init 500",
                                     "σ search: 2 σ at 20 directions, tuning init 501", "init 0 batch 0"]


def _tiny(**kw):
    base = dict(sigma_search="grid", num_dim=4, eps_grid=[0.1, 0.3], sigma_grid=[0.1, 0.5, 2.0], nes_samples=[20, 50],
                ste_variants=["clipped", "identity"], num_lr=3, num_lr_refine=2, batch_size=16, num_init=2,
                num_batch=2, pretrain_steps=5, pretrain_batch_size=32)
    return ToyParams(**{**base, **kw})


def _numbers(results):
    """What a run computed (not its timings, nor whether the pretraining came from the cache)."""
    pretrain = [{k: v for k, v in info.items() if k != "cached"} for info in results["pretrain"]]
    return {**{k: results[k] for k in ("curves", "cosines", "base_loss", "diagnosis", "population", "sigma_search")},
            "pretrain": pretrain}


# grid: 4 steps (inside the 1st init, at the 2nd init's start, inside it); halving: 2 tuning steps
# first (inside the search, at its end, inside the 1st reported init, at the 2nd's start)
@pytest.mark.parametrize("mode, killed_after", [("grid", 1), ("grid", 2), ("grid", 3),
                                                ("halving", 1), ("halving", 2), ("halving", 3), ("halving", 4)])
def test_toy_resumes_from_its_checkpoint_with_the_same_numbers(tmp_path, mode, killed_after, reporters):
    p = _tiny(pretrained=True, cache_dir=str(tmp_path / "cache"), sigma_search=mode)
    total = 4 + (2 if mode == "halving" else 0)
    reference = run_toy(p, progress=False)  # no reporter: no checkpoint
    results = tmp_path / "run.json"
    with pytest.raises(reporters.Killed):
        run_toy(p, progress=False, on_step=reporters.DiesAfter(results, killed_after))
    saved = json.loads(partial_path(results).read_text())["state"]
    assert saved["finished"] == killed_after and saved["cpu_s"] > 0
    recording = reporters.Recording(results)
    resumed = run_toy(p, progress=False, on_step=recording)
    assert resumed["cpu_s"] > saved["cpu_s"] and resumed["wall_s"] > saved["elapsed_s"]  # summed over attempts
    # reported at once, then only the rest is computed
    assert [c[:2] for c in recording.calls] == \
        [(killed_after, killed_after)] + [(k, killed_after) for k in range(killed_after + 1, total + 1)]
    assert _numbers(resumed) == _numbers(reference)


def test_toy_checkpoint_of_other_parameters_is_ignored(tmp_path, reporters):
    results = tmp_path / "run.json"
    with pytest.raises(reporters.Killed):
        run_toy(_tiny(seed=1), progress=False, on_step=reporters.DiesAfter(results, 2))
    p = _tiny()
    recording = reporters.Recording(results)
    resumed = run_toy(p, progress=False, on_step=recording)
    assert [c[0] for c in recording.calls] == list(range(0, 5))  # "started", then each step
    assert _numbers(resumed) == _numbers(run_toy(p, progress=False))


def test_toy_checkpoint_of_one_step_per_sigma_is_ignored_not_misread(tmp_path, reporters):
    """A state saved when a toy step was one σ (12 steps here, under the bare parameters' key)
    would mark every repetition done if its count were read in today's steps."""
    p = _tiny()
    results = tmp_path / "run.json"
    Checkpoint(partial_path(results), dataclasses.asdict(p)).save({"finished": 7, "elapsed_s": 1.0})
    recording = reporters.Recording(results)
    resumed = run_toy(p, progress=False, on_step=recording)
    assert [c[:2] for c in recording.calls] == [(k, 0) for k in range(0, 5)]
    assert _numbers(resumed) == _numbers(run_toy(p, progress=False))


def test_checkpoint_keeps_floats_bit_for_bit(tmp_path):
    values = [0.1 + 0.2, 1e-310, -0.0, float("nan"), float("inf"), -float("inf"), 2.0 ** -1074]
    ck = Checkpoint(tmp_path / "x.partial", {"a": 1})
    ck.save({"v": np.array(values), "n": 3})
    back = Checkpoint(tmp_path / "x.partial", {"a": 1}).load()
    assert np.array(back["v"]).tobytes() == np.array(values).tobytes() and back["n"] == 3
    assert Checkpoint(tmp_path / "x.partial", {"a": 2}).load() is None
    assert Checkpoint(tmp_path / "missing.partial", {"a": 1}).load() is None


def test_toy_student_precision_is_a_parameter():
    """act: ternary evaluates a ternary student: its loss before the step is that of an
    independently built ternary student on the same batch."""
    import torch

    from lib.training.gaussian import toy_problem

    p = ToyParams(num_dim=4, act="ternary", diagnose=False, eps_grid=[0.1], sigma_grid=[0.1], nes_samples=[20],
                  ste_variants=["clipped"], num_lr=3, num_lr_refine=0, batch_size=32, num_init=1, num_batch=1)
    r = run_toy(p, progress=False)
    problem = toy_problem(4, 0, act="ternary")
    x, y = problem.batch(32, 0)
    with torch.no_grad():
        expected = float(((problem.student(x) - y) ** 2).mean())
    assert r["parameters"]["act"] == "ternary" and r["base_loss"] == expected
    binary = toy_problem(4, 0)
    with torch.no_grad():
        assert float(((binary.student(x) - y) ** 2).mean()) != expected  # the precision matters here
