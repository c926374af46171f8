"""Typed decoding of JSON values into frozen dataclasses, and back.

Both ends use it on what the other end sent: the agent on requests, the host on replies. A value
of the wrong shape is one ProtocolError naming the op and the field, never a KeyError or a
TypeError deeper down. Supported field types: str, int, float, bool, None, StrEnum subclasses,
X | None, list[X], tuple[X, ...], dict[str, X], nested frozen dataclasses, and Json (kept as is)."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import TypeVar

from tbproto.jsontypes import Json, JsonObject

T = TypeVar("T")


class ProtocolError(ValueError):
    """A request or reply that does not have its op's shape."""

    def __init__(self, op: str, field: str, message: str) -> None:
        self.op, self.field = op, field
        super().__init__(f"{op}: {field}: {message}")


@cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _as(tp: object, value: object, op: str, where: str, strict: bool) -> Json:
    """`value` checked (and converted: lists to tuples, ints to floats) as the type `tp`."""
    if tp is Json:  # a field typed Json (typing.Any): kept as it is
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        problems = []
        for alt in typing.get_args(tp):
            try:
                return _as(alt, value, op, where, strict)
            except ProtocolError as exc:
                problems.append(str(exc).rsplit(": ", 1)[-1])
        raise ProtocolError(op, where, " or ".join(problems))
    if tp is type(None):
        if value is None:
            return None
        raise ProtocolError(op, where, f"expected null, got {_kind(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ProtocolError(op, where, f"expected a boolean, got {_kind(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ProtocolError(op, where, f"expected an integer, got {_kind(value)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ProtocolError(op, where, f"expected a number, got {_kind(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ProtocolError(op, where, f"expected a string, got {_kind(value)}")
    if isinstance(tp, type) and issubclass(tp, enum.StrEnum):
        try:
            if not isinstance(value, str):
                raise ValueError
            return tp(value)
        except ValueError:
            known = ", ".join(m.value for m in tp)
            raise ProtocolError(op, where, f"{value!r:.40} is not one of {known}") from None
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ProtocolError(op, where, f"expected a list, got {_kind(value)}")
        item = typing.get_args(tp)[0]
        items = [_as(item, v, op, f"{where}[{i}]", strict) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(op, where, f"expected an object, got {_kind(value)}")
        item = typing.get_args(tp)[1]
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError(op, where, "object keys must be strings")
            out[k] = _as(item, v, op, f"{where}.{k}", strict)
        return out
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return decode(tp, value, op, where, strict=strict)
    raise TypeError(f"tbproto cannot decode the type {tp!r}")  # a bug in a type definition


def decode(cls: type[T], value: object, op: str, where: str = "args", *, strict: bool = True) -> T:
    """A `cls` made of the JSON object `value`. strict: a key `cls` does not have is an error
    (requests); otherwise it is ignored (replies: a newer agent may add fields)."""
    if not isinstance(value, Mapping):
        raise ProtocolError(op, where, f"expected an object, got {_kind(value)}")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"tbproto cannot decode the type {cls!r}")  # a bug in a type definition
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if strict and (extra := sorted(str(k) for k in value if k not in fields)):
        raise ProtocolError(op, f"{where}.{extra[0]}", f"unexpected field (known: {', '.join(fields) or 'none'})")
    kwargs: JsonObject = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _as(hints[name], value[name], op, f"{where}.{name}", strict)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(op, f"{where}.{name}", "missing")
    return cls(**kwargs)


def decode_as(tp: object, value: object, op: str, where: str = "result", *, strict: bool = False) -> Json:
    """`value` checked as the type expression `tp` (e.g. list[StoreEntry])."""
    return _as(tp, value, op, where, strict)


def encode(value: object) -> Json:
    """A dataclass (or a list, dict, enum, scalar of them) as JSON data. Fields that are None are
    left out: None means "not given" in every request."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(v) for f in dataclasses.fields(value) if (v := getattr(value, f.name)) is not None}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value
