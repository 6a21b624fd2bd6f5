"""The manifest of a report folder, ``reports/<date>/manifest.json``: what ran, with which
parameters and code, and which runs are finished.

Only the runner writes it (atomically, after every finished run). Each entry records the run's
parameters, its ``params_hash`` (parameters + notebook code cells), status, wall time, error, the git
commit and :func:`code_sha256` of ``lib/`` that computed it; each invocation of the runner is
recorded in ``invocations``. A run is finished (:func:`is_cached`) when its entry is ``ok`` with
the same hash and its results file is the one the run wrote (its ``results_sha256``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lib.common.files import atomic_write_json, canonical_json, read_json, sha256_file
from lib.common.paths import ROOT
from lib.experiments.resume import partial_path
from lib.pipeline.grid import Run


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def git_commit(root: Path = ROOT) -> tuple[str | None, bool | None]:
    """``(HEAD commit, whether the work tree has uncommitted changes)``; ``(None, None)`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=30)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return head.stdout.strip() or None, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def code_sha256(root: Path = ROOT) -> str:
    """sha256 over ``lib/**/*.py`` (relative path and bytes, in path order): the library version a
    run was computed with. Not part of :func:`lib.pipeline.grid.params_hash`, so editing ``lib/`` does not
    throw away hours of finished runs; the runner names the cached runs computed with another
    version (``--force`` recomputes them)."""
    h = hashlib.sha256()
    for path in sorted((root / "lib").rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def results_problem(entry: Mapping[str, Any], path: Path) -> str | None:
    """Why the results file of a finished run cannot be trusted (missing; changed since the run
    recorded its sha256; not JSON, for entries from before the sha256 was recorded), or ``None``."""
    if not path.is_file():
        return "missing"
    recorded = entry.get("results_sha256")
    if recorded is not None:
        return None if sha256_file(path) == recorded else "changed since its run recorded it (sha256)"
    try:
        read_json(path)
    except (OSError, ValueError):
        return "not readable JSON"
    return None


def _keys(run: Run) -> set[str]:
    """The hashes a finished entry of ``run`` may carry: its key, and the older one (notebook bytes)."""
    return {run.params_hash, run.legacy_hash} - {None}


def is_cached(run: Run, manifest: Mapping[str, Any], report_dir: Path,
              warn: Callable[[str], None] | None = None) -> bool:
    """Finished before: recorded ok, same parameters and notebook code, and a results file that
    :func:`results_problem` trusts. A present but untrusted file is reported through ``warn``. An
    entry keyed the older way (the notebook's bytes, :attr:`Run.legacy_hash`) counts too
    (:func:`take_current_key` rewrites it). Reads only: the manifest is not changed."""
    entry = manifest.get("runs", {}).get(run.run_id)
    if not (isinstance(entry, dict) and entry.get("status") == "ok"
            and entry.get("params_hash") in _keys(run)):
        return False
    path = report_dir / "results" / f"{run.run_id}.json"
    problem = results_problem(entry, path)
    if problem is not None and warn is not None:
        warn(f"warning: {path}: {problem}; {run.run_id} is computed again")
    return problem is None


def take_current_key(run: Run, manifest: dict[str, Any]) -> None:
    """Give the finished entry of ``run`` (one :func:`is_cached` accepted) the current key, so an
    entry keyed the older way is found by it from now on."""
    manifest["runs"][run.run_id]["params_hash"] = run.params_hash


# The manifest's fields and their JSON types: a manifest whose fields have other types is treated as
# unreadable (moved aside and rebuilt), not trusted until a later step trips over it.
MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "runs": dict, "invocations": list, "profile": str, "date": str, "started": str,
    "git_commit": (str, type(None)), "git_dirty": (bool, type(None)), "versions": dict, "platform": str,
    "rebuilt_from": str}


def manifest_problem(manifest: Any) -> str | None:
    """Why ``manifest`` does not match the schema (:data:`MANIFEST_TYPES`; every run entry and every
    invocation an object), or ``None``."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    for key, kind in MANIFEST_TYPES.items():
        if key in manifest and not isinstance(manifest[key], kind):
            return f"{key!r} is a {type(manifest[key]).__name__}"
    if "runs" not in manifest:
        return "no 'runs'"
    bad = [rid for rid, entry in manifest["runs"].items() if not isinstance(entry, dict)]
    if bad or not all(isinstance(inv, dict) for inv in manifest.get("invocations", [])):
        return f"run entry {bad[0]!r} is not an object" if bad else "an invocation is not an object"
    return None


def load_manifest(report_dir: Path) -> dict[str, Any]:
    """The folder's manifest, or a new one. A manifest that is unreadable or does not match its
    schema (:func:`manifest_problem`) is moved aside to ``manifest.json.corrupt-<UTC time>`` (never
    deleted), with a warning naming both files and why; the new one says so (``rebuilt_from``),
    and :func:`adopt_verified_results` fills it in."""
    path = report_dir / "manifest.json"
    if not path.is_file():
        return {"runs": {}}
    try:
        manifest = read_json(path)
        problem = manifest_problem(manifest)
    except (OSError, ValueError) as exc:
        problem = "unreadable" if isinstance(exc, OSError) else "not JSON"
    if problem is None:
        return manifest
    aside = path.with_name(f"manifest.json.corrupt-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}")
    os.replace(path, aside)
    print(f"warning: {path} is unreadable ({problem}); moved to {aside.name}, rebuilding it from the results files",
          file=sys.stderr)
    return {"runs": {}, "rebuilt_from": aside.name}


STARTED_SUFFIX = ".started"  # results/<run>.json.started: the key and code of the attempt that writes it


def started_path(results: Path) -> Path:
    """The start marker of the attempt that writes ``results`` (:func:`mark_started`)."""
    return results.with_name(results.name + STARTED_SUFFIX)


def mark_started(results: Path, run: Run, code: Mapping[str, Any]) -> None:
    """Before a run's notebook starts: the key it runs under and the code that computes it, so a
    results file the notebook finishes before the runner could record it can be adopted
    (:func:`adopt_finished`)."""
    atomic_write_json(started_path(results), {"params_hash": run.params_hash, **code})


def _verified(run: Run, path: Path) -> bool:
    """The results file parses and holds exactly the run's parameters."""
    try:
        results = read_json(path)
    except (OSError, ValueError):
        return False
    stored = results.get("parameters") if isinstance(results, dict) else None
    wanted = {k: v for k, v in run.parameters.items() if k != "results_path"}
    return isinstance(stored, dict) and all(canonical_json(stored.get(k)) == canonical_json(v)
                                            for k, v in wanted.items())


def _adopted_entry(run: Run, path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": run.name, "experiment": run.experiment, "notebook": run.notebook, "profile": run.profile,
            "parameters": run.parameters, "params_hash": run.params_hash, "status": "ok", "wall_s": None,
            "error": None, "executed_notebook": f"runs/{run.run_id}.ipynb", "results": f"results/{path.name}",
            "results_sha256": sha256_file(path), "finished": None, **extra}


def adopt_verified_results(runs: Sequence[Run], manifest: dict[str, Any], report_dir: Path) -> list[str]:
    """After :func:`load_manifest` rebuilt the manifest: record as finished every run without an
    entry whose results file parses and holds exactly the run's parameters (``rebuilt: true``;
    its wall time is unknown). Returns their ids."""
    if "rebuilt_from" not in manifest:
        return []
    adopted = []
    for run in runs:
        path = report_dir / "results" / f"{run.run_id}.json"
        if run.run_id in manifest["runs"] or not path.is_file() or not _verified(run, path):
            continue
        manifest["runs"][run.run_id] = _adopted_entry(run, path, rebuilt=True)
        adopted.append(run.run_id)
    return adopted


def adopt_finished(runs: Sequence[Run], manifest: dict[str, Any], report_dir: Path) -> list[str]:
    """Record as finished every run whose notebook ended but whose entry was never written (the
    runner stopped between the two): not cached, its start marker names the run's current key, and
    its results file verifies. The entry takes the code the marker recorded (``adopted: true``;
    the wall time is unknown). Returns their ids."""
    adopted = []
    for run in runs:
        path = report_dir / "results" / f"{run.run_id}.json"
        marker = started_path(path)
        if not (path.is_file() and marker.is_file()) or is_cached(run, manifest, report_dir):
            continue
        try:
            started = read_json(marker)
        except (OSError, ValueError):
            continue
        if not isinstance(started, dict) or started.get("params_hash") != run.params_hash or not _verified(run, path):
            continue
        code = {k: started[k] for k in ("git_commit", "git_dirty", "code_sha256") if k in started}
        manifest["runs"][run.run_id] = _adopted_entry(run, path, adopted=True, **code)
        adopted.append(run.run_id)
    return adopted


def prune(runs: Sequence[Run], names: Sequence[str], report_dir: Path) -> list[str]:
    """Take out of ``report_dir`` the runs of the params files ``names`` that their grid, as
    expanded now (``runs``), no longer has, e.g. after a value was removed from a grid axis; the
    report shows every run in the manifest. Returns the pruned run ids.

    Nothing is deleted: a pruned run's results, executed notebook and partial state move to
    ``pruned/results/`` and ``pruned/runs/``, and its manifest entry to the manifest's ``pruned``
    list (with the time). Its id also leaves the ``planned`` lists of earlier invocations, which
    only serve the report's "not run yet" list. Runs still in the grid whose parameters changed
    are not pruned: the next run recomputes them."""
    manifest_path = report_dir / "manifest.json"
    if not manifest_path.is_file():
        return []
    manifest = load_manifest(report_dir)
    current = {run.run_id for run in runs}

    def stale(rid: str) -> bool:
        return rid not in current and any(rid == n or rid.startswith(n + "__") for n in names)

    gone = sorted(rid for rid in manifest["runs"] if stale(rid))
    for rid in gone:
        entry = manifest["runs"].pop(rid)
        for sub, path in (("results", entry.get("results")), ("runs", entry.get("executed_notebook"))):
            src = report_dir / path if path else None
            if src is not None and src.is_file():
                (report_dir / "pruned" / sub).mkdir(parents=True, exist_ok=True)
                os.replace(src, report_dir / "pruned" / sub / src.name)
        partial_path(report_dir / "results" / f"{rid}.json").unlink(missing_ok=True)
        manifest.setdefault("pruned", []).append({"run_id": rid, "pruned": now(), "entry": entry})
    dropped = False
    for inv in manifest.get("invocations") or []:
        if isinstance(inv, dict) and isinstance(inv.get("planned"), list):
            kept = [rid for rid in inv["planned"] if not stale(rid)]
            dropped |= len(kept) != len(inv["planned"])
            inv["planned"] = kept
    if gone or dropped:
        atomic_write_json(manifest_path, manifest)
    return gone


def unfinished_elsewhere(reports_dir: Path, date: str, profile: str, runs: Sequence[Run]) -> str | None:
    """The latest date folder before ``date`` holding some, not all, of ``runs`` finished with the
    same ``profile`` and parameters: a grid started on an earlier day, which ``--date`` resumes.
    ``None`` when ``date`` already has a manifest or no such folder exists."""
    if (reports_dir / date / "manifest.json").is_file() or not reports_dir.is_dir():
        return None
    keys = {run.run_id: _keys(run) for run in runs}
    earlier = sorted((d for d in reports_dir.glob("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]")
                      if d.is_dir() and d.name < date), reverse=True)
    for folder in earlier:
        try:
            manifest = read_json(folder / "manifest.json")
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or manifest.get("profile") != profile:
            continue
        done = {rid for rid, e in (manifest.get("runs") or {}).items()
                if isinstance(e, dict) and e.get("status") == "ok" and e.get("params_hash") in keys.get(rid, ())}
        if done and done != set(keys):
            return folder.name
    return None
