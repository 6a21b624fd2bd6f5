"""One runner at a time per report folder (lib/pipeline/lock.py)."""
from __future__ import annotations

import subprocess
import sys

import yaml

from lib.common.files import read_json
from test_cluster import DATE, ROOT, TINY, _setup


def test_two_runners_on_one_folder_take_turns(tmp_path):
    """Started together on one report folder, with the same grid and with another grid: the
    second waits for the first, no manifest entry is lost and nothing is computed twice."""
    args = _setup(tmp_path, {"num_dim": [4, 6]})
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**TINY, "num_dim": [5], "cache_dir": str(tmp_path / "cache")}))
    other = [a if a != str(tmp_path / "over.yaml") else str(tmp_path / "other.yaml") for a in args]
    commands = [args, args, other]
    procs = [subprocess.Popen([sys.executable, "-m", "lib.pipeline.runner", *c], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert sum("waiting: another runner" in err for _, err in outputs) == 2
    manifest = read_json(tmp_path / "reports" / DATE / "manifest.json")
    assert sorted(manifest["runs"]) == [f"toy__pretrained-false__num_dim-{d}" for d in (4, 5, 6)]
    ran = [rid for inv in manifest["invocations"] for rid in inv["ran"]]
    assert sorted(ran) == sorted(manifest["runs"])  # each run computed once
