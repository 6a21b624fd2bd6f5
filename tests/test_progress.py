"""Progress files of running notebooks (lib/progress.py) and the steps the toy reports."""
from __future__ import annotations

import json
import time

import pytest

from lib import progress
from lib.toy import ToyParams, run_toy


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
])
def test_time_left_is_linear_extrapolation(state, now, left, text):
    assert progress.seconds_left(state, now) == left
    assert progress.describe(state, now) == text


def test_describe_before_any_progress():
    assert progress.describe(None) == "starting"


def test_toy_reports_one_step_per_rep_and_sigma():
    calls = []
    p = ToyParams(num_dim=4, eps_grid=[0.1], sigma_grid=[0.1, 0.5], nes_samples=[20], ste_variants=["clipped"],
                  num_lr=3, num_lr_refine=2, batch_size=16, num_init=1, num_batch=2, diagnose=False)
    run_toy(p, progress=False, on_step=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(k, 4) for k in range(1, 5)]
    assert [c[2] for c in calls] == ["init 0 batch 0: NES σ=0.1", "init 0 batch 0: NES σ=0.5",
                                     "init 0 batch 1: NES σ=0.1", "init 0 batch 1: NES σ=0.5"]
    json.dumps(calls)
