"""The kinds' shared pieces: the registry, the one error mapping, the agent session's clean-up,
run_argv's typed timeout, and the guest's own time of an agent reply."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from testbed.access.agent import AgentError, Exchange
from testbed.access.node import Result
from testbed.errors import NodeError, NodeTimeout, Unreachable
from testbed.scenario.kinds import KINDS
from testbed.scenario.kinds.agent import AgentKind, AgentSpec
from testbed.scenario.kinds.base import Agent, Failure, Target, agent_session, refused, run_argv, tail, template_strings

from .fakenodes import NoFiles


class Node(NoFiles):
    def __init__(self, exc: BaseException | None = None) -> None:
        self.name, self.exc = "node0", exc

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        if self.exc is not None:
            raise self.exc
        return Result(self.name, tuple(argv), 0, "{}\n", "", 0.0)


class FakeAgent:
    def __init__(self, replies: dict[str, Any], op_ms: float | None = None) -> None:
        self.replies, self.op_ms = replies, op_ms  # op_ms: the agent's time, from the reply's envelope

    def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
        reply = self.replies[op]
        if isinstance(reply, BaseException):
            raise reply
        return Exchange(reply, self.op_ms)


def target(agent: FakeAgent, log: list[str]) -> Target:
    @contextlib.contextmanager
    def opener(timeout: float) -> Iterator[Agent]:
        log.append("open")
        try:
            yield agent
        finally:
            log.append("close")

    return Target(Node(), opener)


def test_registry_lists_every_kind_by_its_name() -> None:
    assert sorted(KINDS) == ["agent", "exec", "kv", "llm", "restore", "sandbox"]
    assert all(k.name == name for name, k in KINDS.items())


def test_refused_maps_agent_errors_to_outcomes_and_node_errors_to_failures() -> None:
    out = refused(AgentError("node0", "snap.run", "bad-args", "no"), "agent snap.run", 3.0)
    assert not out.ok and out.remote_ms == 3.0 and out.error is not None and "bad-args" in out.error
    with pytest.raises(Failure, match="node0: lost"):
        refused(Unreachable("node0: lost"), "agent x", 1.0)
    with pytest.raises(Failure, match="agent x: closed"):
        refused(EOFError("closed"), "agent x", 1.0)
    with pytest.raises(KeyError):  # a bug is not a node failure
        refused(KeyError("k"), "agent x", 1.0)


def test_agent_session_closes_what_it_opened_when_the_ping_fails() -> None:
    log: list[str] = []
    with pytest.raises(Failure, match="node0: gone"), agent_session(target(FakeAgent({"ping": NodeError("node0: gone")}), log), 5):
        pass
    assert log == ["open", "close"]
    log.clear()
    with pytest.raises(Failure, match="cannot start the agent: boom"), \
            agent_session(target(FakeAgent({"ping": RuntimeError("boom")}), log), 5):
        pass
    assert log == ["open", "close"]


def test_agent_session_keeps_the_session_open_until_exit() -> None:
    log: list[str] = []
    with agent_session(target(FakeAgent({"ping": {}}), log), 5) as agent:
        assert log == ["open"]
        assert agent.exchange("ping").result == {}
    assert log == ["open", "close"]


def test_run_argv_names_a_timeout_and_the_command() -> None:
    with pytest.raises(Failure, match=r"node0: sleep 9: timed out after 2s"):
        run_argv(Node(NodeTimeout("node0: timeout")), ["sleep", "9"], 2.0)
    with pytest.raises(Failure, match="node0: true: refused"):
        run_argv(Node(OSError("refused")), ["true"], 2.0)


def test_agent_kind_reads_the_guests_own_time() -> None:
    kind = AgentKind()
    out = kind.invoke(FakeAgent({"snap.run": {"x": 1}}, op_ms=12.5), AgentSpec("snap.run"), {}, 5)
    assert out.ok and out.guest_ms == 12.5 and out.result == {"x": 1}
    out = kind.invoke(FakeAgent({"ping": {"op_ms": 3.0}}), AgentSpec("ping"), {}, 5)
    assert out.guest_ms is None  # only the envelope's timing counts, not a key of the result
    out = kind.invoke(FakeAgent({"ping": AgentError("node0", "ping", "busy", "no")}), AgentSpec("ping"), {}, 5)
    assert not out.ok and out.error is not None and "busy" in out.error


def test_template_strings_and_tail() -> None:
    assert list(template_strings({"a": ["x", {"b": "y"}], "n": 1}, ("args",))) == [
        (("args", "a", 0), "x"), (("args", "a", 1, "b"), "y")]
    assert tail("1\n2\n3\n4\n5\n6\n7\n", 2) == "6\n7"
