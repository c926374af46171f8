"""The host-agent contract against a real agent: the requests in tests/unit/data/agent-transcript.json
(recorded from `tbagent serve` on a real node, through testbed.access.agent.AgentSession) are sent again
and every reply must equal the recorded one. The unit tests replay the same transcript against
the host side (tests/unit/test_agent_contract.py), so a change on either side fails a test.

CXLTB_RECORD_AGENT=1 rewrites the transcript from this run instead of comparing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from testbed.access.agent import AgentError, AgentSession
from testbed.ui.pytest_plugin import Testbed

REPO = Path(__file__).resolve().parents[2]
TRANSCRIPT = REPO / "tests" / "unit" / "data" / "agent-transcript.json"
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "one-node.yaml"))
# A fresh store, then every store op once, then the errors a caller can make. Deterministic:
# the device, the store layout and /etc/debian_version are the same on every run.
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("ping", {}),
    ("store.format", {"mhd": "mhd0", "slots": 64}),
    ("store.put", {"mhd": "mhd0", "name": "contract", "files": ["/etc/debian_version"], "meta": {"k": "v"}}),
    ("store.list", {"mhd": "mhd0"}),
    ("store.get", {"mhd": "mhd0", "name": "contract", "out": "/tmp/contract-out"}),
    ("store.check", {"mhd": "mhd0"}),
    ("store.delete", {"mhd": "mhd0", "name": "contract"}),
    ("store.get", {"mhd": "mhd0", "name": "contract"}),
    ("store.format", {"mhd": "mhd0", "bogus": 1}),
    ("no.such.op", {}),
]


def exchange(session: AgentSession, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """One request: the raw lines sent and received, and what the host made of the reply."""
    sent: list[bytes] = []
    received: list[bytes] = []
    write, readline = session.stdin.write, session.stdout.readline

    def record_write(data: bytes) -> int:
        sent.append(data)
        write(data)  # paramiko's channel file returns None
        return len(data)

    def record_readline(*a: Any) -> bytes:
        line: bytes = readline(*a)
        received.append(line)
        return line

    session.stdin.write, session.stdout.readline = record_write, record_readline
    try:
        try:
            outcome: dict[str, Any] = {"result": session.request(op, **args)}
        except AgentError as exc:
            outcome = {"error": exc.code}
    finally:
        session.stdin.write, session.stdout.readline = write, readline
    return {"request": b"".join(sent).decode(), "reply": b"".join(received).decode(), **outcome}


def test_real_agent_replies_match_the_recorded_transcript(testbed: Testbed) -> None:
    with AgentSession(testbed.node("node0"), timeout=120) as session:
        got = [exchange(session, op, args) for op, args in REQUESTS]
    if os.environ.get("CXLTB_RECORD_AGENT"):
        TRANSCRIPT.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"recorded {len(got)} exchanges into {TRANSCRIPT}")
    want = json.loads(TRANSCRIPT.read_text())
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == w, f"{w['request'].strip()}: recorded {w}, now {g}"
