"""Structured results: lists of records with explicit fields, selected by field values.

A toy run's curves, for example, are records such as ``{"estimator": "nes", "layers": "all",
"sigma": 0.1, "samples": 500, "mean": [...], "std": [...], "best": ..., "best_lr": ..., "n": 9}``:
every field a reader needs is stored as such, never encoded in a key string.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, TypedDict, TypeVar

P = TypeVar("P")


def select(records: Iterable[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    """The records whose ``fields`` have the given values, in their order."""
    return [r for r in records if all(r.get(k) == v for k, v in fields.items())]


def only(records: Iterable[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """The one record with the given ``fields``; ``LookupError`` naming them otherwise."""
    found = select(records, **fields)
    if len(found) != 1:
        raise LookupError(f"{len(found)} records with {fields}, expected one")
    return found[0]


def distinct(records: Iterable[dict[str, Any]], field: str, **fields: Any) -> list[Any]:
    """The sorted distinct values of ``field`` among the records with the given ``fields``."""
    return sorted({r[field] for r in select(records, **fields) if field in r})


class RunResults(TypedDict):
    """What every experiment's results file holds beside its own records: the experiment's name,
    its parameters (``dataclasses.asdict`` of its parameter class), the package versions, the CPU,
    the device, and the compute (``wall_s``) and CPU (``cpu_s``) seconds of all its attempts."""

    experiment: str
    parameters: dict[str, Any]
    versions: dict[str, Any]
    machine: dict[str, str]
    device: str
    wall_s: float
    cpu_s: float


def parameters_of(results: Mapping[str, Any], cls: type[P]) -> P:
    """A results file's ``parameters`` as its experiment's parameter class ``cls``: a key the class
    no longer has is dropped, one it gained takes its default. Not validated again (the run
    validated them; a rule tightened since must not make a finished run unreadable)."""
    stored = results["parameters"]
    out = object.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.name in stored:
            value = stored[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        object.__setattr__(out, f.name, value)
    return out
