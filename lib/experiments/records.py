"""Structured results: lists of records with explicit fields, selected by field values.

A toy run's curves, for example, are records such as ``{"estimator": "nes", "layers": "all",
"sigma": 0.1, "samples": 500, "mean": [...], "std": [...], "best": ..., "best_lr": ..., "n": 9}``:
every field a reader needs is stored as such, never encoded in a key string.
"""
from __future__ import annotations

from typing import Any, Iterable, TypedDict


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
