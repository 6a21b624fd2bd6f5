"""State that heals: an unreadable manifest is moved aside and rebuilt from the results files
that hold their run's parameters; executed notebooks are renamed into place when they end; a run
whose notebook ended before the runner could record it is adopted, not computed again."""
from __future__ import annotations

import json

import pytest

from lib.common.files import atomic_write_json, read_json
from lib.experiments.resume import partial_path
from lib.pipeline import execute, runner
from lib.pipeline.manifest import code_sha256, started_path
from test_cluster import DATE, ROOT, _setup


def test_an_unreadable_manifest_is_moved_aside_and_rebuilt_from_the_results(tmp_path, capsys):
    args = _setup(tmp_path, {"num_dim": [4, 6]})
    assert runner.main(args) == 0
    report = tmp_path / "reports" / DATE
    assert sorted(p.name for p in (report / "runs").iterdir()) == [
        "toy__pretrained-false__num_dim-4.ipynb", "toy__pretrained-false__num_dim-6.ipynb"]  # no .partial left
    text = (report / "manifest.json").read_text()
    (report / "manifest.json").write_text(text[: len(text) // 2])  # truncated
    other = report / "results" / "toy__pretrained-false__num_dim-6.json"  # its parameters no longer match
    other.write_text(json.dumps({**read_json(other), "parameters": {"num_dim": 99}}))
    capsys.readouterr()
    assert runner.main(args) == 0
    captured = capsys.readouterr()
    assert "is unreadable; moved to manifest.json.corrupt-" in captured.err
    assert "manifest rebuilt: 1 finished run(s) recovered" in captured.out
    assert "1 ok, 1 cached, 0 failed" in captured.out
    [aside] = report.glob("manifest.json.corrupt-*")
    assert aside.read_text() == text[: len(text) // 2]  # kept as it was
    manifest = read_json(report / "manifest.json")
    assert manifest["runs"]["toy__pretrained-false__num_dim-4"]["rebuilt"] is True
    assert "rebuilt" not in manifest["runs"]["toy__pretrained-false__num_dim-6"]  # computed again
    assert read_json(other)["parameters"]["num_dim"] == 6


def _killed_after_the_notebook(monkeypatch):
    """The runner stops (Ctrl-C, SIGTERM, SIGKILL alike) after a notebook ended, before its entry
    is written."""
    real = execute.execute_run

    def run_then_stop(run, report_dir, root, code):
        real(run, report_dir, root, code)
        raise KeyboardInterrupt

    monkeypatch.setattr(execute, "execute_run", run_then_stop)


def test_a_run_finished_but_not_recorded_is_adopted_not_recomputed(tmp_path, monkeypatch, capsys):
    args = _setup(tmp_path, {"num_dim": [4]})
    rid = "toy__pretrained-false__num_dim-4"
    report = tmp_path / "reports" / DATE
    results = report / "results" / f"{rid}.json"
    _killed_after_the_notebook(monkeypatch)
    assert runner.main(args) == 130
    assert results.is_file() and started_path(results).is_file() and partial_path(results).is_file()
    assert rid not in read_json(report / "manifest.json")["runs"]
    token = read_json(results)
    (report / ".manifest.json.x1y2.tmp").write_text("{")  # what an interrupted atomic write leaves
    monkeypatch.setattr(execute, "execute_run", lambda *a: pytest.fail("a finished run was computed again"))
    capsys.readouterr()
    assert runner.main(args) == 0
    out = capsys.readouterr().out
    assert f"recorded 1 run(s) that finished before the runner could record them: {rid}" in out
    assert "0 ok, 1 cached, 0 failed" in out and "another or an unrecorded version" not in out
    entry = read_json(report / "manifest.json")["runs"][rid]
    assert entry["adopted"] is True and entry["code_sha256"] == code_sha256(ROOT)
    assert read_json(results) == token
    assert not started_path(results).exists() and not partial_path(results).exists()
    assert not list(report.glob(".*.tmp"))


def test_a_finished_run_of_another_key_is_computed_again(tmp_path, monkeypatch, capsys):
    """The start marker names the key the results were computed under: another one (the notebook
    changed since) is not adopted, and the run resumes from its saved steps instead."""
    args = _setup(tmp_path, {"num_dim": [4]})
    rid = "toy__pretrained-false__num_dim-4"
    results = tmp_path / "reports" / DATE / "results" / f"{rid}.json"
    _killed_after_the_notebook(monkeypatch)
    assert runner.main(args) == 130
    marker = read_json(started_path(results))
    atomic_write_json(started_path(results), {**marker, "params_hash": "another"})
    monkeypatch.undo()
    capsys.readouterr()
    assert runner.main(args) == 0
    assert "1 ok, 0 cached, 0 failed" in capsys.readouterr().out
    assert not started_path(results).exists()
