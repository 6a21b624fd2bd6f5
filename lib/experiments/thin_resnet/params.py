"""Parameters of the thin ResNet experiment: the defaults and their checks (docs/design.md §4)."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from lib.core.device import resolve_device
from lib.core.quantizers import PRECISIONS, STE_VARIANTS

EXPERIMENT = "thin_resnet"
STATES = ("init", "trained")
NUM_CLASSES = 10
IN_CHANNELS = 3
LOSS = "cross_entropy"
CACHE_VERSION = 1  # bump when the training procedure changes: old checkpoints stop matching

DEFAULTS: dict[str, Any] = {
    "initial_channels": 8,
    "states": ["init", "trained"],
    "acts": ["binary", "ternary", "2bit", "fp"],
    "ste_variants": list(STE_VARIANTS),
    "eps": [0.1],
    "coords_per_layer": 16,
    "batch_size": 64,
    "lrs": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0],
    "normalize": "layer",
    "decrease_acts": ["binary"],
    "binary_weights": False,
    "train_epochs": 2,
    "train_batch_size": 64,
    "train_lr": 0.001,
    "train_variant": "clipped",
    "train_limit": 0,
    "init_bn_batches": 8,
    "test_limit": 512,
    "seed": 0,
    "device": "cpu",
    "data_source": "digits",
    "cache_dir": "cache/thin_resnet",
    "budget_mb": 8.0,
}
PARAM_NAMES = tuple(DEFAULTS)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pos_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _list_of(name: str, value: Any, allowed: Sequence[str] | None = None,
             check: Callable[[Any], bool] | None = None, what: str = "") -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name}: expected a non-empty list, got {value!r}")
    value = list(value)
    if len(set(map(repr, value))) != len(value):
        raise ValueError(f"{name}: repeated values in {value!r}")
    for v in value:
        if allowed is not None and v not in allowed:
            raise ValueError(f"{name}: unknown value {v!r}; expected values from {list(allowed)}")
        if check is not None and not check(v):
            raise ValueError(f"{name}: expected {what}, got {v!r} in {value!r}")
    return value


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """The defaults updated with ``params``, checked before any compute: an unknown key, a wrong
    type or an out-of-range value raises one ``ValueError`` naming the key."""
    unknown = [k for k in params if k not in DEFAULTS and k != "results_path"]
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown parameter; expected one of {list(PARAM_NAMES)}")
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k != "results_path"}}
    for key in ("initial_channels", "coords_per_layer", "batch_size", "train_batch_size"):
        if not _is_int(p[key]) or p[key] < 1:
            raise ValueError(f"{key}: expected a positive integer, got {p[key]!r}")
    for key in ("train_epochs", "train_limit", "init_bn_batches", "test_limit", "seed"):
        if not _is_int(p[key]) or p[key] < 0:
            raise ValueError(f"{key}: expected a non-negative integer, got {p[key]!r}")
    for key in ("train_lr", "budget_mb"):
        if not _is_pos_number(p[key]):
            raise ValueError(f"{key}: expected a positive number, got {p[key]!r}")
    p["states"] = _list_of("states", p["states"], STATES)
    p["acts"] = _list_of("acts", p["acts"], PRECISIONS)
    p["ste_variants"] = _list_of("ste_variants", p["ste_variants"], STE_VARIANTS)
    p["eps"] = [float(e) for e in _list_of("eps", p["eps"], check=_is_pos_number, what="positive numbers")]
    p["lrs"] = [float(v) for v in _list_of("lrs", p["lrs"], check=_is_pos_number, what="positive numbers")]
    if not isinstance(p["decrease_acts"], (list, tuple)):
        raise ValueError(f"decrease_acts: expected a list (may be empty), got {p['decrease_acts']!r}")
    p["decrease_acts"] = _list_of("decrease_acts", p["decrease_acts"], PRECISIONS) if p["decrease_acts"] else []
    missing = [a for a in p["decrease_acts"] if a not in p["acts"]]
    if missing:
        raise ValueError(f"decrease_acts: {missing} not in acts {p['acts']}")
    if p["normalize"] not in ("layer", "global", "none"):
        raise ValueError(f"normalize: expected layer, global or none, got {p['normalize']!r}")
    if p["train_variant"] not in STE_VARIANTS:
        raise ValueError(f"train_variant: unknown STE variant {p['train_variant']!r}; expected one of {STE_VARIANTS}")
    if not isinstance(p["binary_weights"], bool):
        raise ValueError(f"binary_weights: expected true or false, got {p['binary_weights']!r}")
    for key in ("device", "data_source", "cache_dir"):
        if not isinstance(p[key], str) or not p[key]:
            raise ValueError(f"{key}: expected a non-empty string, got {p[key]!r}")
    resolve_device(p["device"])
    if "trained" in p["states"] and p["train_epochs"] < 1:
        raise ValueError("train_epochs: the trained state needs at least one epoch")
    return p
