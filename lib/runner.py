"""Grid runner: validate parameter files, expand their grids, execute notebooks with papermill.

Usage (``./run_all.sh`` calls this after bootstrapping the virtual environment)::

    python -m lib.runner                          # every params/*.yaml, profile "quick"
    python -m lib.runner --profile full --jobs 2
    python -m lib.runner --only toy,nes --params my_overrides.yaml --no-report

One parameter file per notebook, ``params/<name>.yaml``, read with ``yaml.safe_load`` only::

    notebook: notebooks/toy.ipynb      # relative to the repository root
    grid: [num_dim, pretrained]        # grid axes: lists in the profile, one run per combination
    profiles:
      quick: {num_dim: [8, 16], pretrained: [false, true], eps: 0.1, seed: 0}
      full:  {...}

Every selected file is validated before anything runs (keys, types against the notebook's
``parameters`` cell, value ranges from :mod:`lib.validate`); an error is one line naming the
file and the key, and the exit status is 2. Each grid point is one papermill execution writing
``reports/<date>/runs/<run_id>.ipynb``; the notebook itself writes
``reports/<date>/results/<run_id>.json`` to the ``results_path`` it is given. After each run the
runner records it in ``reports/<date>/manifest.json`` (atomically); a rerun on the same date
skips runs recorded ``ok`` with the same parameters and notebook and an existing results file,
so an interrupted grid resumes where it stopped. A failed run is recorded with its error and
the grid goes on. Exit status: 0 all runs ok, 1 some run (or the report) failed, 2 invalid
parameters, 130 interrupted.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import papermill
import yaml
from papermill.exceptions import PapermillExecutionError
from tqdm import tqdm

from lib.io import atomic_write_json, read_json
from lib.progress import describe, progress_path, read_progress
from lib.runtime import versions
from lib.validate import check_value, format_value

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL_KEYS = ("notebook", "grid", "profiles")
RESULTS_KEY = "results_path"
KERNEL_NAME = "python3"
# Kernels inherit the runner's environment; MPLBACKEND=Agg (set by run_all.sh for the tests)
# would stop figures from being embedded in the executed notebooks, so kernels get the inline one.
KERNEL_MPLBACKEND = "module://matplotlib_inline.backend_inline"
# Quiet the kernel's own log (e.g. its warning about unencrypted TCP); errors in cells still
# reach the executed notebook and the manifest.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]
# Seconds between two looks at the progress files of the running notebooks (lib/progress.py).
PROGRESS_POLL_S = 5.0


class ParamsError(ValueError):
    """Invalid parameters. The message is one line per offending file: ``<file>: <key>: <why>``."""


@dataclass(frozen=True)
class Override:
    """One value from a ``--params`` file.

    ``where`` prefixes error messages (``over.yaml: eps``). ``strict`` overrides (the nested form
    ``{notebook_name: {key: value}}``) must name a parameter of their notebook; flat ones apply to
    each selected notebook that has the parameter.
    """

    key: str
    value: Any
    where: str
    strict: bool


@dataclass(frozen=True)
class ParamsFile:
    """A validated parameter file with its selected profile (overrides applied)."""

    name: str                 # file stem, prefix of the run ids
    path: Path                # the YAML file
    notebook: str             # as written in the file, relative to the repository root
    notebook_path: Path       # absolute
    notebook_sha256: str
    grid: list[str]
    profile: str
    values: dict[str, Any]    # the profile's values; grid axes are lists
    applied_overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    """One grid point: one papermill execution."""

    run_id: str
    name: str
    notebook: str
    notebook_path: Path
    profile: str
    parameters: dict[str, Any]   # what the notebook gets, except results_path
    params_hash: str


# ----------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def params_hash(parameters: Mapping[str, Any], notebook_sha256: str) -> str:
    """sha256 of the canonical JSON of the parameters (without ``results_path``) + notebook sha256."""
    payload = {k: v for k, v in parameters.items() if k != RESULTS_KEY}
    return hashlib.sha256((canonical_json(payload) + notebook_sha256).encode("utf-8")).hexdigest()


def _slug(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "_".join(_slug(v) for v in value) or "empty"
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", str(value)).strip("_.")
    return text or "x"


def make_run_id(name: str, point: Sequence[tuple[str, Any]]) -> str:
    """``toy__num_dim-8__pretrained-false``; just ``name`` without grid axes. Safe as a file name."""
    return "__".join([name] + [f"{key}-{_slug(value)}" for key, value in point])


def _expected_type(param: Mapping[str, str]) -> str | None:
    """Type a notebook parameter expects: from its annotation, else from its default literal.

    One of ``int float str bool list dict``; ``None`` when unknown (no type check then).
    """
    annotation = (param.get("inferred_type_name") or "None").strip()
    if annotation != "None":
        base = annotation.split("[")[0].strip().lower()
        return {"int": "int", "float": "float", "str": "str", "bool": "bool", "list": "list",
                "tuple": "list", "dict": "dict"}.get(base)
    try:
        default = ast.literal_eval(param.get("default", ""))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    for typ, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"),
                      ((list, tuple), "list"), (dict, "dict")):
        if isinstance(default, typ):
            return name
    return None


def _type_ok(expected: str | None, value: Any) -> bool:
    if expected is None:
        return True
    if expected == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict}[expected])


def _coerce(expected: str | None, value: Any) -> Any:
    """Ints given for a float parameter become floats (same hash and behaviour as ``1.0``)."""
    if expected == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_entry(key: Any, value: Any, nb_params: Mapping[str, Mapping[str, str]], grid: Sequence[str],
                 notebook: str) -> tuple[Any, str | None]:
    """Check one profile/override entry. Returns ``(value with ints made floats, error or None)``."""
    if not isinstance(key, str):
        return value, "parameter names must be strings"
    if key == RESULTS_KEY:
        return value, f"{RESULTS_KEY} is set by the runner; remove it"
    if key not in nb_params:
        known = ", ".join(k for k in nb_params if k != RESULTS_KEY)
        return value, f"not a parameter of {notebook} (its parameters: {known})"
    expected = _expected_type(nb_params[key])
    default = nb_params[key].get("default")
    if key in grid:
        if not isinstance(value, list) or not value:
            return value, f"grid axis: expected a non-empty list, got {format_value(value)}"
        bad = [v for v in value if not _type_ok(expected, v)]
        if bad:
            return value, (f"grid axis: expected {expected} values (the notebook's default is {default}), "
                           f"got {format_value(bad[0])} in {format_value(value)}")
        value = [_coerce(expected, v) for v in value]
        if len({canonical_json(v) for v in value}) != len(value):
            return value, f"grid axis has repeated values: {format_value(value)}"
    else:
        if not _type_ok(expected, value):
            return value, (f"expected {expected} (the notebook's default is {default}), "
                           f"got {format_value(value)}")
        value = _coerce(expected, value)
    return value, check_value(key, value)


def _load_yaml(path: Path, label: str) -> Any:
    if not path.is_file():
        raise ParamsError(f"{label}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{label}: invalid YAML{where}: {problem}") from None


def notebook_parameters(notebook_path: Path, label: str) -> dict[str, dict[str, str]]:
    """The notebook's ``parameters`` cell, as ``papermill.inspect_notebook`` reads it."""
    try:
        params = papermill.inspect_notebook(str(notebook_path))
    except Exception as exc:  # unreadable notebook JSON and the like
        raise ParamsError(f"{label}: cannot read {notebook_path}: {type(exc).__name__}: {exc}") from None
    if not params:
        raise ParamsError(f"{label}: {notebook_path.name} has no cell tagged 'parameters' (or it assigns nothing)")
    if RESULTS_KEY not in params:
        raise ParamsError(f"{label}: {notebook_path.name} has no {RESULTS_KEY} parameter")
    return params


# ----------------------------------------------------------------------------- parameter files


def load_params_file(path: str | os.PathLike, profile: str, overrides: Sequence[Override] = (),
                     root: Path = ROOT) -> ParamsFile:
    """Read and validate one parameter file for ``profile``; apply ``overrides`` (from ``--params``).

    Raises :class:`ParamsError` with the first problem found, as ``<file>: <key>: <why>``.
    """
    path = Path(path)
    label = str(path)
    data = _load_yaml(path, label)
    if not isinstance(data, dict):
        raise ParamsError(f"{label}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ParamsError(f"{label}: {key}: unknown top-level key (expected {', '.join(TOP_LEVEL_KEYS)})")
    for key in TOP_LEVEL_KEYS:
        if key not in data:
            raise ParamsError(f"{label}: {key}: missing top-level key")

    notebook = data["notebook"]
    if not isinstance(notebook, str) or not notebook.endswith(".ipynb"):
        raise ParamsError(f"{label}: notebook: expected a path to an .ipynb file, got {format_value(notebook)}")
    notebook_path = (root / notebook).resolve()
    if not notebook_path.is_file():
        raise ParamsError(f"{label}: notebook: {notebook} not found (paths are relative to {root})")

    grid = data["grid"]
    if not isinstance(grid, list) or not all(isinstance(k, str) for k in grid):
        raise ParamsError(f"{label}: grid: expected a list of parameter names, got {format_value(grid)}")
    if len(set(grid)) != len(grid):
        raise ParamsError(f"{label}: grid: repeated names in {format_value(grid)}")

    profiles = data["profiles"]
    if not isinstance(profiles, dict):
        raise ParamsError(f"{label}: profiles: expected a mapping from profile name to parameters")
    if profile not in profiles:
        available = ", ".join(map(str, profiles)) or "none"
        raise ParamsError(f"{label}: profiles.{profile}: profile not found (available: {available})")
    raw = profiles[profile]
    if not isinstance(raw, dict):
        raise ParamsError(f"{label}: profiles.{profile}: expected a mapping of parameter: value")

    nb_params = notebook_parameters(notebook_path, f"{label}: notebook")
    for key in grid:
        if key not in nb_params or key == RESULTS_KEY:
            raise ParamsError(f"{label}: grid: {key} is not a parameter of {notebook}")

    values: dict[str, Any] = {}
    for key, value in raw.items():
        value, error = _check_entry(key, value, nb_params, grid, notebook)
        if error:
            raise ParamsError(f"{label}: profiles.{profile}.{key}: {error}")
        values[key] = value

    applied = []
    for ov in overrides:
        if ov.key not in nb_params and not ov.strict:
            continue  # a flat override for another notebook's parameter
        value, error = _check_entry(ov.key, ov.value, nb_params, grid, notebook)
        if error:
            raise ParamsError(f"{ov.where}: {error}")
        values[ov.key] = value
        applied.append(ov.key)

    for key in grid:
        if key not in values:
            raise ParamsError(f"{label}: grid: {key} is a grid axis but profiles.{profile} does not set it")

    return ParamsFile(name=path.stem, path=path, notebook=notebook, notebook_path=notebook_path,
                      notebook_sha256=sha256_file(notebook_path), grid=list(grid), profile=profile,
                      values=values, applied_overrides=tuple(applied))


def load_overrides(path: str | os.PathLike, known_names: Sequence[str]) -> dict[str, list[Override]]:
    """Read a ``--params`` file; return the overrides for each parameter-file name.

    Two forms: flat ``{key: value}`` (for every selected notebook that has ``key``), or nested
    ``{name: {key: value}}`` when every top-level key is a parameter-file name and every value a
    mapping. Names not in ``known_names`` get the flat overrides (or nothing, in the nested form).
    """
    path = Path(path)
    label = str(path)
    data = _load_yaml(path, label)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{label}: expected a mapping {{key: value}} or {{notebook_name: {{key: value}}}}")
    for key in data:
        if not isinstance(key, str):
            raise ParamsError(f"{label}: {format_value(key)}: parameter names must be strings")
    nested = bool(data) and all(k in known_names and isinstance(v, dict) for k, v in data.items())
    if nested:
        return {name: [Override(str(k), v, f"{label}: {name}.{k}", strict=True) for k, v in section.items()]
                for name, section in data.items()}
    flat = [Override(k, v, f"{label}: {k}", strict=False) for k, v in data.items()]
    return {name: flat for name in known_names}


def validate(params_dir: str | os.PathLike, names: Sequence[str] | None, profile: str,
             override_file: str | os.PathLike | None = None, root: Path = ROOT) -> list[ParamsFile]:
    """Validate every selected parameter file (and the override file) before anything runs.

    ``names`` are file stems in ``params_dir`` (``None``: all ``*.yaml`` there, sorted). Raises
    :class:`ParamsError` whose message has one line per offending file (its first problem).
    """
    params_dir = Path(params_dir)
    available = sorted(p.stem for p in params_dir.glob("*.yaml")) if params_dir.is_dir() else []
    if names is None:
        names = available
        if not names:
            raise ParamsError(f"{params_dir}: no parameter files (*.yaml) found")
    errors: list[str] = []
    overrides: dict[str, list[Override]] = {}
    if override_file is not None:
        try:
            overrides = load_overrides(override_file, sorted(set(available) | set(names)))
        except ParamsError as exc:
            errors.append(str(exc))
    files: list[ParamsFile] = []
    for name in names:
        try:
            files.append(load_params_file(params_dir / f"{name}.yaml", profile, overrides.get(name, ()), root))
        except ParamsError as exc:
            errors.append(str(exc))
    if not errors and files:
        applied = {key for pf in files for key in pf.applied_overrides}
        for ov in overrides.get(files[0].name, ()):
            if not ov.strict and ov.key not in applied:
                errors.append(f"{ov.where}: not a parameter of any selected notebook "
                              f"({', '.join(pf.name for pf in files)})")
                break
    if errors:
        raise ParamsError("\n".join(errors))
    return files


def expand_grid(params_file: ParamsFile) -> list[Run]:
    """One :class:`Run` per combination of the grid axes (cartesian product, axes in listed order)."""
    pf = params_file
    runs: list[Run] = []
    seen: dict[str, Any] = {}
    for point in itertools.product(*(pf.values[key] for key in pf.grid)):
        parameters = dict(pf.values)
        parameters.update(zip(pf.grid, point))
        run_id = make_run_id(pf.name, list(zip(pf.grid, point)))
        if run_id in seen:
            raise ParamsError(f"{pf.path}: grid: grid points {format_value(seen[run_id])} and "
                              f"{format_value(list(point))} give the same run id {run_id}")
        seen[run_id] = list(point)
        runs.append(Run(run_id=run_id, name=pf.name, notebook=pf.notebook, notebook_path=pf.notebook_path,
                        profile=pf.profile, parameters=parameters,
                        params_hash=params_hash(parameters, pf.notebook_sha256)))
    return runs


# ----------------------------------------------------------------------------- execution


def _now() -> str:
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
    run was computed with. Not part of :func:`params_hash`, so editing ``lib/`` does not silently
    throw away hours of finished runs; the runner says which cached runs differ (``--force``
    recomputes them)."""
    h = hashlib.sha256()
    for path in sorted((root / "lib").rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, PapermillExecutionError):
        text = f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
    else:
        lines = [ln for ln in "".join(traceback.format_exception_only(type(exc), exc)).splitlines() if ln.strip()]
        text = " | ".join(lines[-2:])
    return " ".join(text.split())[:2000]  # one line: it goes into the summary line and the manifest


DEFAULT_JOBS = max(1, min(4, os.cpu_count() or 1))


@contextmanager
def _kernel_environment(jobs: int, root: Path) -> Iterator[None]:
    """Environment the kernels inherit: thread counts split between jobs, the repo importable."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    pythonpath = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    changes = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": pythonpath,
               "MPLBACKEND": KERNEL_MPLBACKEND, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def execute_run(run: Run, report_dir: Path, root: Path = ROOT,
                code: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Execute one run with papermill; return its manifest entry (never raises for notebook errors).

    ``code`` (``git_commit``, ``git_dirty``, ``code_sha256``) is copied into the entry: a grid
    resumed over several days can mix library versions, and the entry says which one made it."""
    executed = report_dir / "runs" / f"{run.run_id}.ipynb"
    results = report_dir / "results" / f"{run.run_id}.json"
    results.unlink(missing_ok=True)  # a stale file must not pass for this run's output
    progress_path(results).unlink(missing_ok=True)
    status, error = "ok", None
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(run.notebook_path), str(executed),
            parameters={**run.parameters, RESULTS_KEY: str(results.resolve())},
            kernel_name=KERNEL_NAME, cwd=str(root), progress_bar=False, log_output=False,
            extra_arguments=KERNEL_ARGS,
        )
        if not results.is_file():
            status, error = "failed", f"the notebook finished without writing results/{results.name}"
    except Exception as exc:  # KeyboardInterrupt passes through: the run stays unrecorded
        status, error = "failed", _short_error(exc)
    progress_path(results).unlink(missing_ok=True)
    return {
        "name": run.name,
        "notebook": run.notebook,
        "profile": run.profile,
        "parameters": run.parameters,
        "params_hash": run.params_hash,
        "status": status,
        "wall_s": round(time.perf_counter() - start, 3),
        "error": error,
        "executed_notebook": f"runs/{executed.name}",
        "results": f"results/{results.name}",
        "finished": _now(),
        **(code or {}),
    }


def is_cached(run: Run, manifest: Mapping[str, Any], report_dir: Path) -> bool:
    """Finished before: recorded ok, same parameters and notebook, results file present."""
    entry = manifest.get("runs", {}).get(run.run_id)
    return (isinstance(entry, dict) and entry.get("status") == "ok"
            and entry.get("params_hash") == run.params_hash
            and (report_dir / "results" / f"{run.run_id}.json").is_file())


def load_manifest(report_dir: Path) -> dict[str, Any]:
    path = report_dir / "manifest.json"
    if path.is_file():
        try:
            manifest = read_json(path)
            if isinstance(manifest, dict) and isinstance(manifest.get("runs"), dict):
                return manifest
        except (OSError, ValueError):
            pass
        print(f"warning: {path} is unreadable; starting a new manifest", file=sys.stderr)
    return {"runs": {}}


def run_grid(runs: Sequence[Run], report_dir: str | os.PathLike, *, profile: str, date: str, jobs: int = 1,
             force: bool = False, root: Path = ROOT) -> dict[str, list[str]]:
    """Execute ``runs`` into ``report_dir`` (resuming from its manifest); return run ids by outcome.

    The result has keys ``ok``, ``cached`` and ``failed``. The manifest is rewritten atomically
    after every finished run, so killing the process loses at most the runs in progress.
    """
    report_dir = Path(report_dir)
    (report_dir / "runs").mkdir(parents=True, exist_ok=True)
    (report_dir / "results").mkdir(parents=True, exist_ok=True)
    manifest_path = report_dir / "manifest.json"
    manifest = load_manifest(report_dir)
    commit, dirty = git_commit(root)
    code = {"git_commit": commit, "git_dirty": dirty, "code_sha256": code_sha256(root)}
    manifest.update({"profile": profile, "date": date, "started": _now(), "git_commit": commit,
                     "git_dirty": dirty, "versions": versions(), "platform": platform.platform()})

    outcome: dict[str, list[str]] = {"ok": [], "cached": [], "failed": []}
    todo = [run for run in runs if force or not is_cached(run, manifest, report_dir)]
    todo_ids = {run.run_id for run in todo}
    outcome["cached"] = [run.run_id for run in runs if run.run_id not in todo_ids]
    # One record per invocation, rewritten with the manifest after every run: the wall time of a
    # grid finished over several (interrupted, resumed) invocations is the sum of their wall_s.
    t0 = time.perf_counter()
    invocation = {"started": manifest["started"], "finished": None, "wall_s": 0.0, "jobs": jobs,
                  "git_commit": commit, "ran": [], "cached": len(outcome["cached"])}
    manifest.setdefault("invocations", []).append(invocation)
    atomic_write_json(manifest_path, manifest)
    lock = threading.Lock()
    bar = tqdm(total=len(runs), unit="run", dynamic_ncols=True)
    bar.update(len(outcome["cached"]))
    if outcome["cached"]:
        tqdm.write(f"cached {len(outcome['cached'])} run(s) in {manifest_path}")
        other = [rid for rid in outcome["cached"]
                 if manifest["runs"][rid].get("code_sha256") != code["code_sha256"]]
        if other:
            tqdm.write(f"note: {len(other)} cached run(s) were computed with another version of lib/ "
                       f"(see git_commit in the manifest); --force recomputes them")

    def record(entry: dict[str, Any] | None = None, run_id: str | None = None) -> None:
        """Under ``lock``: store ``entry``, bring this invocation's record up to date, write."""
        if entry is not None:
            manifest["runs"][run_id] = entry
            invocation["ran"].append(run_id)
        invocation["wall_s"] = round(time.perf_counter() - t0, 3)
        invocation["finished"] = _now()
        atomic_write_json(manifest_path, manifest)

    running: dict[str, Path] = {}  # run id -> its results file, whose progress file is polled
    stop = threading.Event()

    def show_progress() -> None:
        while not stop.wait(PROGRESS_POLL_S):
            with lock:
                states = {rid: read_progress(path) for rid, path in running.items()}
                bar.set_postfix_str("; ".join(f"{rid} {describe(p)}" for rid, p in states.items()))

    def one(run: Run) -> dict[str, Any]:
        with lock:
            running[run.run_id] = report_dir / "results" / f"{run.run_id}.json"
            bar.set_description(f"{len(running)} running")
        entry = execute_run(run, report_dir, root, code)
        with lock:
            running.pop(run.run_id, None)
            record(entry, run.run_id)
            if entry["status"] == "ok":
                outcome["ok"].append(run.run_id)
                tqdm.write(f"ok {entry['wall_s']:.1f}s {run.run_id}")
            else:
                outcome["failed"].append(run.run_id)
                tqdm.write(f"FAILED {entry['wall_s']:.1f}s {run.run_id}: {entry['error']}")
            bar.update(1)
        return entry

    poller = threading.Thread(target=show_progress, name="progress", daemon=True)
    poller.start()
    try:
        with _kernel_environment(jobs, root):
            if jobs <= 1:
                for run in todo:
                    one(run)
            else:
                pool = ThreadPoolExecutor(max_workers=jobs)
                futures = [pool.submit(one, run) for run in todo]
                try:
                    for future in as_completed(futures):
                        future.result()
                except KeyboardInterrupt:
                    # Finished runs are already in the manifest. The running notebooks cannot be
                    # interrupted from this thread, so the process exits at once: each kernel
                    # notices that its parent (JPY_PARENT_PID) is gone and exits; a rerun resumes.
                    running = sum(f.running() for f in futures)
                    bar.close()
                    sys.stderr.write(f"\ninterrupted: {running} running notebook(s) stopped; "
                                     "rerun the same command to resume\n")
                    sys.stderr.flush()
                    os._exit(130)
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
    finally:
        stop.set()
        bar.close()
    with lock:
        record()
    return outcome


def unfinished_elsewhere(reports_dir: Path, date: str, profile: str, run_ids: Sequence[str]) -> str | None:
    """The latest other date folder holding some, not all, of ``run_ids`` finished with ``profile``:
    a grid started on an earlier day, which ``--date`` resumes. ``None`` when ``date`` already has
    a manifest or no such folder exists."""
    if (reports_dir / date / "manifest.json").is_file() or not reports_dir.is_dir():
        return None
    wanted = set(run_ids)
    for folder in sorted((d for d in reports_dir.iterdir() if d.is_dir() and d.name != date), reverse=True):
        try:
            manifest = read_json(folder / "manifest.json")
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or manifest.get("profile") != profile:
            continue
        done = {rid for rid, e in (manifest.get("runs") or {}).items()
                if isinstance(e, dict) and e.get("status") == "ok"} & wanted
        if done and done != wanted:
            return folder.name
    return None


# ----------------------------------------------------------------------------- CLI


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib.runner",
        description="Validate params/*.yaml, run each notebook over its grid with papermill into "
                    "reports/<date>/, resume finished runs, build the report.")
    parser.add_argument("--profile", default="quick", help="profile in each params file: quick|full (default: quick)")
    parser.add_argument("--only", action="append", metavar="NAME[,NAME]",
                        help="params file stems to run (default: all files in --params-dir)")
    parser.add_argument("--params", metavar="FILE", help="YAML overriding profile values: {key: value} for "
                        "every selected notebook having key, or {name: {key: value}}; grid keys need lists")
    parser.add_argument("--jobs", type=_positive, default=DEFAULT_JOBS,
                        help=f"parallel notebook executions, each with cores/jobs threads (default: {DEFAULT_JOBS}, "
                             "one per core: small tensors run best single-threaded)")
    parser.add_argument("--date", type=_date, default=dt.date.today().isoformat(),
                        help="report folder date YYYY-MM-DD (default: today); resume is per date, so a grid "
                             "started on an earlier day resumes with that day's date")
    parser.add_argument("--reports-dir", default="reports", help="default: reports")
    parser.add_argument("--params-dir", default="params", help="default: params")
    parser.add_argument("--no-report", action="store_true", help="skip building reports/<date>/index.html")
    parser.add_argument("--force", action="store_true", help="recompute runs even if finished")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 failures, 2 invalid parameters)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    names = None
    if args.only:
        names = list(dict.fromkeys(n.strip() for item in args.only for n in item.split(",") if n.strip()))

    try:
        files = validate(args.params_dir, names, args.profile, args.params)
        runs = [run for pf in files for run in expand_grid(pf)]
    except ParamsError as exc:
        print(str(exc), file=sys.stderr)
        return 2

    report_dir = Path(args.reports_dir) / args.date
    earlier = unfinished_elsewhere(Path(args.reports_dir), args.date, args.profile, [r.run_id for r in runs])
    if earlier:
        print(f"note: {Path(args.reports_dir) / earlier} holds an unfinished grid of profile {args.profile}; "
              f"add --date {earlier} to resume it instead of starting {report_dir}", file=sys.stderr)
    try:
        outcome = run_grid(runs, report_dir, profile=args.profile, date=args.date, jobs=args.jobs, force=args.force)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished runs are recorded in {report_dir / 'manifest.json'}; "
              "rerun the same command to resume", file=sys.stderr)
        return 130

    status = 1 if outcome["failed"] else 0
    report = "skipped (--no-report)"
    if not args.no_report:
        try:
            from lib.report import build_report
            build_report(report_dir)
            report = str(report_dir / "index.html")
        except Exception as exc:
            print(f"building the report in {report_dir} failed: {_short_error(exc)}", file=sys.stderr)
            report = "FAILED"
            status = 1
    print(f"{len(outcome['ok'])} ok, {len(outcome['cached'])} cached, {len(outcome['failed'])} failed; "
          f"report: {report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
