"""Reading a parameter file strictly, before anything runs: at most :data:`MAX_BYTES`, UTF-8, YAML
through a ``yaml.SafeLoader`` that refuses duplicate keys, an expanded size (aliases counted as
many times as they are used) of at most :data:`MAX_NODES` values, and no empty file. Every refusal
is a :class:`ParamsError` of one line naming the file (and the line, where YAML gives one)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # 1 MB: a parameter file is a few lines
MAX_NODES = 100_000  # values after alias expansion: a grid of a few hundred points is far below


class ParamsError(ValueError):
    """Invalid parameters. The message is one line per offending file: ``<file>: <key>: <why>``."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python objects) that refuses a key repeated in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _expanded_size(value: Any, limit: int) -> int:
    """The number of values in ``value`` with shared (aliased) parts counted each time they are
    used; stops counting past ``limit``."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def load_yaml(path: Path, label: str) -> Any:
    """The YAML value in ``path``, read strictly (see the module docstring)."""
    if not path.is_file():
        raise ParamsError(f"{label}: file not found" if not path.exists() else f"{label}: not a regular file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ParamsError(f"{label}: {size} bytes; a parameter file may have at most {MAX_BYTES} (1 MB)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ParamsError(f"{label}: not UTF-8 text (byte {exc.start}, line {line})") from None
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise ParamsError(f"{label}: the file is empty")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{label}: invalid YAML{where}: {problem}") from None
    if _expanded_size(data, MAX_NODES) > MAX_NODES:
        raise ParamsError(f"{label}: more than {MAX_NODES} values once its aliases are expanded; "
                          "write the values out or use fewer")
    return data
