"""The grid on a Dask cluster (lib/pipeline/cluster.py): an embedded LocalCluster of 2 workers runs a
small grid, resumes it, records a failing point; bad cluster options are refused before compute."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from lib.common.files import read_json
from lib.pipeline import cluster, runner

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-01-02"
TINY = {"num_dim": [4], "pretrained": [False], "eps_grid": [0.1], "sigma_grid": [0.1, 0.5], "nes_samples": [20],
        "ste_variants": ["clipped"], "num_lr": 3, "num_lr_refine": 2, "batch_size": 16, "num_init": 1,
        "num_batch": 1, "diagnose": False}


def _setup(tmp: Path, over: dict) -> list[str]:
    (tmp / "params").mkdir(exist_ok=True)
    shutil.copy(ROOT / "params" / "toy.yaml", tmp / "params" / "toy.yaml")
    (tmp / "over.yaml").write_text(yaml.safe_dump({**TINY, "cache_dir": str(tmp / "cache"), **over}))
    return ["--params-dir", str(tmp / "params"), "--reports-dir", str(tmp / "reports"), "--date", DATE,
            "--only", "toy", "--params", str(tmp / "over.yaml"), "--no-report"]


def test_parse_cluster():
    assert cluster.parse_cluster("local:2") == 2
    for bad in ("local", "local:0", "tcp://x:1", "local:-1", "local:two"):
        with pytest.raises(cluster.ClusterError, match="--cluster"):
            cluster.parse_cluster(bad)


def test_bad_cluster_options_are_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    args = _setup(tmp_path, {})
    assert runner.main(args + ["--cluster", "local:0"]) == 2
    assert "--cluster: expected local:N" in capsys.readouterr().err
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    assert runner.main(args + ["--scheduler", "tcp://127.0.0.1:9"]) == 2  # nothing listens there
    assert "--scheduler: no Dask scheduler answers at 'tcp://127.0.0.1:9'" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()
    assert runner.main(args + ["--cluster", "local:1", "--scheduler", "tcp://127.0.0.1:9"]) == 2  # not both


def test_local_cluster_runs_resumes_and_records_a_failure(tmp_path, capsys):
    args = _setup(tmp_path, {"num_dim": [4, 6]})
    assert runner.main(args + ["--cluster", "local:2"]) == 0
    report = tmp_path / "reports" / DATE
    manifest = read_json(report / "manifest.json")
    assert sorted(manifest["runs"]) == ["toy__pretrained-false__num_dim-4", "toy__pretrained-false__num_dim-6"]
    assert all(e["status"] == "ok" for e in manifest["runs"].values())
    assert manifest["invocations"][-1]["jobs"] == 2  # one run per worker thread
    results = read_json(report / "results" / "toy__pretrained-false__num_dim-4.json")
    assert results["num_dim"] == 4
    capsys.readouterr()
    # the same command again: everything cached, nothing recomputed
    assert runner.main(args + ["--cluster", "local:2"]) == 0
    assert "0 ok, 2 cached, 0 failed" in capsys.readouterr().out
    # a point that fails on its worker is recorded, with its error, beside the finished ones
    broken = _setup(tmp_path, {"num_dim": [5], "pretrained": [True], "pretrain_steps": 5, "pretrain_batch_size": 64,
                               "pretrain_lr": 1e300})  # the pretraining (float64) diverges on its worker
    assert runner.main(broken + ["--cluster", "local:2"]) == 1
    entry = read_json(report / "manifest.json")["runs"]["toy__pretrained-true__num_dim-5"]
    assert entry["status"] == "failed" and "loss is not finite" in entry["error"]
    assert len(read_json(report / "manifest.json")["runs"]) == 3


def test_workers_that_cannot_see_a_path_are_refused(tmp_path):
    with cluster.dask_client("local:1") as client:
        cluster.check_workers(client, [tmp_path], "--cluster")  # visible: no error
        with pytest.raises(cluster.ClusterError, match=r"--cluster: worker .* cannot write .*nowhere"):
            cluster.check_workers(client, [tmp_path / "nowhere"], "--cluster")



LEAK = """
import multiprocessing as mp, os

def leak():
    global kept
    kept = mp.get_context("spawn").Semaphore(1)  # registered with the resource tracker, never freed
    os._exit(0)

if __name__ == "__main__":
    child = mp.get_context("spawn").Process(target=leak)
    child.start()
    child.join()
"""


def test_the_resource_trackers_warning_about_stopped_workers_is_silenced(tmp_path, monkeypatch):
    """A child that dies holding a semaphore makes the tracker warn at exit; the runner's filter,
    passed through the environment as for the cluster's workers, silences it."""
    import subprocess
    import sys

    script = tmp_path / "leak.py"
    script.write_text(LEAK)
    monkeypatch.setenv("PYTHONWARNINGS", "")  # recorded, so the filter set below is undone after the test
    loud = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert "leaked semaphore" in loud.stderr
    cluster._quiet_resource_tracker()
    cluster._quiet_resource_tracker()  # once is enough
    assert os.environ["PYTHONWARNINGS"] == cluster.TRACKER_FILTER
    quiet = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "leaked semaphore" not in quiet.stderr, quiet.stderr
