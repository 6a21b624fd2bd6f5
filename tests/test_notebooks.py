"""The committed notebooks: output-free in git and after a save in JupyterLab, and runnable from
``notebooks/`` (the folder JupyterLab opens them in) without touching the checkout."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lib.common.notebooks import is_committed_notebook, strip, strip_text

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IN_GIT = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True,
                        text=True).stdout.strip() == str(ROOT)
needs_git = pytest.mark.skipif(not IN_GIT, reason="not a git checkout")


def _with_outputs(nb):
    """``nb`` as JupyterLab saves it after a run: outputs, counts, timing, kernel metadata, widgets."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.execution_count = i + 1
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="run output\n" * 500)]
            cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"}
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


def _git_status(*paths):
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_stripped(path):
    text = path.read_text(encoding="utf-8")
    assert strip_text(text) == text  # what git's filter would store is the file itself
    nb = json.loads(text)
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"] if c["cell_type"] == "code")


def test_strip_removes_what_a_run_adds_and_nothing_else():
    original = nbformat.read(ROOT / "notebooks" / "toy.ipynb", as_version=4)
    run = _with_outputs(nbformat.read(ROOT / "notebooks" / "toy.ipynb", as_version=4))
    assert run != original
    assert strip(run) == original


@needs_git
def test_jupyter_save_of_a_committed_notebook_leaves_git_status_clean(tmp_path):
    """A save through the Jupyter server's contents manager, configured as run_all.sh configures
    it, strips a tracked notebook of notebooks/ and keeps the outputs of any other notebook."""
    from jupyter_server.services.contents.filemanager import FileContentsManager
    from traitlets.config import Config

    written = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.json"
    if not written.is_file():
        pytest.skip(f"{written} is written by run_all.sh")
    config = json.loads(written.read_text())
    manager = FileContentsManager(root_dir=str(ROOT / "notebooks"), config=Config(config))
    target = ROOT / "notebooks" / "explorer.ipynb"
    backup = tmp_path / "explorer.ipynb"
    shutil.copy(target, backup)
    before = _git_status(target)  # the notebook may be edited and not yet committed
    mine = ROOT / "notebooks" / "my_scratch_test_notebook.ipynb"
    checkpoints = ROOT / "notebooks" / ".ipynb_checkpoints"  # the manager keeps one per saved notebook
    had = {p.name for p in checkpoints.glob("*")} if checkpoints.is_dir() else None
    try:
        for name in ("explorer.ipynb", mine.name):
            nb = _with_outputs(nbformat.read(target if name == "explorer.ipynb" else backup, as_version=4))
            manager.save({"type": "notebook", "format": "json", "content": nb}, name)
        assert target.read_bytes() == backup.read_bytes()
        assert _git_status(target) == before
        assert "run output" in mine.read_text()  # not a committed notebook: saved as it is
        assert not is_committed_notebook(mine) and is_committed_notebook(target)
    finally:
        shutil.copy(backup, target)
        mine.unlink(missing_ok=True)
        for p in checkpoints.glob("*") if checkpoints.is_dir() else []:
            if had is None or p.name not in had:
                p.unlink()
        if had is None and checkpoints.is_dir():
            checkpoints.rmdir()


@needs_git
def test_git_filter_stores_notebooks_stripped(tmp_path):
    """With the filter run_all.sh configures, a notebook saved with outputs by any editor shows no
    difference to git."""
    target = ROOT / "notebooks" / "toy.ipynb"
    backup = tmp_path / "toy.ipynb"
    shutil.copy(target, backup)
    clean = f'"{sys.executable}" -m lib.common.notebooks'

    def diff() -> str:  # what git would store, against the index (empty unless the notebook is being edited)
        return subprocess.run(["git", "-c", f"filter.strip-outputs.clean={clean}", "diff", "--", str(target)],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        before = diff()
        nbformat.write(_with_outputs(nbformat.read(target, as_version=4)), target)
        assert target.read_bytes() != backup.read_bytes()
        assert diff() == before
    finally:
        shutil.copy(backup, target)


@needs_git
def test_toy_notebook_runs_from_notebooks_folder_without_touching_the_checkout():
    """A hand run as users do it: papermill from notebooks/ reuses the repository's cache/ and
    writes only ignored files (results under reports/notebooks/, the executed notebook)."""
    before = _git_status()
    out = ROOT / "notebooks" / "out.ipynb"
    (ROOT / "reports" / "notebooks" / "toy.json").unlink(missing_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "papermill", "toy.ipynb", "out.ipynb", "--no-progress-bar", "-y",
                        "{num_dim: 8, nes_samples: [50], batch_size: 32, num_init: 1, num_batch: 1, pretrained: true, "
                        "pretrain_steps: 2, pretrain_batch_size: 16}"],
                       cwd=ROOT / "notebooks", check=True, capture_output=True, timeout=300)
        assert _git_status() == before
        assert not (ROOT / "notebooks" / "cache").exists() and any((ROOT / "cache" / "pretrain").glob("*.pt"))
        results = json.loads((ROOT / "reports" / "notebooks" / "toy.json").read_text())
        assert results["num_dim"] == 8 and results["pretrained"] is True
    finally:
        out.unlink(missing_ok=True)
