"""The `agent` kind: one JSON-lines request to `tbagent serve`; a client keeps one agent
session per unit."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

from tbproto.jsontypes import Json

from testbed.config.yamlfile import Document, KeyPath, Yaml, from_mapping, string_keys
from testbed.scenario.kinds.base import (
    Agent,
    Kind,
    Outcome,
    Target,
    agent_session,
    call_agent,
    substitute,
    substitute_value,
    template_strings,
)


@dataclass(frozen=True)
class AgentSpec:
    op: str
    args: Json = None  # a mapping of the op's arguments: JSON, sent as it is (after substitution)


class AgentKind(Kind[AgentSpec, Agent]):
    """One JSON-lines request to `tbagent serve`; a client keeps one agent session per unit."""

    name = "agent"
    spec_type = AgentSpec

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Yaml]) -> AgentSpec:
        spec: AgentSpec = from_mapping(doc, AgentSpec, raw, kp)
        if spec.args is not None and not isinstance(spec.args, dict):
            raise doc.error((*kp, "args"), f"expected a mapping of the op's arguments, got {type(spec.args).__name__}")
        string_keys(doc, (*kp, "args"), spec.args)  # sent as keyword arguments
        if not spec.op:
            raise doc.error((*kp, "op"), "must name an agent op (e.g. ping, info, store.list)")
        return spec

    def templates(self, spec: AgentSpec) -> Iterator[tuple[KeyPath, str]]:
        yield ("op",), spec.op
        yield from template_strings(spec.args or {}, ("args",))

    def session(self, target: Target, timeout: float) -> AbstractContextManager[Agent]:
        return agent_session(target, timeout)

    def invoke(self, session: Agent, spec: AgentSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        op = substitute(spec.op, values)
        args = substitute_value(spec.args or {}, values)
        failed, ex, remote_ms = call_agent(session, op, args)
        if ex is None:
            return failed or Outcome(False, remote_ms, error=f"agent {op}: no reply")
        result = ex.result if isinstance(ex.result, dict) else {"value": ex.result}
        return Outcome(True, remote_ms, None, None, result, guest_ms=ex.op_ms)
