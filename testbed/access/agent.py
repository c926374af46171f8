"""Host side of the guest agent: one SSH session per node running `tbagent serve`,
driven with versioned JSON-lines requests."""

from __future__ import annotations

import itertools
import json
from typing import Any

from testbed.access.node import GuestNode
from testbed.errors import NodeError

PROTOCOL = 1


class AgentError(NodeError):
    def __init__(self, node: str, op: str, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{node}: agent {op}: {code}: {message}")


class AgentSession:
    """A context manager: the agent process lives as long as the session."""

    def __init__(self, node: GuestNode, timeout: float = 300.0) -> None:
        self.node = node
        self.timeout = timeout
        self._ids = itertools.count(1)

    def __enter__(self) -> AgentSession:
        self.node.open()
        transport = self.node._conn.transport
        if transport is None:
            raise NodeError(f"{self.node.name}: no SSH transport")
        self.chan = transport.open_session(timeout=self.timeout)
        self.chan.settimeout(self.timeout)
        self.chan.exec_command("tbagent serve")
        self.stdin = self.chan.makefile_stdin("wb")
        self.stdout = self.chan.makefile("rb")
        return self

    def __exit__(self, *exc: object) -> None:
        self.chan.shutdown_write()
        self.chan.close()

    def request(self, op: str, **args: Any) -> Any:
        rid = next(self._ids)
        self.stdin.write((json.dumps({"v": PROTOCOL, "id": rid, "op": op, "args": args}) + "\n").encode())
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise NodeError(f"{self.node.name}: agent closed the session during {op}")
        reply = json.loads(line)
        if reply.get("v") != PROTOCOL or reply.get("id") != rid:
            raise NodeError(f"{self.node.name}: agent reply out of step: {reply}")
        if not reply["ok"]:
            raise AgentError(self.node.name, op, reply["error"]["code"], reply["error"]["message"])
        return reply["result"]
