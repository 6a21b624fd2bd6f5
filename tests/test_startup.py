"""Starting ``./run_all.sh`` never races and never depends on a lock file surviving: several starts
at once all succeed and compute each run once; a stale ``.git/config.lock`` does not stop a start.
Each test works in a local clone of this repository with a light virtual environment borrowing
this one's packages; the last installs the package (``pip install .``) and runs its command."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lib.common.files import read_json
from test_cluster import DATE, ROOT, TINY

pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists() or not (ROOT / ".venv" / "bin" / "python").exists(),
                                reason="needs a git checkout with its .venv")


def light_venv(venv: Path, checkout: Path) -> None:
    """A virtual environment at ``venv`` that borrows this one's interpreter and site-packages
    (symlinks) and has its own bootstrap stamp for ``checkout``, so that ``run_all.sh`` there
    installs nothing and never touches this checkout's .venv."""
    import hashlib
    import shutil

    mine = ROOT / ".venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(mine / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "bin" / "python").symlink_to(os.path.realpath(mine / "bin" / "python"))
    (venv / "lib").symlink_to(mine / "lib")
    stamp = "".join(hashlib.sha256((checkout / f).read_bytes()).hexdigest() for f in ("requirements.txt", "pyproject.toml"))
    (venv / ".requirements.sha256").write_text(stamp + "\n")


@pytest.fixture()
def clone(tmp_path) -> Path:
    """A clone of the committed repository (no notebook filter configured yet) with a light venv."""
    target = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(target)], check=True, timeout=120)
    light_venv(target / ".venv", target)
    (tmp_path / "over.yaml").write_text(yaml.safe_dump({**TINY, "cache_dir": str(tmp_path / "cache")}))
    return target


def _start(clone: Path, *args: str) -> subprocess.Popen:
    over = clone.parent / "over.yaml"
    return subprocess.Popen(["./run_all.sh", "--only", "toy", "--params", str(over), "--date", DATE,
                             "--reports-dir", str(clone.parent / "reports"), "--no-report", *args],
                            cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _filter(clone: Path) -> str:
    return subprocess.run(["git", "config", "--get", "filter.strip-outputs.clean"], cwd=clone,
                          capture_output=True, text=True).stdout.strip()


def test_starts_at_the_same_moment_all_succeed_and_compute_once(clone):
    assert _filter(clone) == ""  # every start wants to write the filter: the race of the issue
    procs = [_start(clone) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-600:] for _, err in outs]
    assert not any("could not lock config file" in err for _, err in outs)
    manifest = read_json(clone.parent / "reports" / DATE / "manifest.json")
    ran = [rid for inv in manifest["invocations"] for rid in inv["ran"]]
    assert ran == ["toy__pretrained-false__num_dim-4"] and len(manifest["invocations"]) == 3
    assert _filter(clone) == f'"{clone}/.venv/bin/python" -m lib.common.notebooks'


def test_a_stale_git_config_lock_does_not_stop_a_start(clone):
    (clone / ".git" / "config.lock").write_text("")  # left by a git killed while it held the lock
    proc = subprocess.run(["./run_all.sh", "--help"], cwd=clone, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ste-report" in proc.stdout
    assert "git's notebook filter is not configured (.git/config is locked" in proc.stderr
    (clone / ".git" / "config.lock").unlink()
    proc = subprocess.run(["./run_all.sh", "--help"], cwd=clone, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "" and _filter(clone)  # configured once the lock is gone


@pytest.mark.parametrize("delay", [0.03, 0.1, 0.3, 0.6, 1.0, 2.0])
def test_a_stop_signal_at_any_moment_of_the_start_ends_with_one_line(clone, delay):
    """SIGTERM to ./run_all.sh during its set-up, Python's start-up, the runner's imports or its
    first run: status 130 and one 'interrupted' line, never a silent 143 or a traceback. (A signal
    in the few milliseconds before bash runs the script's first lines ends it as SIGTERM does.)"""
    import signal
    import time

    proc = _start(clone)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert proc.returncode == 130 and len(lines) == 1, (proc.returncode, err[-1500:])
    assert "Traceback" not in err


def test_the_command_of_an_installed_package_runs_a_grid(clone, tmp_path):
    """``pip install .`` (not editable) puts ``lib`` and the ``ste-report`` command outside the
    checkout; run from the checkout, the command finds its params/ and notebooks/ and runs a grid."""
    site = tmp_path / "site"
    subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "--target", str(site), str(clone)],
                   check=True, timeout=300, capture_output=True)
    assert (site / "lib" / "pipeline" / "cli.py").is_file() and (site / "bin" / "ste-report").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    env.pop("STE_REPORT_ROOT", None)
    over = tmp_path / "over.yaml"
    proc = subprocess.run([str(site / "bin" / "ste-report"), "--only", "toy", "--params", str(over), "--date", DATE,
                           "--reports-dir", str(tmp_path / "reports"), "--no-report"],
                          cwd=clone / "notebooks", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-1500:]
    results = read_json(tmp_path / "reports" / DATE / "results" / "toy__pretrained-false__num_dim-4.json")
    assert results["experiment"] == "toy" and results["parameters"]["num_dim"] == 4
    code = "import lib.common.paths as p; print(p.__file__); print(p.ROOT)"
    where = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", code], cwd=clone / "notebooks", env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(site / "lib" / "common" / "paths.py"), str(clone)]
