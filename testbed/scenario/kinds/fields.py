"""What the restore and sandbox kinds share: the values their specs take (checked when the
scenario is parsed, and again for the values of ${placeholders} before anything runs) and one
agent request with its errors sorted into a refusal (a failed invocation) or a Failure."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from tbproto import catalog
from tbproto.codec import decode_as, encode
from tbproto.jsontypes import Json, JsonObject
from tbproto.ops import OPS, Mode, Placement, Policy

from testbed.access.agent import AgentError, Exchanger
from testbed.config.yamlfile import Document, KeyPath, Yaml, string_keys
from testbed.scenario.kinds.base import node_failure, placeholders, substitute_value

MODES = tuple(m.value for m in Mode)
SANDBOX_MODES = (Mode.CRIU.value, Mode.TEMPLATE.value)  # what restores into sandboxes support
SANDBOXES = tuple(p.value for p in Placement)
NO_SANDBOX = ("", "none")
POLICIES = tuple(p.value for p in Policy)
SNAPSHOT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,40}\Z")


def known_functions() -> tuple[str, ...]:
    """The function catalogue (tbproto's; the agent checks it is its own when a session opens)."""
    return catalog.names()


def number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


# --- validation shared by parse (literal values) and check (values of the placeholders) --------

def problem(what: str, value: object) -> str | None:
    """Why `value` cannot be the `what` of a spec, or None."""
    if what == "snapshot":
        if not isinstance(value, str) or not SNAPSHOT_RE.match(value):
            return f"snapshot name {value!r}: 1-40 of [A-Za-z0-9._:-]"
    elif what == "mode":
        if value not in MODES:
            return f"mode {value!r} is not one of {', '.join(MODES)}"
    elif what == "sandbox":
        if value not in (*SANDBOXES, *NO_SANDBOX):
            return f"sandbox {value!r} is not one of {', '.join(SANDBOXES)}, none"
    elif what == "function":
        known = known_functions()
        if known and value not in known:
            return f"unknown function {value!r} (functions: {', '.join(known)})"
    elif what in ("count", "size"):
        n = as_int(value)
        if n is None or n < (0 if what == "size" else 1):
            return f"{what} must be an integer of at least {0 if what == 'size' else 1}, got {value!r}"
    return None


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def resolve(text: Json, values: Mapping[str, object]) -> Json:
    """The value of a template if every placeholder in it is known, else None (not checkable)."""
    if not isinstance(text, str):
        return text
    if any(name not in values for name in placeholders(text)):
        return None
    return substitute_value(text, values)


def check_fields(spec: object, values: Mapping[str, object], fields: tuple[str, ...]) -> Iterator[tuple[KeyPath, str]]:
    for what in fields:
        raw = getattr(spec, what)
        if raw is None or (isinstance(raw, str) and not placeholders(raw)):
            continue  # absent, or a literal already checked by parse
        value = resolve(raw, values)
        if value is None:
            continue
        if (found := problem(what, value)) is not None:
            yield (what,), f"{found} (from {raw})"


def parse_common(doc: Document, kp: KeyPath, raw: dict[str, Yaml], action: str,
                  keys: dict[str, tuple[tuple[str, ...], tuple[str, ...]]], always: tuple[str, ...]) -> None:
    """Keys an action does not read are errors; keys it needs must be there."""
    required, optional = keys[action]
    allowed = set(always) | set(required) | set(optional)
    for key in raw:
        if key not in allowed:
            raise doc.error((*kp, str(key)), f"not used by action {action} (it takes {', '.join(sorted(allowed))})")
    for key in required:
        if raw.get(key) is None:
            raise doc.error(kp, f"action {action} needs '{key}'")


def check_literals(doc: Document, kp: KeyPath, spec: object, fields: tuple[str, ...]) -> None:
    for what in fields:
        value = getattr(spec, what)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            found = problem(what, value)
        elif isinstance(value, str) and not placeholders(value):
            found = problem(what, value)
        elif isinstance(value, str):
            continue
        else:
            found = f"expected a string, got {value!r}"
        if found is not None:
            raise doc.error((*kp, what), found)


def mapping(doc: Document, kp: KeyPath, value: Yaml, what: str) -> JsonObject | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise doc.error(kp, f"expected a mapping ({what}), got {type(value).__name__}")
    string_keys(doc, kp, value)
    return dict(value)


def env_of(doc: Document, kp: KeyPath, value: Yaml) -> dict[str, str] | None:
    env = mapping(doc, kp, value, "environment variables of the function: NAME: value")
    if env is None:
        return None
    for k, v in env.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise doc.error((*kp, k), "not an environment variable name")
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise doc.error((*kp, k), f"expected a string or a number, got {v!r}")
    return {k: str(v) for k, v in env.items()}


# --- agent calls ------------------------------------------------------------------------------



class Refused(Exception):
    """The agent answered with an error (recorded as a failed invocation, the run goes on)."""

    def __init__(self, message: str, ms: float) -> None:
        super().__init__(message)
        self.ms = ms


@dataclass(frozen=True)
class Answer:
    result: Json  # JSON, decoded further by the caller with tbproto's types
    ms: float  # the host's wall time of the request
    agent_ms: float | None  # the agent's own time for the op


def request(agent: Exchanger, op: str, **args: Json) -> Answer:
    """One agent request; Refused when the agent answers an error, Failure when the session or
    the node fails."""
    return _exchange(agent, op, args, None)


def call(agent: Exchanger, req: object, timeout: float | None = None) -> Answer:
    """A typed request (a tbproto request object): the Answer's result is the op's reply type.
    Refused and Failure as for request(); ProtocolError when the reply does not decode."""
    op = next(o for o in OPS.values() if o.request is type(req))
    answer = _exchange(agent, op.name, encode(req), timeout)
    return Answer(decode_as(op.reply, answer.result, op.name), answer.ms, answer.agent_ms)


def _exchange(agent: Exchanger, op: str, args: JsonObject, timeout: float | None) -> Answer:
    t0 = time.perf_counter()
    try:
        ex = agent.exchange(op, args, timeout)
    except AgentError as exc:
        raise Refused(str(exc), (time.perf_counter() - t0) * 1e3) from None
    except Exception as exc:
        node_failure(exc, f"agent {op}")
    return Answer(ex.result, (time.perf_counter() - t0) * 1e3, ex.op_ms)
