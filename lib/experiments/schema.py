"""One declaration of an experiment's parameters: a dataclass whose fields carry their checks.

An experiment's parameter class (``ToyParams``, ``ThinResNetParams``) is the single place that
names its parameters, their types (the annotations: ``int``, ``float``, ``bool``, ``str`` or a
``list`` of one of them), defaults and ranges (:func:`param` with a :class:`Rule`), and its
cross-field rules (a ``problems()`` method returning ``[(key, message)]``), and what the run needs
from the machine it runs on (a ``machine_problems()`` method of the same form: data files, folders
it writes, memory for its largest tensor; :mod:`lib.common.resources`). From it:

* constructing the class validates (its ``__post_init__`` calls :func:`validate`): a wrong type,
  an out-of-range value, an empty or repeated list, an inconsistent pair raises
  :class:`SchemaError` naming the key; ints given for float parameters become floats;
* the pipeline checks ``params/*.yaml`` and ``--params`` values against it, entry by entry
  (:func:`check_entry`) and as whole grid points, ``machine_problems()`` included, before any
  compute, with no torch import;
* a test checks that each notebook's ``parameters`` cell has exactly the class's names and
  defaults, and notebooks build it from their globals (:func:`from_namespace`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from lib.core.names import LOSSES, NORMALIZATIONS, PRECISIONS, STE_VARIANTS


class SchemaError(ValueError):
    """A parameter value the experiment would reject: ``key`` names the parameter."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Rule:
    """A range check of one value: ``test(value)``, described by ``says`` (plural: what it accepts)."""

    test: Callable[[Any], bool]
    says: str


def _finite(v: Any) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


POSITIVE = Rule(lambda v: v > 0 and _finite(v), "positive numbers")
POSITIVE_INT = Rule(lambda v: v > 0, "positive integers")
NON_NEGATIVE_INT = Rule(lambda v: v >= 0, "non-negative integers")
NON_EMPTY = Rule(lambda v: v != "", "non-empty strings")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(choices))


PRECISION = one_of(*PRECISIONS)
STE_VARIANT = one_of(*STE_VARIANTS)
NORMALIZATION = one_of(*NORMALIZATIONS)
LOSS = one_of(*LOSSES)
DEVICE = Rule(lambda v: v in ("cpu", "cuda", "auto") or (v.startswith("cuda:") and v[5:].isdigit()),
              "one of cpu, cuda, auto, cuda:N")


def param(default: Any, rule: Rule | None = None, *, may_be_empty: bool = False) -> Any:
    """A field of a parameter class: its default and the :class:`Rule` each value (each element
    of a list) must pass. A list must be non-empty unless ``may_be_empty``, and never repeats a
    value."""
    metadata = {"rule": rule, "may_be_empty": may_be_empty}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------- types and values

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str"}


@functools.cache
def field_types(schema: type) -> dict[str, tuple[type, type | None]]:
    """``{name: (type, element type or None)}`` of a parameter class, from its annotations (read
    once per class)."""
    hints = typing.get_type_hints(schema)
    out = {}
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        if typing.get_origin(hint) is list:
            out[f.name] = (list, typing.get_args(hint)[0])
        else:
            out[f.name] = (hint, None)
    return out


def format_value(value: Any) -> str:
    """A value as it reads in YAML/JSON (``false``, ``[-1]``, ``"cpu"``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _scalar(typ: type, value: Any) -> Any:
    """``value`` as a ``typ`` (an int for a float becomes a float), or ``TypeError``."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float) and isinstance(value, bool):
        raise TypeError
    if not isinstance(value, typ):
        raise TypeError
    return value


def _expected(typ: type, elem: type | None) -> str:
    return f"a list of {_TYPE_NAMES[elem]}" if typ is list else _TYPE_NAMES[typ]


def check_value(schema: type, key: str, value: Any) -> Any:
    """``value`` for parameter ``key`` of ``schema``, checked (type, range, list rules) and with
    ints made floats where a float is expected; :class:`SchemaError` otherwise."""
    types = field_types(schema)
    if key not in types:
        raise SchemaError(key, f"not a parameter of {schema.__name__} (its parameters: {', '.join(types)})")
    typ, elem = types[key]
    meta = next(f.metadata for f in dataclasses.fields(schema) if f.name == key)
    default = defaults(schema)[key]
    try:
        if typ is list:
            if not isinstance(value, list):
                raise TypeError
            value = [_scalar(elem, v) for v in value]
        else:
            value = _scalar(typ, value)
    except TypeError:
        raise SchemaError(key, f"expected {_expected(typ, elem)} (the default is {format_value(default)}), "
                               f"got {format_value(value)}") from None
    rule = meta.get("rule")
    items = value if typ is list else [value]
    if rule is not None and not all(rule.test(v) for v in items):
        raise SchemaError(key, f"expected {rule.says}, got {format_value(value)}")
    if typ is list:
        if not value and not meta.get("may_be_empty"):
            raise SchemaError(key, "expected a non-empty list, got []")
        if len({format_value(v) for v in value}) != len(value):
            raise SchemaError(key, f"repeated values in {format_value(value)}")
    return value


def check_entry(schema: type, key: str, value: Any, axis: bool = False) -> Any:
    """One entry of a parameter file: a parameter value, or with ``axis`` a grid axis (a
    non-empty list of distinct parameter values). Returns the checked value."""
    if not axis:
        return check_value(schema, key, value)
    if not isinstance(value, list) or not value:
        raise SchemaError(key, f"grid axis: expected a non-empty list, got {format_value(value)}")
    values = [check_value(schema, key, v) for v in value]
    if len({format_value(v) for v in values}) != len(values):
        raise SchemaError(key, f"grid axis has repeated values: {format_value(value)}")
    return values


def validate(instance: Any) -> None:
    """Check every field of a parameter-class instance (ints for floats made floats, in place),
    then its cross-field ``problems()``; raise :class:`SchemaError` for the first problem."""
    for f in dataclasses.fields(instance):
        object.__setattr__(instance, f.name, check_value(type(instance), f.name, getattr(instance, f.name)))
    problems = instance.problems() if hasattr(instance, "problems") else []
    if problems:
        raise SchemaError(*problems[0])


def machine_problems(instance: Any) -> list[tuple[str, str]]:
    """What this machine cannot give a run with these parameters, as ``(key, message)``: the
    instance's ``machine_problems()`` (data files, folders, memory), or none when its class
    declares no such needs."""
    return instance.machine_problems() if hasattr(instance, "machine_problems") else []


def defaults(schema: type) -> dict[str, Any]:
    """``{name: default}`` of a parameter class, in declaration order."""
    return {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(schema)}


def build(schema: type, values: Mapping[str, Any]) -> Any:
    """An instance of ``schema`` from ``values`` (unknown names refused, the rest defaults)."""
    names = {f.name for f in dataclasses.fields(schema)}
    unknown = [k for k in values if k not in names]
    if unknown:
        check_value(schema, unknown[0], None)  # raises: not a parameter
    return schema(**values)


def from_namespace(schema: type, namespace: Mapping[str, Any]) -> Any:
    """The instance of ``schema`` whose values are the names of ``namespace`` (a notebook's
    ``globals()`` after its ``parameters`` cell and papermill's injected one)."""
    return schema(**{f.name: namespace[f.name] for f in dataclasses.fields(schema)})
