"""State that heals: an unreadable manifest is moved aside and rebuilt from the results files
that hold their run's parameters; executed notebooks are renamed into place when they end."""
from __future__ import annotations

import json

from lib.common.files import read_json
from lib.pipeline import runner
from test_cluster import DATE, _setup


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
