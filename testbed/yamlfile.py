"""Parse once: YAML text to frozen dataclasses, with file:line for every error.

The data is read with yaml.safe_load; a second pass with yaml.compose (same safe
loader) maps every key path to its line, so errors can name file, line and field.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from testbed.errors import ConfigError

T = TypeVar("T")
KeyPath = tuple[str | int, ...]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class Size(int):
    """A byte count written as 512MiB, 4GiB, 1G or a plain integer of bytes."""

    @classmethod
    def parse(cls, value: object) -> Size:
        if isinstance(value, bool):
            raise ValueError("expected a size such as 512MiB or 4GiB")
        if isinstance(value, int):
            return cls(value)
        if isinstance(value, str):
            m = _SIZE_RE.match(value)
            if m:
                unit = (m.group(2) or "").upper()[:1] if (m.group(2) or "").upper() != "B" else "B"
                return cls(int(m.group(1)) * _SIZE_UNITS[unit])
        raise ValueError(f"expected a size such as 512MiB or 4GiB, got {value!r}")

    def human(self) -> str:
        for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if self >= mult and self % mult == 0:
                return f"{self // mult}{unit}"
        return f"{int(self)}B"


@dataclasses.dataclass(frozen=True)
class Document:
    """A parsed YAML document plus the line of every key path."""

    path: str
    data: Any
    lines: Mapping[KeyPath, int]

    def line(self, keypath: KeyPath) -> int | None:
        # Fall back to the nearest parent that has a known line.
        kp = keypath
        while True:
            if kp in self.lines:
                return self.lines[kp]
            if not kp:
                return None
            kp = kp[:-1]

    def error(self, keypath: KeyPath, message: str) -> ConfigError:
        return ConfigError(self.path, self.line(keypath), dotted(keypath), message)


def dotted(keypath: KeyPath) -> str:
    out = ""
    for part in keypath:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _index_lines(node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            kp = (*prefix, key)
            lines[kp] = key_node.start_mark.line + 1
            _index_lines(value_node, kp, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*prefix, i), lines)


def load_document(path: Path | str, text: str | None = None) -> Document:
    name = str(path)
    try:
        if text is None:
            text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(name, None, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, None, "", f"cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(name, line, "", f"invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, None, "", f"invalid YAML: {exc}") from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return Document(name, data, lines)


def _kind(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def convert(doc: Document, tp: Any, value: Any, keypath: KeyPath) -> Any:
    """Convert a safe-loaded value into type tp, strictly (unknown keys are errors)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None and len(non_none) < len(args):
            return None
        errors: list[str] = []
        for alt in non_none:
            try:
                return convert(doc, alt, value, keypath)
            except ConfigError as exc:
                errors.append(exc.message)
        raise doc.error(keypath, errors[-1] if len(errors) == 1 else "; or ".join(errors))
    if origin in (tuple, list):
        item_tp = args[0]
        if not isinstance(value, list):
            raise doc.error(keypath, f"expected a list, got {type(value).__name__}")
        items = [convert(doc, item_tp, v, (*keypath, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_mapping(doc, tp, value, keypath)
    if tp is Size:
        try:
            return Size.parse(value)
        except ValueError as exc:
            raise doc.error(keypath, str(exc)) from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise doc.error(keypath, f"expected {_kind(tp)}, got {value!r}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise doc.error(keypath, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise doc.error(keypath, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise doc.error(keypath, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise doc.error(keypath, f"expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported field type {tp!r}")


def from_mapping(doc: Document, cls: type[T], value: Any, keypath: KeyPath) -> T:
    """Build dataclass cls from a mapping. Field metadata 'key' renames a YAML key."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise doc.error(keypath, f"expected a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in value:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise doc.error((*keypath, str(key)), f"unknown key (known keys: {known})")
    kwargs: dict[str, Any] = {}
    for key, field in fields.items():
        if key in value:
            kwargs[field.name] = convert(doc, hints[field.name], value[key], (*keypath, key))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise doc.error(keypath, f"missing required key '{key}'")
    return cls(**kwargs)
