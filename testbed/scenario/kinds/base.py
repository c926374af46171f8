"""Workload kinds: what one invocation (or one set-up step) does on a node.

A kind is registered by name in KINDS and declares
  - `spec_type`: a frozen dataclass of its own YAML keys (parsed strictly, errors name file,
    line and field), next to the keys every workload has (name, kind, arrival, placement, ...);
  - `templates(spec)`: the strings that may hold ${placeholders}, so they are checked up front;
  - `session(target, timeout)`: what one client holds for the life of a unit (the node itself,
    or an agent session over the node's SSH connection);
  - `prepare(...)`: optional work once per unit on the placement's `create_on` node;
  - `invoke(...)`: one invocation, returning an Outcome (remote wall time, time measured on the
    node when the kind can, exit code, the result object, error);
  - `check(spec, values)`: optional, the problems of the values the placeholders take in a
    (mode, workload) or a set-up step, found before anything runs (e.g. ${restore} = critu).
A kind raises Failure when the node or the agent itself fails: the run then stops cleanly.

Kinds here: `exec` (an argv through the Node interface) and `agent` (a JSON-lines request to
`tbagent serve`). testbed.scenario.kinds.restore registers `restore` (function snapshots in the
CXL store: take one on create_on, restore it in a mode given by a parameter such as ${restore} =
cold | criu | lazy | template, count identical pages) and `sandbox` (the sandbox pool:
repurposed against fresh crun sandboxes, pool sizing as a set-up step).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from testbed.access.node import Node
from testbed.config.yamlfile import Document, KeyPath, from_mapping, string_keys
from testbed.errors import NodeError

PLACEHOLDER_RE = re.compile(r"\$(?:\$|\{([^}]*)\})")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")  # \Z: $ would allow a trailing newline
# Runs the workload's argv unchanged ("$@") and reports the node's own clock around it on
# stderr, so the time outside the function (transport, executor) can be told apart.
TIMER = 's=$(date +%s%N); "$@"; rc=$?; e=$(date +%s%N); printf "\\n@@cxltb-timer %s %s\\n" "$s" "$e" >&2; exit $rc'
_TIMER_RE = re.compile(r"\n?@@cxltb-timer (\d+) (\d+)\n?$")


class Failure(NodeError):
    """The node or the agent failed (unreachable, timed out, session lost): the run stops."""


class Agent(Protocol):
    def request(self, op: str, **args: Any) -> Any: ...


@dataclass
class Target:
    """A node as the kinds see it: the Node interface plus a way to open agent sessions."""

    node: Node
    agent: Callable[[float], AbstractContextManager[Agent]]

    @property
    def name(self) -> str:
        return self.node.name


@dataclass(frozen=True)
class Outcome:
    ok: bool
    remote_ms: float  # wall time of the remote call seen from the host: the invocation's latency
    function_ms: float | None = None  # time measured on the node around the function itself
    exit_code: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    output: str | None = None  # tail of the output when it failed


# --- placeholders ---------------------------------------------------------------------------

def placeholders(text: str) -> list[str]:
    """Names used as ${name} in text ($$ is a literal $)."""
    return [m.group(1) for m in PLACEHOLDER_RE.finditer(text) if m.group(1) is not None]


def substitute(text: str, values: Mapping[str, object]) -> str:
    def one(m: re.Match[str]) -> str:
        return "$" if m.group(1) is None else str(values[m.group(1)])

    return PLACEHOLDER_RE.sub(one, text)


def substitute_value(value: Any, values: Mapping[str, object]) -> Any:
    """Substitute inside JSON-like data; a string that is exactly ${name} takes the value's type."""
    if isinstance(value, str):
        m = PLACEHOLDER_RE.fullmatch(value)
        if m is not None and m.group(1) is not None:
            return values[m.group(1)]
        return substitute(value, values)
    if isinstance(value, list):
        return [substitute_value(v, values) for v in value]
    if isinstance(value, dict):
        return {k: substitute_value(v, values) for k, v in value.items()}
    return value


def _strings(value: Any, kp: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, str):
        yield kp, value
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _strings(v, (*kp, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, (*kp, str(k)))


# --- the registry -----------------------------------------------------------------------------

class Kind(ABC):
    name: ClassVar[str]
    spec_type: ClassVar[type[Any]]

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Any]) -> Any:
        return from_mapping(doc, self.spec_type, raw, kp)

    def templates(self, spec: Any) -> Iterator[tuple[KeyPath, str]]:
        """(key path relative to the workload, string) for every string with placeholders."""
        return iter(())

    def session(self, target: Target, timeout: float) -> AbstractContextManager[Any]:
        return nullcontext(target.node)

    def check(self, spec: Any, values: Mapping[str, object]) -> Iterator[tuple[KeyPath, str]]:
        """(key path relative to the workload, message) for every value that cannot work; values
        holds the parameters known before the run (not the per-invocation built-ins)."""
        return iter(())

    def has_prepare(self, spec: Any) -> bool:
        return False

    def prepare(self, session: Any, spec: Any, values: Mapping[str, object], timeout: float) -> Outcome:
        raise NotImplementedError(f"kind {self.name} has no prepare step")

    @abstractmethod
    def invoke(self, session: Any, spec: Any, values: Mapping[str, object], timeout: float) -> Outcome: ...


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


# --- exec -----------------------------------------------------------------------------------

class ResultFormat(StrEnum):
    AUTO = "auto"  # the last stdout line, if it is a JSON object
    JSON = "json"  # the last stdout line must be a JSON object, else the invocation failed
    NONE = "none"


@dataclass(frozen=True)
class ExecSpec:
    argv: tuple[str, ...]
    prepare: tuple[str, ...] | None = None  # once per unit on the create_on node
    result: ResultFormat = ResultFormat.AUTO


def parse_result(stdout: str) -> dict[str, Any] | None:
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    if not lines or not lines[-1].lstrip().startswith("{"):
        return None
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _tail(text: str, n: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def run_argv(node: Node, argv: list[str], timeout: float) -> tuple[Any, float, float | None, str]:
    """Run argv under the timer; returns (result, remote_ms, function_ms, stderr without marker)."""
    t0 = time.perf_counter()
    what = f"{node.name}: {_short(shlex.join(argv), 80)}"
    try:
        r = node.run(["sh", "-c", TIMER, "sh", *argv], check=False, timeout=timeout)
    except NodeError as exc:  # the node's own message repeats the whole command: keep the cause
        raise Failure(f"{what}: {_short(str(exc.__cause__ or exc), 300)}") from exc
    except (TimeoutError, OSError, EOFError) as exc:
        raise Failure(f"{what}: {exc or type(exc).__name__}") from exc
    except Exception as exc:
        if type(exc).__name__ == "CommandTimedOut":  # invoke's, raised by fabric
            raise Failure(f"{what}: timed out after {timeout:g}s") from exc
        raise
    remote_ms = (time.perf_counter() - t0) * 1e3
    m = _TIMER_RE.search(r.stderr or "")
    function_ms = (int(m.group(2)) - int(m.group(1))) / 1e6 if m else None
    stderr = (r.stderr or "")[: m.start()] if m else (r.stderr or "")
    return r, remote_ms, function_ms, stderr


class ExecKind(Kind):
    """Run an argv on the node; the result is the JSON object on stdout's last line, if any."""

    name = "exec"
    spec_type = ExecSpec

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Any]) -> Any:
        spec: ExecSpec = from_mapping(doc, ExecSpec, raw, kp)
        if not spec.argv:
            raise doc.error((*kp, "argv"), "needs at least the program to run")
        if spec.prepare is not None and not spec.prepare:
            raise doc.error((*kp, "prepare"), "needs at least the program to run (or leave prepare out)")
        return spec

    def templates(self, spec: Any) -> Iterator[tuple[KeyPath, str]]:
        yield from _strings(list(spec.argv), ("argv",))
        if spec.prepare:
            yield from _strings(list(spec.prepare), ("prepare",))

    def has_prepare(self, spec: Any) -> bool:
        return spec.prepare is not None

    def _run(self, node: Node, argv: tuple[str, ...], values: Mapping[str, object], timeout: float,
             fmt: ResultFormat) -> Outcome:
        r, remote_ms, function_ms, stderr = run_argv(node, [substitute(a, values) for a in argv], timeout)
        result = parse_result(r.stdout) if fmt is not ResultFormat.NONE else None
        ok = r.exit_code == 0
        error = None if ok else f"exit code {r.exit_code}"
        if ok and fmt is ResultFormat.JSON and result is None:
            ok, error = False, "no JSON object on the last line of stdout"
        return Outcome(ok, remote_ms, function_ms, r.exit_code, result, error,
                       None if ok else _tail(stderr or r.stdout))

    def prepare(self, session: Any, spec: Any, values: Mapping[str, object], timeout: float) -> Outcome:
        return self._run(session, spec.prepare, values, timeout, ResultFormat.AUTO)

    def invoke(self, session: Any, spec: Any, values: Mapping[str, object], timeout: float) -> Outcome:
        return self._run(session, spec.argv, values, timeout, spec.result)


# --- agent ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AgentSpec:
    op: str
    args: Any = None  # a mapping of the op's arguments


class AgentKind(Kind):
    """One JSON-lines request to `tbagent serve`; a client keeps one agent session per unit."""

    name = "agent"
    spec_type = AgentSpec

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Any]) -> Any:
        spec: AgentSpec = from_mapping(doc, AgentSpec, raw, kp)
        if spec.args is not None and not isinstance(spec.args, dict):
            raise doc.error((*kp, "args"), f"expected a mapping of the op's arguments, got {type(spec.args).__name__}")
        string_keys(doc, (*kp, "args"), spec.args)  # sent as keyword arguments
        if not spec.op:
            raise doc.error((*kp, "op"), "must name an agent op (e.g. ping, info, store.list)")
        return spec

    def templates(self, spec: Any) -> Iterator[tuple[KeyPath, str]]:
        yield ("op",), spec.op
        yield from _strings(spec.args or {}, ("args",))

    def session(self, target: Target, timeout: float) -> AbstractContextManager[Any]:
        return _agent_session(target, timeout)

    def invoke(self, session: Any, spec: Any, values: Mapping[str, object], timeout: float) -> Outcome:
        from testbed.access.agent import AgentError

        op = substitute(spec.op, values)
        args = substitute_value(spec.args or {}, values)
        t0 = time.perf_counter()
        try:
            reply = session.request(op, **args)
        except AgentError as exc:
            return Outcome(False, (time.perf_counter() - t0) * 1e3, error=str(exc))
        except NodeError as exc:
            raise Failure(str(exc)) from exc
        except (OSError, EOFError, ValueError) as exc:  # socket timeout, closed channel, garbage
            raise Failure(f"agent {op}: {exc or type(exc).__name__}") from exc
        remote_ms = (time.perf_counter() - t0) * 1e3
        return Outcome(True, remote_ms, None, None, reply if isinstance(reply, dict) else {"value": reply})


class _agent_session(AbstractContextManager[Any]):
    """Opens the agent lazily so a failure to start it is a Failure with the node's name."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.cm: AbstractContextManager[Agent] | None = None

    def __enter__(self) -> Agent:
        try:
            self.cm = self.target.agent(self.timeout)
            agent = self.cm.__enter__()
            # The agent process starts when the session opens: wait for it, so its start-up is
            # not counted in the first invocation's latency.
            agent.request("ping")
            return agent
        except NodeError as exc:
            raise Failure(str(exc)) from exc
        except Exception as exc:
            raise Failure(f"{self.target.name}: cannot start the agent: {exc or type(exc).__name__}") from exc

    def __exit__(self, *exc: object) -> None:
        if self.cm is not None:
            try:
                self.cm.__exit__(None, None, None)
            except Exception:  # noqa: S110 - the session is being dropped anyway
                pass


register(ExecKind())
register(AgentKind())

# The restore and sandbox kinds register themselves (they import this module's names).
import testbed.scenario.kinds.restore  # noqa: E402, F401
