"""Parameter files and their grids: read ``params/<name>.yaml``, validate it against its
experiment's schema, expand the grid into runs.

One parameter file per notebook, read strictly with a ``yaml.SafeLoader`` (:mod:`lib.pipeline.yamlfile`)::

    notebook: notebooks/toy.ipynb      # relative to the repository root
    grid: [num_dim, pretrained]        # grid axes: lists in the profile, one run per combination
    profiles:
      quick: {num_dim: [8, 16], pretrained: [false, true], eps: 0.1, seed: 0}
      full:  {...}

The notebook names the experiment (:mod:`lib.experiments.registry`), whose parameter class is
the one declaration of the names, types, defaults, ranges and cross-field rules
(:mod:`lib.experiments.schema`): every value is checked against it, and every grid point as a
whole, before anything runs; the notebook's ``parameters`` cell must declare exactly those names
(read with ``papermill.inspect_notebook``, which is what papermill will inject into). An error is a
:class:`ParamsError` of one line per offending file, ``<file>: <key>: <why>``. Each grid point
becomes a :class:`Run` whose ``params_hash`` covers its parameters and the notebook's code cells
(:func:`lib.common.notebooks.code_sha256`: prose, outputs and metadata do not count).
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import papermill

from lib.common.files import canonical_json, sha256_file
from lib.common.notebooks import code_sha256
from lib.common.paths import ROOT
from lib.experiments.registry import EXPERIMENTS, Experiment, by_notebook
from lib.experiments.schema import SchemaError, build, check_entry, field_types, format_value, machine_problems
from lib.pipeline.devices import device_problem
from lib.pipeline.yamlfile import ParamsError, load_yaml

TOP_LEVEL_KEYS = ("notebook", "grid", "profiles")
RESULTS_KEY = "results_path"  # set by the runner in every run; notebooks must declare it


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
    notebook_sha256: str      # of the notebook's bytes: the key of runs recorded before code_sha256
    notebook_code_sha256: str  # of its code cells: the notebook's part of a run's key
    experiment: str           # the notebook's experiment (lib/experiments/registry.py)
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
    experiment: str | None = None
    legacy_hash: str | None = None  # the key entries recorded before it was the code's (notebook bytes)


# ----------------------------------------------------------------------------- helpers


def params_hash(parameters: Mapping[str, Any], notebook_sha256: str) -> str:
    """sha256 of the canonical JSON of the parameters (without ``results_path``) + the notebook's
    sha256 (of its code cells; of its bytes for :attr:`Run.legacy_hash`)."""
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


def _check_entry(key: Any, value: Any, schema: type, grid: Sequence[str], notebook: str) -> Any:
    """One profile or override entry, checked against the experiment's schema: the value (ints
    made floats), or :class:`SchemaError` naming the key."""
    if not isinstance(key, str):
        raise SchemaError(str(key), "parameter names must be strings")
    if key == RESULTS_KEY:
        raise SchemaError(key, f"{RESULTS_KEY} is set by the runner; remove it")
    if key not in field_types(schema):
        raise SchemaError(key, f"not a parameter of {notebook} (its parameters: {', '.join(field_types(schema))})")
    return check_entry(schema, key, value, axis=key in grid)


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
    missed = [name for name in _assigned_names(notebook_path) if name not in params]
    if missed:  # papermill skips lines it cannot parse (e.g. a comment containing '='), silently
        raise ParamsError(f"{label}: {notebook_path.name}: papermill cannot parse the parameters-cell line of "
                          f"{', '.join(missed)} (a comment containing '=' or a statement over several lines?)")
    return params


def _assigned_names(notebook_path: Path) -> list[str]:
    """Names assigned at top level in the notebook's ``parameters`` cell (by Python's parser)."""
    nb = json.loads(notebook_path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell.get("source", []))
            try:
                tree = ast.parse(source)
            except SyntaxError:
                return []  # papermill reports what it can; the kernel will show the error
            assigns = [n for n in tree.body
                       if isinstance(n, ast.Assign) or (isinstance(n, ast.AnnAssign) and n.value is not None)]
            return [t.id for node in assigns for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)]
    return []


# ----------------------------------------------------------------------------- parameter files


class ProfileNotFound(ParamsError):
    """A parameter file has no profile of the requested name."""


def _read_file(path: Path, profile: str, root: Path) -> tuple[str, Path, list[str], dict[str, Any]]:
    """The checked structure of a parameter file: ``(notebook, its path, grid axes, the profile's
    raw values)``."""
    label = str(path)
    data = load_yaml(path, label)
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
        raise ProfileNotFound(f"{label}: profiles.{profile}: profile not found (available: {available})")
    if not isinstance(profiles[profile], dict):
        raise ParamsError(f"{label}: profiles.{profile}: expected a mapping of parameter: value")
    return notebook, notebook_path, grid, profiles[profile]


def _experiment_of(notebook: str, notebook_path: Path, label: str) -> Experiment:
    """The experiment whose notebook this is; its ``parameters`` cell must declare exactly the
    experiment's schema (and ``results_path``)."""
    experiment = by_notebook(notebook_path)
    if experiment is None:
        known = ", ".join(f"{e.name} ({e.notebook})" for e in EXPERIMENTS)
        raise ParamsError(f"{label}: notebook: {notebook} is not the notebook of an experiment "
                          f"(lib/experiments/registry.py: {known})")
    declared = set(notebook_parameters(notebook_path, f"{label}: notebook")) - {RESULTS_KEY}
    expected = set(field_types(experiment.schema))
    if declared != expected:
        missing, extra = sorted(expected - declared), sorted(declared - expected)
        raise ParamsError(f"{label}: notebook: the parameters cell of {notebook_path.name} does not match "
                          f"{experiment.schema.__name__}" + (f"; missing {', '.join(missing)}" if missing else "")
                          + (f"; not in the schema {', '.join(extra)}" if extra else ""))
    return experiment


def _check_grid_points(values: dict[str, Any], grid: Sequence[str], schema: type, where: Mapping[str, str],
                       fallback: str) -> None:
    """Every grid point as a whole (defaults, values, the point): cross-field rules such as
    ``lr_min < lr_max``, then what this machine must give it (the device, the parameter class's
    ``machine_problems()``: data files, folders, memory). ``where`` names the entry that set each
    key (``fallback`` otherwise)."""
    for point in itertools.product(*(values[key] for key in grid)):
        at = f" (grid point {', '.join(f'{k}={format_value(v)}' for k, v in zip(grid, point))})" if grid else ""
        merged = {**values, **dict(zip(grid, point))}
        try:
            instance = build(schema, merged)
        except SchemaError as exc:
            raise ParamsError(f"{where.get(exc.key, f'{fallback}.{exc.key}')}: {exc.message}{at}") from None
        device = device_problem(merged.get("device"))
        problems = [("device", device)] if device else machine_problems(instance)
        if problems:
            key, message = problems[0]
            raise ParamsError(f"{where.get(key, f'{fallback}.{key}')}: {message}{at}")


def load_params_file(path: str | os.PathLike, profile: str, overrides: Sequence[Override] = (),
                     root: Path = ROOT) -> ParamsFile:
    """Read and validate one parameter file for ``profile``; apply ``overrides`` (from ``--params``).

    Every value is checked against the schema of the notebook's experiment, then every grid point
    as a whole. Raises :class:`ParamsError` with the first problem found, as ``<file>: <key>: <why>``.
    """
    path = Path(path)
    label = str(path)
    notebook, notebook_path, grid, raw = _read_file(path, profile, root)
    experiment = _experiment_of(notebook, notebook_path, label)
    schema = experiment.schema
    for key in grid:
        if key not in field_types(schema):
            raise ParamsError(f"{label}: grid: {key} is not a parameter of {notebook}")
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, value in raw.items():
        where[str(key)] = f"{label}: profiles.{profile}.{key}"
        try:
            values[key] = _check_entry(key, value, schema, grid, notebook)
        except SchemaError as exc:
            raise ParamsError(f"{where[str(key)]}: {exc.message}") from None
    applied = []
    for ov in overrides:
        if ov.key not in field_types(schema) and not ov.strict:
            continue  # a flat override for another notebook's parameter
        try:
            values[ov.key] = _check_entry(ov.key, ov.value, schema, grid, notebook)
        except SchemaError as exc:
            raise ParamsError(f"{ov.where}: {exc.message}") from None
        where[ov.key] = ov.where
        applied.append(ov.key)
    for key in grid:
        if key not in values:
            raise ParamsError(f"{label}: grid: {key} is a grid axis but profiles.{profile} does not set it")
    _check_grid_points(values, grid, schema, where, f"{label}: profiles.{profile}")
    return ParamsFile(name=path.stem, path=path, notebook=notebook, notebook_path=notebook_path,
                      notebook_sha256=sha256_file(notebook_path), notebook_code_sha256=code_sha256(notebook_path),
                      experiment=experiment.name,
                      grid=list(grid), profile=profile, values=values, applied_overrides=tuple(applied))


def load_overrides(path: str | os.PathLike, known_names: Sequence[str]) -> dict[str, list[Override]]:
    """Read a ``--params`` file; return the overrides for each parameter-file name.

    Two forms: flat ``{key: value}`` (for every selected notebook that has ``key``), or nested
    ``{name: {key: value}}`` when every top-level key is a parameter-file name and every value a
    mapping. Names not in ``known_names`` get the flat overrides (or nothing, in the nested form).
    """
    path = Path(path)
    label = str(path)
    data = load_yaml(path, label)
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

    ``names`` are file stems in ``params_dir`` (``None``: all ``*.yaml`` there, sorted, less those
    that do not define ``profile`` when others do: ``--profile lab`` runs the files that have a
    lab profile). Raises :class:`ParamsError` whose message has one line per offending file (its
    first problem).
    """
    params_dir = Path(params_dir)
    available = sorted(p.stem for p in params_dir.glob("*.yaml")) if params_dir.is_dir() else []
    every_file = names is None
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
    problems: list[ParamsError] = []
    for name in names:
        try:
            files.append(load_params_file(params_dir / f"{name}.yaml", profile, overrides.get(name, ()), root))
        except ParamsError as exc:
            problems.append(exc)
    errors += [str(exc) for exc in problems if not (every_file and files and isinstance(exc, ProfileNotFound))]
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
                        params_hash=params_hash(parameters, pf.notebook_code_sha256), experiment=pf.experiment,
                        legacy_hash=params_hash(parameters, pf.notebook_sha256)))
    return runs
