"""State that heals: an unreadable manifest is moved aside and rebuilt from the results files
that hold their run's parameters; executed notebooks are renamed into place when they end; a run
whose notebook ended before the runner could record it is adopted, not computed again."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

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
    assert "is unreadable (not JSON); moved to manifest.json.corrupt-" in captured.err
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


# ----------------------------------------------------------------------------- state that heals, case by case

RID = "toy__pretrained-false__num_dim-4"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny toy run, finished and recorded; tests work on copies."""
    tmp = tmp_path_factory.mktemp("finished")
    args = _setup(tmp, {"num_dim": [4]})
    assert runner.main(args) == 0
    return tmp


def _copy(finished, tmp_path):
    """A copy of the finished folder (its over.yaml, and so its parameters, unchanged)."""
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    args = ["--params-dir", str(tmp_path / "params"), "--reports-dir", str(tmp_path / "reports"), "--date", DATE,
            "--only", "toy", "--params", str(tmp_path / "over.yaml"), "--no-report"]
    return args, tmp_path / "reports" / DATE


@pytest.mark.parametrize("change,why", [
    (lambda m: {**m, "invocations": "x"}, "'invocations' is a str"),
    (lambda m: {**m, "runs": [1]}, "'runs' is a list"),
    (lambda m: {**m, "runs": {RID: "ok"}}, f"run entry {RID!r} is not an object"),
    (lambda m: {**m, "invocations": [3]}, "an invocation is not an object"),
    (lambda m: [m], "not a JSON object"),
])
def test_a_manifest_of_the_wrong_shape_is_moved_aside_and_rebuilt(finished, tmp_path, capsys, change, why):
    args, report = _copy(finished, tmp_path)
    atomic_write_json(report / "manifest.json", change(read_json(report / "manifest.json")))
    capsys.readouterr()
    assert runner.main(args) == 0
    captured = capsys.readouterr()
    assert f"is unreadable ({why}); moved to manifest.json.corrupt-" in captured.err
    assert "0 ok, 1 cached, 0 failed" in captured.out
    assert "another or an unrecorded version" not in captured.out  # a rebuild invents no version note
    assert read_json(report / "manifest.json")["runs"][RID]["rebuilt"] is True


def test_a_deleted_results_file_is_named_and_the_cached_runs_listed(finished, tmp_path, capsys):
    args, report = _copy(finished, tmp_path)
    capsys.readouterr()
    assert runner.main(args) == 0
    assert f"cached 1 run(s) in {report / 'manifest.json'}: {RID}" in capsys.readouterr().out
    (report / "results" / f"{RID}.json").unlink()
    assert runner.main(args) == 0
    out = capsys.readouterr().out
    assert f"warning: {report / 'results' / (RID + '.json')}: missing; {RID} is computed again" in out
    assert "1 ok, 0 cached, 0 failed" in out


def test_a_killed_invocation_is_recorded_as_interrupted_by_the_next(finished, tmp_path):
    args, report = _copy(finished, tmp_path)
    m = read_json(report / "manifest.json")
    assert m["invocations"][-1]["completed"] is True and m["invocations"][-1]["interrupted"] is False
    m["invocations"][-1]["completed"] = False  # as SIGKILL leaves it: the heartbeat's last record
    atomic_write_json(report / "manifest.json", m)
    assert runner.main(args) == 0
    first, second = read_json(report / "manifest.json")["invocations"]
    assert first["interrupted"] is True and second["completed"] is True and second["interrupted"] is False


def test_a_notebook_cut_short_keeps_its_partial_name(tmp_path, monkeypatch, capsys):
    """A full disk while papermill writes the executed notebook: the run fails with one line and the
    half-written notebook does not take the final name."""
    import errno

    args = _setup(tmp_path, {"num_dim": [4]})

    def disk_full(notebook, output, **kwargs):
        Path(output).write_text('{"cells": [')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(execute.papermill, "execute_notebook", disk_full)
    assert runner.main(args) == 1
    runs = tmp_path / "reports" / DATE / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [f"{RID}.partial.ipynb"]
    assert "No space left on device" in capsys.readouterr().out


def test_warnings_a_notebook_wrote_reach_the_console(tmp_path, monkeypatch, capsys):
    line = "warning: checkpoint /c/x.pt was written for other parameters; moved to x.pt.other-parameters, training again"
    nb = tmp_path / "run.ipynb"
    nb.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": "warning: prose"},
        {"cell_type": "code", "outputs": [
            {"output_type": "stream", "name": "stderr", "text": ["progress 3/10\n", line + "\n"]},
            {"output_type": "stream", "name": "stdout", "text": "warning: printed, not a warning\n"}]}]}))
    assert execute.notebook_warnings(nb) == [line]
    assert execute.notebook_warnings(tmp_path / "missing.ipynb") == []
    (tmp_path / "cut.ipynb").write_text('{"cells": [')
    assert execute.notebook_warnings(tmp_path / "cut.ipynb") == []

    args = _setup(tmp_path, {"num_dim": [4]})

    def with_warning(run, report_dir, root, code):
        (report_dir / "results" / f"{run.run_id}.json").write_text("{}")
        return {"status": "ok", "params_hash": run.params_hash, "wall_s": 0.01, "error": None, "warnings": [line],
                **code}

    monkeypatch.setattr(execute, "execute_run", with_warning)
    assert runner.main(args) == 0
    assert f"  {RID}: {line}" in capsys.readouterr().out


def test_a_run_that_succeeds_prints_no_error_or_traceback(tmp_path, capfd):
    """Five tiny runs, the console's file descriptors captured (the kernels write there too): no
    ERROR or Traceback line. The kernel's shutdown noise was intermittent (7 of 70 logs), so this
    can pass by luck without the fix; five runs make that less likely."""
    args = _setup(tmp_path, {"num_dim": [2, 3, 4, 5, 6]})
    assert runner.main(args) == 0
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "5 ok, 0 cached, 0 failed" in text
    assert "ERROR" not in text and "Traceback" not in text, text[-2000:]
