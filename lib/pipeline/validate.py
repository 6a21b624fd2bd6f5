"""Range checks for notebook parameters, by parameter name.

Parameter names are shared across the project's notebooks (``num_dim`` means the same thing in
every notebook), so one table of rules serves every params file. :data:`RULES` maps a name to
``(predicate, description)``; the predicate is applied to a scalar value, and to each element
(recursively) of a list value, so a grid axis ``eps: [0.01, 0.1]`` and a list parameter
``lrs: [0.1, 0.01]`` are both checked element by element. Names without a rule pass (the
runner still checks their type against the notebook's default).
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

Predicate = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def nonnegative_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def positive_number(v: Any) -> bool:
    return _is_number(v) and v > 0


def one_of(*choices: str) -> Predicate:
    allowed = frozenset(choices)
    return lambda v: isinstance(v, str) and v in allowed


def device_name(v: Any) -> bool:
    return isinstance(v, str) and (v in ("cpu", "cuda", "auto") or (v.startswith("cuda:") and v[5:].isdigit()))


_POSITIVE_INTS = "positive integers"
_STE_VARIANTS = ("identity", "clipped", "steep", "swishsign", "polynomial")
_PRECISIONS = ("binary", "ternary", "2bit", "fp")


def _choices(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(choices)


RULES: dict[str, tuple[Predicate, str]] = {
    # sizes and counts
    **{name: (positive_int, _POSITIVE_INTS) for name in (
        "num_dim", "batch_size", "num_init", "num_batch", "hidden_layers", "initial_channels",
        "coords_per_layer", "pretrain_steps", "pretrain_batch_size", "train_epochs",
        "train_batch_size", "eval_batch_size", "num_lr",
        "samples", "nes_samples",  # NES sample counts
    )},
    "num_lr_refine": (nonnegative_int, "non-negative integers"),
    "seed": (nonnegative_int, "non-negative integers"),
    "seeds": (nonnegative_int, "non-negative integers"),
    # step sizes and scales
    **{name: (positive_number, "positive numbers") for name in (
        "eps", "sigma", "lr", "lrs", "pretrain_lr", "train_lr",
        "eps_grid", "sigma_grid", "lr_min", "lr_max", "lr_refine", "reference_eps",
    )},
    # choices
    "device": (device_name, "one of cpu, cuda, auto, cuda:N"),
    "normalize": (one_of("layer", "global", "none"), _choices(("layer", "global", "none"))),
    "ste_variants": (one_of(*_STE_VARIANTS), _choices(_STE_VARIANTS)),
    "variant": (one_of(*_STE_VARIANTS), _choices(_STE_VARIANTS)),
    "pretrain_variant": (one_of(*_STE_VARIANTS), _choices(_STE_VARIANTS)),
    **{name: (one_of(*_PRECISIONS), _choices(_PRECISIONS)) for name in (
        "act", "acts", "teacher_act", "precisions",
    )},
    "loss": (one_of("mse", "cross_entropy"), _choices(("mse", "cross_entropy"))),
}


def format_value(value: Any) -> str:
    """Show a value the way it reads in YAML/JSON (``false``, ``[-1]``, ``"cpu"``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _all_elements(pred: Predicate, value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_all_elements(pred, v) for v in value)
    return pred(value)


def check_value(key: str, value: Any) -> str | None:
    """Check ``value`` (a scalar, or each element of a list) against the rule for ``key``.

    Returns ``None`` when the value is acceptable or ``key`` has no rule, else a message such as
    ``expected positive numbers, got [-1]``.
    """
    rule = RULES.get(key)
    if rule is None:
        return None
    pred, description = rule
    if _all_elements(pred, value):
        return None
    return f"expected {description}, got {format_value(value)}"
