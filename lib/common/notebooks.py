"""Committed notebooks stay output-free: one stripping function for git and for JupyterLab; and
the hash of a notebook's code (:func:`code_sha256`), the notebook's part of a run's key.

* As a **git clean filter** (``.gitattributes``: ``*.ipynb filter=strip-outputs``; ``run_all.sh``
  sets ``filter.strip-outputs.clean`` to ``python -m lib.common.notebooks`` for its clone), git
  stores every notebook stripped, whatever the file on disk holds.
* As JupyterLab's **pre-save hook** (``run_all.sh`` writes it into
  ``.venv/etc/jupyter/jupyter_server_config.json``), a notebook of the repository's
  ``notebooks/`` folder that git tracks is saved stripped, so a hand run and save leaves
  ``git status`` clean; other notebooks keep their outputs.

Stripping (:func:`strip`): code cells lose their outputs and execution counts; cells lose the
metadata the front end adds (``collapsed``, ``scrolled``, ``execution``, ``ExecuteTime``); the
notebook loses its widget state, ``language_info`` keeps only its ``name``, and a Python 3
kernelspec is the committed one (:data:`KERNELSPEC`: JupyterLab saves the running kernel's
``display_name``, "Python 3 (ipykernel)"). The text is
written as nbformat writes it, so a stripped notebook strips to itself.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from lib.common.files import canonical_json
from lib.common.paths import ROOT

CELL_KEYS = ("collapsed", "scrolled", "execution", "ExecuteTime")
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}  # the runner's kernel


def strip(nb: dict[str, Any]) -> dict[str, Any]:
    """``nb`` (a notebook as a JSON dict) without outputs and front-end metadata, in place."""
    meta = nb.setdefault("metadata", {})
    meta.pop("widgets", None)
    if isinstance(meta.get("language_info"), dict):
        meta["language_info"] = {k: v for k, v in meta["language_info"].items() if k == "name"}
    if isinstance(meta.get("kernelspec"), dict) and meta["kernelspec"].get("name") == KERNELSPEC["name"]:
        meta["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.get("cells", []):
        cell_meta = cell.get("metadata", {})
        for key in CELL_KEYS:
            cell_meta.pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def code_sha256(path: str | Path) -> str:
    """sha256 of the notebook's code: the canonical JSON of its code cells' sources, in order.
    Markdown, outputs, metadata and cell ids do not count, so editing prose or saving the
    notebook from JupyterLab leaves it unchanged."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    sources = [c.get("source", "") for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    return hashlib.sha256(canonical_json(["".join(s) if isinstance(s, list) else s for s in sources])
                          .encode("utf-8")).hexdigest()


def strip_text(text: str) -> str:
    """The stripped notebook ``text``, serialised as ``nbformat.write`` (and so the Jupyter
    server) writes a notebook file: nbformat's JSON and a final newline."""
    import nbformat

    nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    out = nbformat.writes(nbformat.from_dict(strip(nb)), version=nbformat.NO_CONVERT)
    return out if out.endswith("\n") else out + "\n"


def is_committed_notebook(path: str | Path) -> bool:
    """Whether ``path`` is a notebook of ``ROOT/notebooks`` that git tracks."""
    path = Path(path).resolve()
    if path.suffix != ".ipynb" or path.parent != ROOT / "notebooks":
        return False
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent,
                                 capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return tracked.returncode == 0


def pre_save_hook(model: dict[str, Any], path: str, contents_manager: Any, **kwargs: Any) -> None:
    """Jupyter server pre-save hook: strip a committed notebook's model before it is written."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    os_path = Path(contents_manager.root_dir) / path.lstrip("/")
    if is_committed_notebook(os_path):
        strip(model["content"])


def main() -> None:
    """Git clean filter: a notebook on stdin, the stripped notebook on stdout."""
    text = sys.stdin.buffer.read().decode("utf-8")
    sys.stdout.buffer.write(strip_text(text).encode("utf-8"))


if __name__ == "__main__":
    main()
