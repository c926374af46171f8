"""What a record's payload may hold. A valid checksum only proves that some head wrote the
bytes, and any head may be buggy or hostile: every field the store uses is checked here, once,
when a record is read, and a record that fails is reported and skipped by every operation."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeGuard

from tbagent import boundedjson
from tbagent.store.layout import EXTENT_ALIGN, MAX_PAYLOAD, MAX_SEQ, Kind

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject

MAX_DEPTH = 16  # a template's meta is a flat object in every writer we have; this leaves room
MAX_NAME = 255
EXTENT_KEYS = ("off", "len", "crc")


class RecordError(ValueError):
    """A record that cannot be used. `status` is what `check` reports for it."""

    def __init__(self, status: str, why: str) -> None:
        super().__init__(why)
        self.status = status


def _int(value: object) -> TypeGuard[int]:
    # bool is an int to Python, but true is not an offset
    return isinstance(value, int) and not isinstance(value, bool)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise RecordError("invalid", f"template name {name!r:.80} is not 1 to {MAX_NAME} printable characters")
    return name


def extent(e: Json, area: tuple[int, int]) -> dict[str, int]:
    """An extent {off, len, crc} lying inside `area` [start, end), page aligned."""
    if not isinstance(e, dict) or not all(_int(e.get(k)) for k in EXTENT_KEYS):
        raise RecordError("invalid", f"extent {e!r:.120} is not an object of integers {', '.join(EXTENT_KEYS)}")
    off, length, crc = (int(e[k]) for k in EXTENT_KEYS)
    start, end = area
    if off % EXTENT_ALIGN or not start <= off <= end or not 0 <= length <= end - off or not 0 <= crc < 1 << 32:
        raise RecordError("bad-extent", f"extent off={off:#x} len={length} lies outside [{start:#x}, {end:#x}) or is unaligned")
    return {"off": off, "len": length, "crc": crc}


def decode(kind: Kind, payload: bytes, section: tuple[int, int], nheads: int) -> JsonObject:
    """The payload of a record of `kind` written by a head whose data section is `section`."""
    try:
        data = boundedjson.loads(payload, MAX_PAYLOAD, MAX_DEPTH)
    except ValueError as exc:
        raise RecordError("corrupt", f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError("invalid", f"payload is a JSON {type(data).__name__}, not an object")
    check_name(data.get("name"))
    if kind is Kind.TEMPLATE:
        return _template(data, section)
    return _delete(data, nheads)


def _template(data: JsonObject, section: tuple[int, int]) -> JsonObject:
    extents, meta = data.get("extents"), data.get("meta", {})
    if not isinstance(extents, list):
        raise RecordError("invalid", "a template record has no list of extents")
    if not isinstance(meta, dict):
        raise RecordError("invalid", "a template record's meta is not an object")
    return {**data, "extents": [extent(e, section) for e in extents], "meta": meta}


def _delete(data: JsonObject, nheads: int) -> JsonObject:
    head, seq = data.get("head"), data.get("seq")
    if not (_int(head) and _int(seq) and 0 <= head < nheads and 1 <= seq <= MAX_SEQ):
        raise RecordError("invalid", f"a delete record names head {head!r:.40}, seq {seq!r:.40}: out of range")
    return data
