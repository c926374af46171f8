"""JSON decoding with bounds, for text that another host or another process controls.

json.loads recurses once per nesting level, so a few thousand brackets raise RecursionError
(not ValueError) and deep-but-legal values make every later recursive walk expensive. The
nesting depth and the size are checked before decoding, so a hostile input costs one linear
scan and always ends in ValueError."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbproto.jsontypes import Json

_OPEN = frozenset("[{")
_CLOSE = frozenset("]}")


def depth(text: str) -> int:
    """Deepest bracket nesting of `text`, ignoring brackets inside JSON strings."""
    deepest = level = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in _OPEN:
            level += 1
            deepest = max(deepest, level)
        elif ch in _CLOSE:
            level -= 1
    return deepest


def loads(data: str | bytes, max_bytes: int, max_depth: int) -> Json:
    """Decode `data`, raising ValueError if it is larger than `max_bytes`, nested deeper than
    `max_depth`, or not JSON."""
    if len(data) > max_bytes:
        raise ValueError(f"JSON text of {len(data)} bytes exceeds {max_bytes}")
    try:
        text = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ValueError(f"JSON text is not UTF-8: {exc}") from None
    # Few brackets cannot nest deeply: skip the per-character scan for ordinary requests.
    if sum(text.count(c) for c in _OPEN) > max_depth and (d := depth(text)) > max_depth:
        raise ValueError(f"JSON nesting depth {d} exceeds {max_depth}")
    try:
        return json.loads(text)
    except RecursionError:  # unreachable after the depth check; kept so a bound slip is not a crash
        raise ValueError("JSON nesting too deep") from None
