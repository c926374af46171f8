"""What every workload kind shares: the Kind base class, its Target and Outcome, placeholders,
the timer around an argv, and the one mapping of agent/node errors.

A kind (a module of this package, listed in the registry `testbed.scenario.kinds.KINDS`) declares
  - `spec_type`: a frozen dataclass of its own YAML keys (parsed strictly, errors name file,
    line and field), next to the keys every workload has (name, kind, arrival, placement, ...);
  - `templates(spec)`: the strings that may hold ${placeholders}, so they are checked up front;
  - `session(target, timeout)`: what one client holds for the life of a unit (the node itself,
    or an agent session);
  - `prepare(...)`: optional work once per unit on the placement's `create_on` node;
  - `invoke(...)`: one invocation, returning an Outcome (remote wall time, time measured on the
    node when the kind can, exit code, the result object, error);
  - `check(spec, values)`: optional, the problems of the values the placeholders take in a
    (mode, workload) or a set-up step, found before anything runs (e.g. ${restore} = critu).
A kind raises Failure when the node or the agent itself fails: the run then stops cleanly.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NoReturn, TypeVar, cast

from tbproto.jsontypes import Json, JsonObject

from testbed.access.agent import AgentError, Exchange, Exchanger
from testbed.access.node import Node, Result
from testbed.config.yamlfile import Document, KeyPath, Yaml, from_mapping
from testbed.errors import NodeError, NodeTimeout

PLACEHOLDER_RE = re.compile(r"\$(?:\$|\{([^}]*)\})")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")  # \Z: $ would allow a trailing newline
# Runs the workload's argv unchanged ("$@") and reports the node's own clock around it on
# stderr, so the time outside the function (transport, executor) can be told apart.
TIMER = 's=$(date +%s%N); "$@"; rc=$?; e=$(date +%s%N); printf "\\n@@cxltb-timer %s %s\\n" "$s" "$e" >&2; exit $rc'
_TIMER_RE = re.compile(r"\n?@@cxltb-timer (\d+) (\d+)\n?$")

SpecT = TypeVar("SpecT")
SessionT = TypeVar("SessionT")


class Failure(NodeError):
    """The node or the agent failed (unreachable, timed out, session lost): the run stops."""


# What a kind needs of an agent session: one exchange (JSON in, the result and the agent's own
# time for the op out). AgentClient has it; test fakes too.
Agent = Exchanger


@dataclass(frozen=True)
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
    result: JsonObject | None = None  # the JSON object the function or the agent answered
    error: str | None = None
    output: str | None = None  # tail of the output when it failed
    guest_ms: float | None = None  # the agent's own time for the whole op, when its reply carries it


# --- placeholders ---------------------------------------------------------------------------

def placeholders(text: str) -> list[str]:
    """Names used as ${name} in text ($$ is a literal $)."""
    return [m.group(1) for m in PLACEHOLDER_RE.finditer(text) if m.group(1) is not None]


def substitute(text: str, values: Mapping[str, object]) -> str:
    def one(m: re.Match[str]) -> str:
        return "$" if m.group(1) is None else str(values[m.group(1)])

    return PLACEHOLDER_RE.sub(one, text)


def substitute_value(value: Json, values: Mapping[str, object]) -> Json:  # JSON-like data in and out
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


def template_strings(value: object, kp: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    """(key path, string) for every string inside JSON-like data, for `Kind.templates`."""
    if isinstance(value, str):
        yield kp, value
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from template_strings(v, (*kp, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from template_strings(v, (*kp, str(k)))


# --- output ---------------------------------------------------------------------------------

def parse_result(stdout: str) -> JsonObject | None:
    """The JSON object on stdout's last non-empty line, if there is one."""
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    if not lines or not lines[-1].lstrip().startswith("{"):
        return None
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def short(text: str, n: int) -> str:
    """text on one line, at most n characters."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def tail(text: str, n: int = 5) -> str:
    """The last n lines of text (what a failed invocation records of its output)."""
    return "\n".join(text.strip().splitlines()[-n:])


# --- errors ---------------------------------------------------------------------------------

def node_failure(exc: BaseException, what: str) -> NoReturn:
    """Raise the Failure for a node or session error (the run stops); other exceptions go on."""
    if isinstance(exc, NodeTimeout):
        raise Failure(f"{what}: {exc}") from exc
    if isinstance(exc, NodeError):  # the node's own message names the node
        raise Failure(str(exc)) from exc
    if isinstance(exc, TimeoutError | OSError | EOFError | ValueError):  # socket timeout, closed channel, garbage
        raise Failure(f"{what}: {exc or type(exc).__name__}") from exc
    raise exc


def refused(exc: BaseException, what: str, ms: float) -> Outcome:
    """The one mapping of an error from an agent call: the agent answered an error (the
    invocation failed, the run goes on) -> a failed Outcome; the node or the session failed ->
    Failure (the run stops); anything else is a bug and propagates."""
    if isinstance(exc, AgentError):
        return Outcome(False, ms, error=str(exc))
    node_failure(exc, what)


def call_agent(agent: Agent, op: str, args: Mapping[str, object]) -> tuple[Outcome | None, Exchange | None, float]:
    """One agent request: (None, the exchange, ms), or (the failed Outcome, None, ms) when the
    agent answered an error; Failure when the node or session fails."""
    t0 = time.perf_counter()
    try:
        ex = agent.exchange(op, dict(args))
    except Exception as exc:
        ms = (time.perf_counter() - t0) * 1e3
        return refused(exc, f"agent {op}", ms), None, ms
    return None, ex, (time.perf_counter() - t0) * 1e3


def run_argv(node: Node, argv: list[str], timeout: float) -> tuple[Result, float, float | None, str]:
    """Run argv under the timer; returns (result, remote_ms, function_ms, stderr without marker)."""
    t0 = time.perf_counter()
    what = f"{node.name}: {short(shlex.join(argv), 80)}"
    try:
        r = node.run(["sh", "-c", TIMER, "sh", *argv], check=False, timeout=timeout)
    except NodeTimeout as exc:
        raise Failure(f"{what}: timed out after {timeout:g}s") from exc
    except NodeError as exc:  # the node's own message repeats the whole command: keep the cause
        raise Failure(f"{what}: {short(str(exc.__cause__ or exc), 300)}") from exc
    except (TimeoutError, OSError, EOFError) as exc:
        raise Failure(f"{what}: {exc or type(exc).__name__}") from exc
    remote_ms = (time.perf_counter() - t0) * 1e3
    m = _TIMER_RE.search(r.stderr or "")
    function_ms = (int(m.group(2)) - int(m.group(1))) / 1e6 if m else None
    stderr = (r.stderr or "")[: m.start()] if m else (r.stderr or "")
    return r, remote_ms, function_ms, stderr


# --- sessions -------------------------------------------------------------------------------

class agent_session(AbstractContextManager[Agent]):
    """An agent session on the target, checked with a ping before it is handed out (its
    start-up is then not counted in the first invocation's latency); a failure to open it is a
    Failure with the node's name, and whatever was opened is closed again."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.stack = ExitStack()

    def __enter__(self) -> Agent:
        with ExitStack() as opening:
            try:
                agent = opening.enter_context(self.target.agent(self.timeout))
                agent.exchange("ping")
            except NodeError as exc:
                raise Failure(str(exc)) from exc
            except Exception as exc:
                raise Failure(f"{self.target.name}: cannot start the agent: {exc or type(exc).__name__}") from exc
            self.stack = opening.pop_all()  # opened and answering: kept until __exit__
        return agent

    def __exit__(self, *exc: object) -> None:
        try:
            self.stack.close()
        except Exception:  # noqa: S110 - the session is being dropped anyway
            pass


# --- the base class -------------------------------------------------------------------------

class Kind(ABC, Generic[SpecT, SessionT]):
    """A workload kind over its spec type and the session one client holds (a Node, an Agent)."""

    name: ClassVar[str]
    spec_type: ClassVar[type[Any]]  # SpecT (a ClassVar cannot name a type variable)

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Yaml]) -> SpecT:
        spec: SpecT = from_mapping(doc, self.spec_type, raw, kp)
        return spec

    def templates(self, spec: SpecT) -> Iterator[tuple[KeyPath, str]]:
        """(key path relative to the workload, string) for every string with placeholders."""
        return iter(())

    def session(self, target: Target, timeout: float) -> AbstractContextManager[SessionT]:
        # The default session is the node itself; a kind whose session is not a Node overrides this.
        return nullcontext(cast(SessionT, target.node))

    def check(self, spec: SpecT, values: Mapping[str, object]) -> Iterator[tuple[KeyPath, str]]:
        """(key path relative to the workload, message) for every value that cannot work; values
        holds the parameters known before the run (not the per-invocation built-ins)."""
        return iter(())

    def attach(self, targets: Mapping[str, Target], addresses: Mapping[str, str]) -> None:
        """The run's nodes (and their addresses on the node network), once connected: for a kind
        whose invocation reaches a node besides its own (a migration's destination)."""

    def has_prepare(self, spec: SpecT) -> bool:
        return False

    def prepare(self, session: SessionT, spec: SpecT, values: Mapping[str, object], timeout: float) -> Outcome:
        raise NotImplementedError(f"kind {self.name} has no prepare step")

    @abstractmethod
    def invoke(self, session: SessionT, spec: SpecT, values: Mapping[str, object], timeout: float) -> Outcome: ...


# The registry holds kinds of different spec and session types; the spec a kind parsed and the
# session it opened go back to that same kind, so the executor need not know their types.
AnyKind = Kind[Any, Any]
