"""Tests of the parameter files and grids (lib/pipeline/grid.py, checked against the schemas), the
grid runner (lib/pipeline/runner.py, execute.py, manifest.py) and run_all.sh.

Notebooks are executed for real (papermill + an ipykernel) on the tiny fixture
tests/fixtures/toy.ipynb, which writes its parameters and a random token to ``results_path``;
an unchanged token proves that a run was not recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import nbformat
import pytest

from lib.pipeline import grid
from lib.report import manifest as report
from lib.pipeline import execute, runner
from lib.pipeline import manifest as manifests
from lib.common.files import atomic_write_json, read_json

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "tests/fixtures/toy.ipynb"
DATE = "2024-01-02"
TOY_IDS = [
    "toy__num_dim-8__pretrained-false",
    "toy__num_dim-8__pretrained-true",
    "toy__num_dim-16__pretrained-false",
    "toy__num_dim-16__pretrained-true",
]

TOY_YAML = f"""\
notebook: {NOTEBOOK}
grid: [num_dim, pretrained]
profiles:
  quick: {{num_dim: [8, 16], pretrained: [false, true], eps: 0.1, seed: 0}}
  full: {{num_dim: [8, 16, 32], pretrained: [false, true], eps: 0.01, seed: 1}}
"""
SINGLE_YAML = f"""\
notebook: {NOTEBOOK}
grid: []
profiles:
  quick: {{num_dim: 4, eps: 0.2, lrs: [0.5, 0.05]}}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def run_main(tmp: Path, *args: str) -> int:
    return runner.main(["--params-dir", str(tmp / "params"), "--reports-dir", str(tmp / "reports"),
                        "--date", DATE, "--no-report", *args])


def report_dir(tmp: Path) -> Path:
    return tmp / "reports" / DATE


def results(tmp: Path, run_id: str) -> dict:
    return read_json(report_dir(tmp) / "results" / f"{run_id}.json")


def manifest(tmp: Path) -> dict:
    return read_json(report_dir(tmp) / "manifest.json")


# ----------------------------------------------------------------------------- pure functions


@pytest.fixture(scope="module", autouse=True)
def _fixture_experiment(register_fixture_notebook):
    """tests/fixtures/toy.ipynb is an experiment while these tests run (conftest.FixtureParams)."""
    with pytest.MonkeyPatch.context() as mp:
        register_fixture_notebook(mp)
        yield


def test_make_run_id_is_file_name_safe():
    assert grid.make_run_id("toy", []) == "toy"
    assert grid.make_run_id("toy", [("eps", 0.01), ("pretrained", False)]) == "toy__eps-0.01__pretrained-false"
    rid = grid.make_run_id("toy", [("act", "a b/c"), ("lrs", [0.1, 1e-05])])
    assert rid == "toy__act-a_b_c__lrs-0.1_1e-05"


def test_expand_grid_cartesian_product_in_listed_order(tmp_path):
    pf = grid.load_params_file(write(tmp_path / "toy.yaml", TOY_YAML), "quick")
    runs = grid.expand_grid(pf)
    assert [r.run_id for r in runs] == TOY_IDS
    assert [(r.parameters["num_dim"], r.parameters["pretrained"]) for r in runs] == [
        (8, False), (8, True), (16, False), (16, True)]
    assert all(r.parameters["eps"] == 0.1 and r.parameters["seed"] == 0 for r in runs)
    assert all("results_path" not in r.parameters for r in runs)
    assert len({r.params_hash for r in runs}) == 4
    full = grid.expand_grid(grid.load_params_file(tmp_path / "toy.yaml", "full"))
    assert len(full) == 6 and full[-1].run_id == "toy__num_dim-32__pretrained-true"
    # no grid axes: a single run named after the file
    single = grid.expand_grid(grid.load_params_file(write(tmp_path / "single.yaml", SINGLE_YAML), "quick"))
    assert [r.run_id for r in single] == ["single"]


def test_int_accepted_for_float_and_made_float(tmp_path):
    path = write(tmp_path / "t.yaml", TOY_YAML.replace("eps: 0.1", "eps: 1"))
    pf = grid.load_params_file(path, "quick")
    assert pf.values["eps"] == 1.0 and isinstance(pf.values["eps"], float)


def test_params_hash_depends_on_parameters_and_notebook():
    a = grid.params_hash({"eps": 0.1, "seed": 0}, "nb1")
    assert a == grid.params_hash({"seed": 0, "eps": 0.1, "results_path": "/x.json"}, "nb1")
    assert a != grid.params_hash({"eps": 0.2, "seed": 0}, "nb1")
    assert a != grid.params_hash({"eps": 0.1, "seed": 0}, "nb2")


def test_nested_override_form(tmp_path):
    write(tmp_path / "params/toy.yaml", TOY_YAML)
    write(tmp_path / "params/single.yaml", SINGLE_YAML)
    over = write(tmp_path / "over.yaml", "toy: {eps: 0.3, num_dim: [32]}\nsingle: {seed: 7}\n")
    files = {pf.name: pf for pf in grid.validate(tmp_path / "params", None, "quick", over)}
    assert files["toy"].values["eps"] == 0.3 and files["toy"].values["num_dim"] == [32]
    assert files["single"].values["seed"] == 7 and files["toy"].values["seed"] == 0
    assert [r.run_id for r in grid.expand_grid(files["toy"])] == [
        "toy__num_dim-32__pretrained-false", "toy__num_dim-32__pretrained-true"]


# ----------------------------------------------------------------------------- invalid parameters


BAD_FILES = {
    # name: (yaml text for params/toy.yaml, extra CLI args, expected substrings of the one-line error)
    "unknown key in profile": (TOY_YAML.replace("seed: 0}", "seed: 0, num_dims: 3}"), [],
                               ["toy.yaml: profiles.quick.num_dims: not a parameter of tests/fixtures/toy.ipynb"]),
    "not a notebook parameter": (TOY_YAML.replace("seed: 0}", "seed: 0, batch_size: 3}"), [],
                                 ["toy.yaml: profiles.quick.batch_size: not a parameter"]),
    "wrong type": (TOY_YAML.replace("eps: 0.1", "eps: big"), [],
                   ["toy.yaml: profiles.quick.eps: expected float", 'got "big"']),
    "bool for int": (TOY_YAML.replace("seed: 0}", "seed: true}"), [],
                     ["toy.yaml: profiles.quick.seed: expected int", "got true"]),
    "wrong type in grid axis": (TOY_YAML.replace("num_dim: [8, 16]", "num_dim: [8, x]"), [],
                                ["toy.yaml: profiles.quick.num_dim: expected int", '"x"']),
    "grid axis not a list": (TOY_YAML.replace("num_dim: [8, 16]", "num_dim: 8"), [],
                             ["toy.yaml: profiles.quick.num_dim: grid axis: expected a non-empty list, got 8"]),
    "out of range": (TOY_YAML.replace("eps: 0.1", "eps: -1"), [],
                     ["toy.yaml: profiles.quick.eps: expected positive numbers, got -1.0"]),
    "out of range in grid axis": (TOY_YAML.replace("num_dim: [8, 16]", "num_dim: [8, 0]"), [],
                                  ["toy.yaml: profiles.quick.num_dim: expected positive integers, got 0"]),
    "repeated in grid axis": (TOY_YAML.replace("num_dim: [8, 16]", "num_dim: [8, 8]"), [],
                              ["toy.yaml: profiles.quick.num_dim: grid axis has repeated values: [8, 8]"]),
    "repeated list values": (TOY_YAML.replace("seed: 0}", "seed: 0, lrs: [0.1, 0.1]}"), [],
                             ["toy.yaml: profiles.quick.lrs: repeated values in [0.1, 0.1]"]),
    "inconsistent values": (TOY_YAML.replace("eps: 0.1", "eps: 2, mode: progress"), [],
                            ["toy.yaml: profiles.quick.eps: expected eps < 1 with mode progress, got 2.0",
                             "(grid point num_dim=8, pretrained=false)"]),
    "not an experiment's notebook": (TOY_YAML.replace(NOTEBOOK, "notebooks/summary.ipynb"), [],
                                     ["toy.yaml: notebook: notebooks/summary.ipynb is not the notebook of an "
                                      "experiment"]),
    "bad choice": (TOY_YAML.replace("seed: 0}", 'seed: 0, device: "tpu"}'), [],
                   ["toy.yaml: profiles.quick.device: expected one of cpu, cuda, auto"]),
    "results_path set": (TOY_YAML.replace("seed: 0}", "seed: 0, results_path: r.json}"), [],
                         ["toy.yaml: profiles.quick.results_path: results_path is set by the runner"]),
    "missing profile": (TOY_YAML, ["--profile", "huge", "--only", "toy"],
                        ["toy.yaml: profiles.huge: profile not found (available: quick, full)"]),
    "unknown top-level key": (TOY_YAML + "comment: hi\n", [], ["toy.yaml: comment: unknown top-level key"]),
    "missing top-level key": (TOY_YAML.replace("grid: [num_dim, pretrained]\n", ""), [],
                              ["toy.yaml: grid: missing top-level key"]),
    "grid key unset": (TOY_YAML.replace("num_dim: [8, 16], ", ""), [],
                       ["toy.yaml: grid: num_dim is a grid axis but profiles.quick does not set it"]),
    "grid key not a parameter": (TOY_YAML.replace("grid: [num_dim, pretrained]", "grid: [num_dim, width]"), [],
                                 ["toy.yaml: grid: width is not a parameter"]),
    "missing notebook": (TOY_YAML.replace(NOTEBOOK, "notebooks/nope.ipynb"), [],
                         ["toy.yaml: notebook: notebooks/nope.ipynb not found"]),
    "invalid yaml": ("notebook: [unclosed\n", [], ["toy.yaml: invalid YAML"]),
    "missing file": (TOY_YAML, ["--only", "toy,nope"], ["nope.yaml: file not found"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_invalid_params_rejected_before_any_run(tmp_path, capsys, case):
    text, args, expected = BAD_FILES[case]
    write(tmp_path / "params/toy.yaml", text)
    write(tmp_path / "params/single.yaml", SINGLE_YAML)  # valid; must not run either
    assert run_main(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for part in expected:
        assert part in err, err
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("override, expected", [
    ("num_dim: 32\n", "over.yaml: num_dim: grid axis: expected a non-empty list, got 32"),
    ("eps: 0\n", "over.yaml: eps: expected positive numbers, got 0.0"),
    ("epsilon: 0.1\n", "over.yaml: epsilon: not a parameter of any selected notebook (toy)"),
    ("toy: {epsilon: 0.1}\n", "over.yaml: toy.epsilon: not a parameter of tests/fixtures/toy.ipynb"),
    ("[1, 2]\n", "over.yaml: expected a mapping"),
])
def test_invalid_override_file_rejected(tmp_path, capsys, override, expected):
    write(tmp_path / "params/toy.yaml", TOY_YAML)
    write(tmp_path / "over.yaml", override)
    assert run_main(tmp_path, "--params", str(tmp_path / "over.yaml")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "reports").exists()


def test_one_line_per_bad_file(tmp_path, capsys):
    write(tmp_path / "params/a.yaml", TOY_YAML.replace("eps: 0.1", "eps: -2"))
    write(tmp_path / "params/b.yaml", TOY_YAML.replace("seed: 0", "seed: -1"))
    write(tmp_path / "params/c.yaml", SINGLE_YAML)
    assert run_main(tmp_path) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert "a.yaml: profiles.quick.eps:" in lines[0] and "b.yaml: profiles.quick.seed:" in lines[1]


def test_parameters_cell_must_match_the_schema(tmp_path, capsys, monkeypatch, register_fixture_notebook):
    nb = nbformat.read(ROOT / NOTEBOOK, as_version=4)
    params_cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params_cell.source = params_cell.source.replace("eps = 0.1", "epsilon = 0.1")
    nbformat.write(nb, tmp_path / "nb.ipynb")
    register_fixture_notebook(monkeypatch, str(tmp_path / "nb.ipynb"))
    write(tmp_path / "params/x.yaml", TOY_YAML.replace(NOTEBOOK, str(tmp_path / "nb.ipynb")).replace("eps: 0.1, ", ""))
    assert run_main(tmp_path) == 2
    assert ("x.yaml: notebook: the parameters cell of nb.ipynb does not match FixtureParams; missing eps; "
            "not in the schema epsilon") in capsys.readouterr().err


def test_notebook_without_results_path_rejected(tmp_path, capsys, monkeypatch, register_fixture_notebook):
    nb = nbformat.read(ROOT / NOTEBOOK, as_version=4)
    params_cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params_cell.source = "\n".join(ln for ln in params_cell.source.splitlines() if "results_path" not in ln)
    nbformat.write(nb, tmp_path / "nb.ipynb")
    register_fixture_notebook(monkeypatch, str(tmp_path / "nb.ipynb"))
    write(tmp_path / "params/x.yaml", TOY_YAML.replace(NOTEBOOK, str(tmp_path / "nb.ipynb")))
    assert run_main(tmp_path) == 2
    assert "x.yaml: notebook: nb.ipynb has no results_path parameter" in capsys.readouterr().err


def test_parameter_line_papermill_cannot_parse_rejected(tmp_path, capsys, monkeypatch, register_fixture_notebook):
    nb = nbformat.read(ROOT / NOTEBOOK, as_version=4)
    params_cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params_cell.source = params_cell.source.replace("eps = 0.1", "eps = 0.1  # the step, e.g. eps = 0.3", 1)
    assert "e.g. eps = 0.3" in params_cell.source
    nbformat.write(nb, tmp_path / "nb.ipynb")
    register_fixture_notebook(monkeypatch, str(tmp_path / "nb.ipynb"))
    write(tmp_path / "params/x.yaml", TOY_YAML.replace(NOTEBOOK, str(tmp_path / "nb.ipynb")))
    assert run_main(tmp_path) == 2
    assert "x.yaml: notebook: nb.ipynb: papermill cannot parse the parameters-cell line of eps" in capsys.readouterr().err


# ----------------------------------------------------------------------------- execution


@pytest.fixture(scope="module")
def base_grid(tmp_path_factory) -> Path:
    """The 2 x 2 toy grid executed once (2 parallel jobs); tests work on copies of it."""
    tmp = tmp_path_factory.mktemp("base")
    write(tmp / "params/toy.yaml", TOY_YAML)
    assert run_main(tmp, "--jobs", "2") == 0
    return tmp


def copy_of(base: Path, tmp: Path) -> Path:
    shutil.copytree(base, tmp, dirs_exist_ok=True)
    return tmp


def test_grid_runs_and_manifest(base_grid):
    m = manifest(base_grid)
    assert set(m["runs"]) == set(TOY_IDS)
    assert m["profile"] == "quick" and m["date"] == DATE
    assert set(m["versions"]) >= {"python", "torch", "numpy", "papermill"}
    assert "git_commit" in m and "started" in m
    for run_id, entry in m["runs"].items():
        assert entry["status"] == "ok" and entry["error"] is None and entry["wall_s"] > 0
        assert entry["name"] == "toy" and entry["notebook"] == NOTEBOOK
        assert entry["results"] == f"results/{run_id}.json"
        assert (report_dir(base_grid) / entry["executed_notebook"]).is_file()
        res = results(base_grid, run_id)
        assert {k: res[k] for k in entry["parameters"]} == entry["parameters"]
        assert res["omp_num_threads"] == str(max(1, os.cpu_count() // 2))
        assert res["nice"] == os.nice(0)                              # no --nice: as the runner
        assert res["cwd"] == str(ROOT)
    assert results(base_grid, TOY_IDS[3])["num_dim"] == 16 and results(base_grid, TOY_IDS[3])["pretrained"] is True
    # every entry names the library version that computed it; the invocation is on record
    assert {e["code_sha256"] for e in m["runs"].values()} == {manifests.code_sha256(ROOT)}
    assert all("git_commit" in e for e in m["runs"].values())
    [inv] = m["invocations"]
    assert sorted(inv["ran"]) == sorted(TOY_IDS) and inv["cached"] == 0 and inv["jobs"] == 2
    assert inv["planned"] == TOY_IDS and inv["interrupted"] is False
    assert inv["finished"] is not None
    assert inv["wall_s"] >= max(e["wall_s"] for e in m["runs"].values())
    # the executed notebook carries the injected parameters, results_path included
    nb = nbformat.read(report_dir(base_grid) / "runs" / f"{TOY_IDS[0]}.ipynb", as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "num_dim = 8" in injected.source and f"results/{TOY_IDS[0]}.json" in injected.source


def test_rerun_is_all_cached(base_grid, tmp_path, capsys):
    tmp = copy_of(base_grid, tmp_path)
    before = {rid: results(tmp, rid)["token"] for rid in TOY_IDS}
    assert run_main(tmp) == 0
    assert "0 ok, 4 cached, 0 failed" in capsys.readouterr().out
    assert {rid: results(tmp, rid)["token"] for rid in TOY_IDS} == before
    first, second = manifest(tmp)["invocations"]
    assert sorted(first["ran"]) == sorted(TOY_IDS) and (second["ran"], second["cached"]) == ([], 4)
    # resume is per date folder: another date's manifest does not count
    run = grid.expand_grid(grid.load_params_file(tmp / "params/toy.yaml", "quick"))[0]
    assert manifests.is_cached(run, manifest(tmp), report_dir(tmp))
    assert not manifests.is_cached(run, manifest(tmp), tmp / "reports" / "2024-01-03")


def test_a_notebook_key_is_its_code_not_its_prose_outputs_or_metadata(tmp_path):
    from lib.common.notebooks import code_sha256

    nb = nbformat.read(ROOT / NOTEBOOK, as_version=4)
    key = code_sha256(ROOT / NOTEBOOK)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("A new paragraph of prose."))
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
    code.execution_count, code.metadata["scrolled"], nb.metadata["widgets"] = 7, True, {"state": {}}
    for cell in nb.cells:
        cell["id"] = f"x{id(cell)}"
    nbformat.write(nb, tmp_path / "same.ipynb")
    assert code_sha256(tmp_path / "same.ipynb") == key
    code.source += "\n# a comment is code"
    nbformat.write(nb, tmp_path / "other.ipynb")
    assert code_sha256(tmp_path / "other.ipynb") != key


def test_a_run_keyed_by_the_notebook_bytes_counts_and_takes_the_code_key(base_grid, tmp_path):
    """Entries recorded before the key was the notebook's code (its bytes then) stay finished."""
    tmp = copy_of(base_grid, tmp_path)
    run = grid.expand_grid(grid.load_params_file(tmp / "params/toy.yaml", "quick"))[0]
    assert run.legacy_hash not in (None, run.params_hash)
    m = manifest(tmp)
    m["runs"][run.run_id]["params_hash"] = run.legacy_hash
    assert manifests.is_cached(run, m, report_dir(tmp))
    assert m["runs"][run.run_id]["params_hash"] == run.legacy_hash  # asking does not change it
    manifests.take_current_key(run, m)
    assert m["runs"][run.run_id]["params_hash"] == run.params_hash
    m["runs"][run.run_id]["params_hash"] = "0" * 64
    assert not manifests.is_cached(run, m, report_dir(tmp))
    # through the runner: still finished, and the manifest on disk now carries the current key
    m["runs"][run.run_id]["params_hash"] = run.legacy_hash
    atomic_write_json(report_dir(tmp) / "manifest.json", m)
    assert run_main(tmp) == 0
    assert manifest(tmp)["runs"][run.run_id]["params_hash"] == run.params_hash
    assert manifest(tmp)["invocations"][-1]["ran"] == []


def test_a_truncated_or_altered_results_file_is_not_cached(base_grid, tmp_path, capsys):
    """A finished run counts only if its results file is the one it wrote (its recorded sha256);
    otherwise it is computed again, with a warning naming the file. An entry from before the
    sha256 was recorded is trusted when its file parses."""
    tmp = copy_of(base_grid, tmp_path)
    m = manifest(tmp)
    assert all(len(e["results_sha256"]) == 64 for e in m["runs"].values())
    truncated, altered, legacy = (report_dir(tmp) / "results" / f"{rid}.json" for rid in TOY_IDS[:3])
    truncated.write_text(truncated.read_text()[:40])
    altered.write_text(json.dumps({**json.loads(altered.read_text()), "token": "edited"}))
    del m["runs"][TOY_IDS[2]]["results_sha256"]
    (report_dir(tmp) / "manifest.json").write_text(json.dumps(m))
    assert run_main(tmp) == 0
    captured = capsys.readouterr()
    assert "2 ok, 2 cached, 0 failed" in captured.out
    assert f"warning: {truncated}: changed since its run recorded it (sha256); {TOY_IDS[0]} is computed again" \
        in captured.out + captured.err
    assert results(tmp, TOY_IDS[1])["token"] != "edited"
    run = next(r for r in grid.expand_grid(grid.load_params_file(tmp / "params/toy.yaml", "quick"))
               if r.run_id == TOY_IDS[2])
    legacy_manifest = {"runs": {TOY_IDS[2]: m["runs"][TOY_IDS[2]]}}
    assert manifests.is_cached(run, legacy_manifest, report_dir(tmp))  # no sha256 recorded: the file parses
    legacy.write_text("{not json")
    assert not manifests.is_cached(run, legacy_manifest, report_dir(tmp))


def test_cached_runs_of_other_library_version_named_not_recomputed(base_grid, tmp_path, capsys):
    tmp = copy_of(base_grid, tmp_path)
    m = manifest(tmp)
    m["runs"][TOY_IDS[1]]["code_sha256"] = "0" * 64     # as if lib/ changed since that run
    (report_dir(tmp) / "manifest.json").write_text(json.dumps(m))
    before = results(tmp, TOY_IDS[1])["token"]
    assert run_main(tmp) == 0
    out = capsys.readouterr().out
    assert "0 ok, 4 cached, 0 failed" in out
    assert f"note: 1 cached run(s) were computed with another or an unrecorded version of lib/ ({TOY_IDS[1]};" in out
    assert results(tmp, TOY_IDS[1])["token"] == before


def test_code_sha256_follows_library_sources(tmp_path):
    write(tmp_path / "lib/a.py", "x = 1\n")
    write(tmp_path / "lib/sub/b.py", "y = 2\n")
    write(tmp_path / "notes.txt", "not code")
    first = manifests.code_sha256(tmp_path)
    write(tmp_path / "notes.txt", "still not code")
    assert manifests.code_sha256(tmp_path) == first
    write(tmp_path / "lib/sub/b.py", "y = 3\n")
    assert manifests.code_sha256(tmp_path) != first
    (tmp_path / "lib/sub/b.py").rename(tmp_path / "lib/sub/c.py")  # same bytes, other module
    write(tmp_path / "lib/sub/c.py", "y = 2\n")
    assert manifests.code_sha256(tmp_path) != first


def test_unfinished_grid_of_an_earlier_day_is_pointed_out(tmp_path):
    reports = tmp_path / "reports"
    runs = [types.SimpleNamespace(run_id=rid, params_hash=f"h{rid}", legacy_hash=None) for rid in ("a", "b", "c")]

    def day(date: str, profile: str, done: list[str], hash_prefix: str = "h") -> None:
        write(reports / date / "manifest.json", json.dumps(
            {"profile": profile, "runs": {rid: {"status": "ok", "params_hash": f"{hash_prefix}{rid}"}
                                          for rid in done}}))

    day("2024-01-01", "full", ["a", "b"])
    day("2024-01-02", "full", ["a", "b", "c"])   # finished: nothing to resume there
    day("2024-01-03", "quick", ["a"])            # another profile
    day("2024-01-04", "full", ["a"], "other")    # other parameters: resuming would recompute
    day("2024-01-09", "full", ["a"])             # a later day
    write(reports / "scratch" / "manifest.json", json.dumps({"profile": "full", "runs": {"a": {"status": "ok"}}}))
    assert manifests.unfinished_elsewhere(reports, "2024-01-05", "full", runs) == "2024-01-01"
    assert manifests.unfinished_elsewhere(reports, "2024-01-05", "quick", runs) == "2024-01-03"
    assert manifests.unfinished_elsewhere(reports, "2024-01-01", "full", runs) is None  # resuming already
    assert manifests.unfinished_elsewhere(reports, "2024-01-05", "full", runs[:1]) is None  # a: done on 01-01
    assert manifests.unfinished_elsewhere(reports, "2023-12-31", "full", runs) is None
    assert manifests.unfinished_elsewhere(tmp_path / "none", "2024-01-05", "full", runs) is None


def test_interrupted_invocation_is_recorded(tmp_path, monkeypatch):
    """Ctrl-C (one job) during the second run: the first stays recorded, the invocation says so."""
    write(tmp_path / "params/toy.yaml", TOY_YAML)
    calls = []

    def fake_execute(run, report_dir, root, code):
        calls.append(run.run_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        (report_dir / "results" / f"{run.run_id}.json").write_text("{}")
        return {"status": "ok", "params_hash": run.params_hash, "wall_s": 0.01, "error": None, **code}

    monkeypatch.setattr(execute, "execute_run", fake_execute)
    assert run_main(tmp_path, "--jobs", "1") == 130
    assert len(calls) == 2  # no run starts after the interrupt
    m = manifest(tmp_path)
    assert list(m["runs"]) == [TOY_IDS[0]] and m["runs"][TOY_IDS[0]]["code_sha256"] == manifests.code_sha256(ROOT)
    [inv] = m["invocations"]
    assert inv["interrupted"] is True and inv["ran"] == [TOY_IDS[0]] and inv["finished"] is not None
    assert report.not_run_yet(m) == sorted(TOY_IDS[1:])    # what the report lists as not run yet


def test_sigterm_stops_like_ctrl_c(tmp_path, monkeypatch, capsys):
    """``kill`` (SIGTERM) during the second run: recorded as an interrupted invocation, exit 130,
    the running notebook abandoned (its kernel exits with the runner), and the process's own
    SIGTERM handler is back afterwards."""
    write(tmp_path / "params/toy.yaml", TOY_YAML)
    calls = []
    abandoned = threading.Event()

    def fake_execute(run, report_dir, root, code):
        calls.append(run.run_id)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, this one runs on
            assert abandoned.wait(10), "the running notebook was not abandoned"
            raise SystemExit  # where the real runner's process has exited: nothing is recorded
        (report_dir / "results" / f"{run.run_id}.json").write_text("{}")
        return {"status": "ok", "params_hash": run.params_hash, "wall_s": 0.01, "error": None, **code}

    monkeypatch.setattr(execute, "execute_run", fake_execute)
    monkeypatch.setattr(execute, "abandon_running_notebooks", abandoned.set)  # instead of os._exit(130)
    before = signal.getsignal(signal.SIGTERM)
    assert run_main(tmp_path, "--jobs", "1") == 130
    assert abandoned.is_set() and "interrupted: 1 running notebook(s) stopped" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before
    assert len(calls) == 2
    [inv] = manifest(tmp_path)["invocations"]
    assert inv["interrupted"] is True and inv["ran"] == [TOY_IDS[0]]


def test_running_invocation_writes_its_wall_time_while_it_runs(tmp_path, monkeypatch):
    """A runner killed without warning leaves its wall time up to the last heartbeat."""
    write(tmp_path / "params/single.yaml", SINGLE_YAML)
    seen = []

    def fake_execute(run, report_dir, root, code):
        time.sleep(1.0)
        seen.append(read_json(report_dir / "manifest.json")["invocations"][-1]["wall_s"])
        (report_dir / "results" / f"{run.run_id}.json").write_text("{}")
        return {"status": "ok", "params_hash": run.params_hash, "wall_s": 1.0, "error": None, **code}

    monkeypatch.setattr(execute, "execute_run", fake_execute)
    monkeypatch.setattr(execute, "PROGRESS_POLL_S", 0.05)
    monkeypatch.setattr(execute, "HEARTBEAT_S", 0.2)
    assert run_main(tmp_path) == 0
    assert 0.2 <= seen[0] < 1.0  # written during the run, before it finished


def test_resume_runs_only_unfinished(base_grid, tmp_path, capsys):
    tmp = copy_of(base_grid, tmp_path)
    m = manifest(tmp)
    lost, unrecorded = TOY_IDS[1], TOY_IDS[2]
    (report_dir(tmp) / "results" / f"{lost}.json").unlink()   # result and entry gone
    del m["runs"][lost]
    del m["runs"][unrecorded]  # killed after the notebook wrote its result, before the manifest
    (report_dir(tmp) / "manifest.json").write_text(json.dumps(m))
    kept = {rid: (results(tmp, rid)["token"], (report_dir(tmp) / "results" / f"{rid}.json").stat().st_mtime_ns)
            for rid in (TOY_IDS[0], TOY_IDS[3])}
    old_token = results(tmp, unrecorded)["token"]

    assert run_main(tmp, "--jobs", "2") == 0
    out = capsys.readouterr().out
    assert "2 ok, 2 cached, 0 failed" in out
    assert "ok " in out and f" {lost}" in out and f" {unrecorded}" in out
    for rid, (token, mtime) in kept.items():
        assert results(tmp, rid)["token"] == token
        assert (report_dir(tmp) / "results" / f"{rid}.json").stat().st_mtime_ns == mtime
    assert results(tmp, unrecorded)["token"] != old_token
    assert results(tmp, lost)["num_dim"] == 8
    assert all(e["status"] == "ok" for e in manifest(tmp)["runs"].values())


def test_prune_moves_runs_the_grid_no_longer_has(base_grid, tmp_path, capsys):
    tmp = copy_of(base_grid, tmp_path)
    write(tmp / "params/single.yaml", SINGLE_YAML)
    assert run_main(tmp, "--only", "single") == 0
    m = manifest(tmp)
    m["invocations"][0]["planned"].append("toy__num_dim-32__pretrained-false")  # planned once, never finished
    (report_dir(tmp) / "manifest.json").write_text(json.dumps(m))
    write(tmp / "params/toy.yaml", TOY_YAML.replace("num_dim: [8, 16], pretrained", "num_dim: [8], pretrained"))
    write(report_dir(tmp) / "results" / f"{TOY_IDS[2]}.json.partial", "{}")
    token = results(tmp, TOY_IDS[2])["token"]
    capsys.readouterr()

    assert run_main(tmp, "--prune", "--params", str(write(tmp / "o.yaml", "seed: 0\n"))) == 2  # overrides: refused
    assert "--prune" in capsys.readouterr().err and len(manifest(tmp)["runs"]) == 5

    assert run_main(tmp, "--prune", "--only", "toy") == 0
    out = capsys.readouterr().out
    assert f"pruned 2 run(s) no longer in the grid: {TOY_IDS[2]}, {TOY_IDS[3]}" in out
    assert "0 ok, 2 cached, 0 failed" in out
    m = manifest(tmp)
    assert set(m["runs"]) == {*TOY_IDS[:2], "single"}                    # another params file is left alone
    assert [p["run_id"] for p in m["pruned"]] == TOY_IDS[2:]
    assert m["pruned"][0]["entry"]["results"] == f"results/{TOY_IDS[2]}.json"
    pruned = report_dir(tmp) / "pruned"
    assert read_json(pruned / "results" / f"{TOY_IDS[2]}.json")["token"] == token  # moved, not deleted
    assert (pruned / "runs" / f"{TOY_IDS[3]}.ipynb").is_file()
    assert not list((report_dir(tmp) / "results").glob("*num_dim-16*"))
    assert report.not_run_yet(m) == []                                   # no longer planned either
    assert run_main(tmp, "--prune", "--only", "toy") == 0
    assert "pruned 0 run(s)" in capsys.readouterr().out


def test_only_override_and_changed_parameter(tmp_path, capsys):
    write(tmp_path / "params/toy.yaml", TOY_YAML)
    write(tmp_path / "params/single.yaml", SINGLE_YAML)
    assert run_main(tmp_path, "--only", "single") == 0
    assert set(manifest(tmp_path)["runs"]) == {"single"}           # --only: toy did not run
    first = results(tmp_path, "single")
    assert (first["num_dim"], first["eps"], first["lrs"]) == (4, 0.2, [0.5, 0.05])

    over = write(tmp_path / "over.yaml", "eps: 0.5\nnum_dim: [2]\n")  # num_dim: a grid key of toy only
    assert run_main(tmp_path, "--only", "single", "--params", str(over)) == 2
    assert "over.yaml: num_dim: expected int" in capsys.readouterr().err

    write(over, "eps: 0.5\npretrained: true\n")  # pretrained: the toy's grid axis, a scalar in single
    capsys.readouterr()
    assert run_main(tmp_path, "--only", "single", "--params", str(over)) == 0
    assert "1 ok, 0 cached, 0 failed" in capsys.readouterr().out   # changed parameter: recomputed
    second = results(tmp_path, "single")
    assert (second["eps"], second["pretrained"]) == (0.5, True)
    assert second["token"] != first["token"]
    assert manifest(tmp_path)["runs"]["single"]["parameters"]["eps"] == 0.5

    assert run_main(tmp_path, "--only", "single", "--params", str(over)) == 0
    assert "0 ok, 1 cached, 0 failed" in capsys.readouterr().out
    assert results(tmp_path, "single")["token"] == second["token"]


def test_a_profile_some_files_lack_runs_the_others_with_a_note(tmp_path, capsys):
    """--profile lab without --only: the files without a lab profile are named and left out; with
    --only, or when no file has the profile, a missing profile is an error."""
    write(tmp_path / "params/toy.yaml", TOY_YAML)  # quick and full only
    write(tmp_path / "params/single.yaml", SINGLE_YAML.replace("  quick:", "  lab:"))
    assert run_main(tmp_path, "--profile", "lab") == 0
    out = capsys.readouterr()
    assert "note: no profile lab in toy; running single" in out.err
    assert set(manifest(tmp_path)["runs"]) == {"single"} and "1 ok" in out.out
    assert run_main(tmp_path, "--profile", "lab", "--only", "toy,single") == 2
    assert capsys.readouterr().err.strip().splitlines() == \
        [f"{tmp_path / 'params/toy.yaml'}: profiles.lab: profile not found (available: quick, full)"]
    assert run_main(tmp_path, "--profile", "huge") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2  # both files named


def test_failing_runs_recorded_and_grid_goes_on(tmp_path, capsys):
    write(tmp_path / "params/modes.yaml", f"""\
        notebook: {NOTEBOOK}
        grid: [mode]
        profiles:
          quick: {{mode: [raise, ok, nowrite], num_dim: 3}}
        """)
    assert run_main(tmp_path, "--jobs", "2") == 1
    out = capsys.readouterr().out
    assert "1 ok, 0 cached, 2 failed" in out
    assert "FAILED" in out and "RuntimeError: boom num_dim=3" in out
    runs = manifest(tmp_path)["runs"]
    assert runs["modes__mode-ok"]["status"] == "ok"
    assert runs["modes__mode-raise"]["status"] == "failed"
    assert runs["modes__mode-raise"]["error"].startswith("RuntimeError: boom num_dim=3")
    assert runs["modes__mode-nowrite"]["status"] == "failed"
    assert "without writing results/modes__mode-nowrite.json" in runs["modes__mode-nowrite"]["error"]
    # the failed run's executed notebook is kept for inspection
    assert (report_dir(tmp_path) / runs["modes__mode-raise"]["executed_notebook"]).is_file()
    assert results(tmp_path, "modes__mode-ok")["mode"] == "ok"
    # a rerun retries the failures only
    ok_token = results(tmp_path, "modes__mode-ok")["token"]
    assert run_main(tmp_path, "--only", "modes") == 1
    assert "0 ok, 1 cached, 2 failed" in capsys.readouterr().out
    assert results(tmp_path, "modes__mode-ok")["token"] == ok_token


def test_partial_state_kept_after_a_failure_dropped_after_success_and_by_force(tmp_path, capsys):
    write(tmp_path / "params/modes.yaml", f"""\
        notebook: {NOTEBOOK}
        grid: [mode]
        profiles:
          quick: {{mode: [raise, ok], num_dim: 3}}
        """)
    partial = {m: report_dir(tmp_path) / "results" / f"modes__mode-{m}.json.partial" for m in ("raise", "ok")}
    for path in partial.values():  # as left by interrupted attempts (lib/experiments/resume.py)
        write(path, "{}")
    assert run_main(tmp_path) == 1
    assert partial["raise"].is_file() and not partial["ok"].exists()  # the failed run resumes from it
    assert run_main(tmp_path) == 1
    assert partial["raise"].is_file()
    assert run_main(tmp_path, "--force") == 1                          # --force: from the start
    assert not partial["raise"].exists()


def test_a_run_computed_again_keeps_its_earlier_results_under_superseded(tmp_path, capsys):
    """--force (or new parameters) recomputes a finished run; its earlier results and executed
    notebook move to superseded/, out of results/, so an attempt that dies loses nothing."""
    write(tmp_path / "params/modes.yaml", f"""\
        notebook: {NOTEBOOK}
        grid: [mode]
        profiles:
          quick: {{mode: [ok], num_dim: 3}}
        """)
    assert run_main(tmp_path) == 0
    first = results(tmp_path, "modes__mode-ok")["token"]
    assert run_main(tmp_path, "--force") == 0
    assert results(tmp_path, "modes__mode-ok")["token"] != first
    kept = list((report_dir(tmp_path) / "superseded" / "results").glob("modes__mode-ok.*.json"))
    assert len(kept) == 1 and read_json(kept[0])["token"] == first
    assert len(list((report_dir(tmp_path) / "superseded" / "runs").glob("modes__mode-ok.*.ipynb"))) == 1
    assert sorted(p.name for p in (report_dir(tmp_path) / "results").glob("*.json")) == ["modes__mode-ok.json"]


def test_progress_of_running_notebooks_is_shown(tmp_path, capsys, monkeypatch):
    write(tmp_path / "params/slow.yaml", f"""\
        notebook: {NOTEBOOK}
        grid: []
        profiles:
          quick: {{mode: progress}}
        """)
    monkeypatch.setattr(execute, "PROGRESS_POLL_S", 0.1)
    assert run_main(tmp_path) == 0
    captured = capsys.readouterr()
    assert "1 ok, 0 cached, 0 failed" in captured.out
    assert "slow 1/2, ~" in captured.err                      # the bar's postfix while it ran
    assert not list((report_dir(tmp_path) / "results").glob("*.progress"))  # cleaned up
    assert results(tmp_path, "slow")["mode"] == "progress"


def _autogroup_writable() -> bool:
    """Whether this process may set its autogroup's niceness (rewriting the value it has)."""
    try:
        current = Path("/proc/self/autogroup").read_text().split("nice")[-1].strip()
        Path("/proc/self/autogroup").write_text(current)
        return True
    except (OSError, IndexError):
        return False


def test_nice_lowers_the_kernels_priority(tmp_path):
    write(tmp_path / "params/single.yaml", SINGLE_YAML)
    base = os.nice(0)
    assert run_main(tmp_path, "--nice", "7") == 0
    got = results(tmp_path, "single")
    assert got["nice"] == max(base, 7) and os.nice(0) == base      # the kernel, not this process
    if got["autogroup"] is not None and _autogroup_writable():      # Linux with autogroup scheduling
        assert got["autogroup"].strip().endswith(f"nice {max(base, 7)}")
    assert run_main(tmp_path, "--nice", "20") == 2                  # out of range: usage error


def test_report_failure_gives_exit_1(base_grid, tmp_path, capsys, monkeypatch):
    tmp = copy_of(base_grid, tmp_path)
    calls = []

    def broken(path):
        calls.append(Path(path))
        raise RuntimeError("no template")

    monkeypatch.setitem(sys.modules, "lib.report.build", types.SimpleNamespace(build_report=broken))
    args = ["--params-dir", str(tmp / "params"), "--reports-dir", str(tmp / "reports"), "--date", DATE]
    assert runner.main(args) == 1  # all runs cached and ok, but the report failed
    captured = capsys.readouterr()
    assert "RuntimeError: no template" in captured.err and "report: FAILED" in captured.out
    assert calls == [report_dir(tmp)]
    monkeypatch.setitem(sys.modules, "lib.report.build", types.SimpleNamespace(build_report=calls.append))
    assert runner.main(args) == 0
    assert f"report: {report_dir(tmp) / 'index.html'}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- run_all.sh


def test_run_all_bootstrap_stamp(tmp_path):
    """Fake .venv/bin/{python,pip} log their calls: pip runs only when requirements.txt or
    pyproject.toml changed, and installs the requirements, then the package editable."""
    shutil.copy(ROOT / "run_all.sh", tmp_path / "run_all.sh")
    (tmp_path / "requirements.txt").write_text("tqdm\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool, code in (("python", "${FAKE_RC:-0}"), ("pip", "0")):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $* MPLBACKEND=$MPLBACKEND" >> "{log}"\nexit {code}\n')
        (bin_dir / tool).chmod(0o755)

    def run(*args, rc=0):
        env = {**os.environ, "FAKE_RC": str(rc)}
        return subprocess.run(["bash", str(tmp_path / "run_all.sh"), *args], env=env, capture_output=True,
                              text=True, timeout=60)

    def calls():
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return lines

    proc = run("test", "-k", "x")
    assert proc.returncode == 0, proc.stderr
    assert calls() == ["pip install --quiet --disable-pip-version-check -r requirements.txt MPLBACKEND=Agg",
                       "pip install --quiet --disable-pip-version-check --no-deps -e . MPLBACKEND=Agg",
                       "python -m pytest -q -n auto --dist loadfile tests -k x MPLBACKEND=Agg"]
    stamp = (tmp_path / ".venv" / ".requirements.sha256").read_text().strip()
    assert stamp == hashlib.sha256(b"tqdm\n").hexdigest() + hashlib.sha256(b"[project]\nname = 'x'\n").hexdigest()

    proc = run("--profile", "full", rc=3)      # up to date: no pip; exit status propagated
    assert proc.returncode == 3
    assert calls() == ["python -m lib.pipeline.cli --profile full MPLBACKEND=Agg"]

    (tmp_path / "requirements.txt").write_text("tqdm\npyyaml\n")
    assert run("test").returncode == 0
    first = calls()[0]
    assert first.startswith("pip install ") and "-r requirements.txt" in first

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'y'\n")  # the package changed: reinstall
    assert run("test").returncode == 0
    assert [c.split(" MPLBACKEND")[0] for c in calls()[:2]] == [
        "pip install --quiet --disable-pip-version-check -r requirements.txt",
        "pip install --quiet --disable-pip-version-check --no-deps -e ."]


def test_read_json_names_the_file_it_cannot_read(tmp_path):
    from lib.common.files import read_json

    bad = tmp_path / "results.json"
    bad.write_bytes(b'{"num_dim": 8, "cur')
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))}: not readable JSON"):
        read_json(bad)
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="not readable JSON"):
        read_json(bad)


def test_disk_full_ends_with_one_line_and_the_grid_state_intact(base_grid, tmp_path, capsys, monkeypatch):
    """The manifest write after a run hits a full disk: one line, status 1; the manifest on disk is
    the last whole one (files are replaced whole), and a rerun resumes."""
    import errno

    tmp = copy_of(base_grid, tmp_path)
    m = manifest(tmp)
    del m["runs"][TOY_IDS[0]]  # one run to do again
    (report_dir(tmp) / "manifest.json").write_text(json.dumps(m))
    real, calls = execute.atomic_write_json, []

    def full_disk(path, obj):
        calls.append(path)
        if len(calls) > 1:  # the invocation's first record goes through, the one after the run does not
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(execute, "atomic_write_json", full_disk)
    capsys.readouterr()
    assert run_main(tmp) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("disk full") and "rerun the same command" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert TOY_IDS[0] not in manifest(tmp)["runs"]  # the last whole manifest, readable
    monkeypatch.setattr(execute, "atomic_write_json", real)
    assert run_main(tmp) == 0 and TOY_IDS[0] in manifest(tmp)["runs"]
