"""Parse once: YAML text to frozen dataclasses, with file:line for every error.

The data is read with yaml.safe_load; a second pass with yaml.compose (same safe
loader) maps every key path to its line, so errors can name file, line and field.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from testbed.errors import ConfigError

T = TypeVar("T")
Yaml = Any  # a safe-loaded YAML value before convert() checks it against a dataclass field
KeyPath = tuple[str | int, ...]

# ASCII digits only: \d would take any Unicode digit; at most 20 digits, so int() stays cheap.
_SIZE_RE = re.compile(r"^\s*([0-9]{1,20})\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# Far beyond any host, small enough that sums and GiB divisions stay exact floats.
MAX_SIZE = 1 << 50


class Size(int):
    """A byte count written as 512MiB, 4GiB, 1G or a plain integer of bytes."""

    @classmethod
    def parse(cls, value: object) -> Size:
        if isinstance(value, bool):
            raise ValueError("expected a size such as 512MiB or 4GiB")
        if isinstance(value, int):
            return cls._bounded(value)
        if isinstance(value, str):
            m = _SIZE_RE.match(value)
            if m:
                unit = (m.group(2) or "").upper()[:1] if (m.group(2) or "").upper() != "B" else "B"
                return cls._bounded(int(m.group(1)) * _SIZE_UNITS[unit])
        raise ValueError(f"expected a size such as 512MiB or 4GiB, got {_short(value)}")

    @classmethod
    def _bounded(cls, value: int) -> Size:
        if not 0 <= value <= MAX_SIZE:
            raise ValueError(f"must be between 0 and {cls(MAX_SIZE).human()}")
        return cls(value)

    def human(self) -> str:
        for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if self >= mult and self % mult == 0:
                return f"{self // mult}{unit}"
        return f"{int(self)}B"


@dataclasses.dataclass(frozen=True)
class Document:
    """A parsed YAML document plus the line of every key path."""

    path: str
    data: Yaml
    lines: Mapping[KeyPath, int]
    text: str = dataclasses.field(default="", repr=False, compare=False)  # as read: parsed and hashed once

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


def _short(value: object, limit: int = 60) -> str:
    """repr of a value for an error message, cut short: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dotted(keypath: KeyPath) -> str:
    out = ""
    for part in keypath:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# Bounds on what a file may make the loader do. A topology or scenario is a few hundred values
# a few levels deep; anything far beyond that is a mistake or an attack (alias bombs, deep
# nesting that would exhaust the Python stack, numbers that overflow floats or int parsing).
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000  # values after expanding aliases
MAX_NUMBER_CHARS = 40  # an integer or float as written
MAX_INT = 1 << 63
_MERGE_TAG = "tag:yaml.org,2002:merge"


class Marked(Protocol):
    """Where in the text a YAML node starts (PyYAML's Mark, of its Python or C parser)."""

    @property
    def line(self) -> int: ...


class Refused(Exception):
    """Input the loader will not accept: where (a YAML mark) and why."""

    def __init__(self, mark: Marked | None, message: str, keypath: KeyPath = ()) -> None:
        self.mark = mark
        self.message = message
        self.keypath = keypath
        super().__init__(message)

    @property
    def line(self) -> int | None:
        return self.mark.line + 1 if self.mark is not None else None


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses recursive aliases, alias expansion beyond MAX_NODES values,
    nesting beyond MAX_DEPTH, oversized integers and non-finite or overflowing floats."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.open_anchors: set[str] = set()
        self.sizes: dict[int, int] = {}  # id(node) -> values in it once aliases are expanded

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            # An alias of an anchor still being composed makes a cycle (`a: &r [*r]`).
            if event.anchor in self.open_anchors:
                raise Refused(event.start_mark, f"recursive alias *{event.anchor}")
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Refused(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self.open_anchors.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
            self.open_anchors.discard(anchor or "")
        if node is not None:
            self._count(node)
        return node

    def _count(self, node: yaml.Node) -> None:
        # Children are composed first, so their sizes are known; an alias is counted in full
        # every time it is used, which is what the consumers of the data will walk.
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        size = 1 + sum(self.sizes.get(id(c), 1) for c in children)
        if size > MAX_NODES:
            raise Refused(node.start_mark, f"aliases expand to more than {MAX_NODES} values")
        self.sizes[id(node)] = size

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(str(node.value)) > MAX_NUMBER_CHARS:
            raise Refused(node.start_mark, f"integer too long (more than {MAX_NUMBER_CHARS} characters)")
        value: int = super().construct_yaml_int(node)
        if not -MAX_INT < value < MAX_INT:
            raise Refused(node.start_mark, "integer out of range (at most 2**63 - 1)")
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        if len(str(node.value)) > MAX_NUMBER_CHARS:
            raise Refused(node.start_mark, f"number too long (more than {MAX_NUMBER_CHARS} characters)")
        value: float = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise Refused(node.start_mark, f"not a finite number: {node.value}")
        return value

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> datetime.date:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError):  # 2024-13-45 matches the timestamp pattern
            raise Refused(node.start_mark, f"not a valid date: {node.value}") from None


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _BoundedLoader.construct_yaml_float)
_BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp", _BoundedLoader.construct_yaml_timestamp)


def _index_lines(loader: _BoundedLoader, node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int]) -> None:
    """Record the line of every key path; refuse duplicate and non-string keys (where they are)."""
    lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *base`: its keys land in this mapping
                _index_lines(loader, value_node, prefix, lines)
                continue
            key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                what = "a list or mapping" if key is None and not isinstance(key_node, yaml.ScalarNode) else repr(key)
                raise Refused(key_node.start_mark, f"a key must be a string, got {what} (quote it)", prefix)
            kp = (*prefix, key)
            if key in first:
                raise Refused(key_node.start_mark, f"duplicate key (first on line {first[key]})", kp)
            first[key] = key_node.start_mark.line + 1
            lines[kp] = key_node.start_mark.line + 1
            _index_lines(loader, value_node, kp, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(loader, item, (*prefix, i), lines)


def _compose(text: str) -> tuple[Yaml, dict[KeyPath, int]]:
    """Parse once with the bounded loader: the data and the line of every key path."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        if node is None:
            return None, lines
        _index_lines(loader, node, (), lines)
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def load_value(text: str) -> Yaml:
    """A value given on the command line (--set), under the same bounds as a file."""
    if len(text) > MAX_FILE_BYTES:
        raise Refused(None, f"longer than {MAX_FILE_BYTES} characters")
    return _compose(text)[0]


def read_regular(path: Path | str, limit: int = MAX_FILE_BYTES, what: str = "file") -> str:
    """The text of a regular file of at most `limit` bytes. A FIFO, device or directory is
    refused before it is opened (opening a FIFO blocks until a writer comes)."""
    name = str(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(name, None, "", f"not a regular file (a {what} must be a plain file)")
        # O_NONBLOCK: should the path have been swapped for a FIFO since the stat, open returns
        # at once and the fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(name, None, "", f"{what} not found") from None
    except OSError as exc:
        raise ConfigError(name, None, "", f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(name, None, "", f"not a regular file (a {what} must be a plain file)")
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise ConfigError(name, None, "", f"cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ConfigError(name, None, "", f"larger than {limit // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(name, None, "", f"not UTF-8 text (byte {exc.start})") from None


def _char(character: object) -> str:
    """The character a ReaderError names (an int for text, a byte for bytes), escaped."""
    return repr(chr(character)) if isinstance(character, int) else repr(character)


def load_document(path: Path | str, text: str | None = None) -> Document:
    name = str(path)
    if text is None:
        text = read_regular(path)
    elif len(text) > MAX_FILE_BYTES:
        raise ConfigError(name, None, "", f"larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        data, lines = _compose(text)
    except Refused as exc:
        raise ConfigError(name, exc.line, dotted(exc.keypath), exc.message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(name, line, "", f"invalid YAML: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:  # a control character: the reader knows the offset only
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(name, line, "", f"invalid YAML: {exc.reason} ({_char(exc.character)}; control characters "
                          "may be written as \\e, \\0, ... in a double-quoted string)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, None, "", f"invalid YAML: {exc}") from None
    return Document(name, data, lines, text)


def _kind(tp: object) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def convert(doc: Document, tp: object, value: Yaml, keypath: KeyPath) -> Yaml:
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
            raise doc.error(keypath, f"expected {_kind(tp)}, got {_short(value)}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise doc.error(keypath, f"expected true or false, got {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise doc.error(keypath, f"expected an integer, got {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise doc.error(keypath, f"expected a number, got {_short(value)}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            number = math.inf
        if not math.isfinite(number):
            raise doc.error(keypath, f"expected a finite number, got {_short(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise doc.error(keypath, f"expected a string, got {_short(value)}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported field type {tp!r}")


def string_keys(doc: Document, keypath: KeyPath, value: Yaml) -> None:
    """Refuse a non-string key anywhere in free-form data: such data is sent as JSON keyword
    arguments and hashed with sorted keys, where null or 1 next to "a" fails far from the file."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise doc.error(keypath, f"a key must be a string, got {_short(k)} (quote it)")
            string_keys(doc, (*keypath, k), v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            string_keys(doc, (*keypath, i), v)


def from_mapping(doc: Document, cls: type[T], value: Yaml, keypath: KeyPath) -> T:
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
    kwargs: dict[str, Yaml] = {}
    for key, field in fields.items():
        if key in value:
            kwargs[field.name] = convert(doc, hints[field.name], value[key], (*keypath, key))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise doc.error(keypath, f"missing required key '{key}'")
    return cls(**kwargs)
