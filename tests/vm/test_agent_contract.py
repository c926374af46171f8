"""The host-agent contract against a real agent: the requests in tests/unit/data/agent-transcript.json
(recorded from `tbagent serve` on a real node, through testbed.access.agent.AgentClient) are sent again
and every reply must equal the recorded one, but for the agent's own timing of the op, which
differs on every run. The unit tests replay the same transcript against
the host side (tests/unit/test_agent_contract.py), so a change on either side fails a test.

CXLTB_RECORD_AGENT=1 rewrites the transcript from this run instead of comparing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tbproto.ops import OPS

from testbed.access.agent import AgentClient, AgentError
from testbed.lifecycle.testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
TRANSCRIPT = REPO / "tests" / "unit" / "data" / "agent-transcript.json"
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "one-node.yaml"))
# A fresh store, then every store op once, then the errors a caller can make. Deterministic:
# the device, the store layout and /etc/debian_version are the same on every run.
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("ping", {}),
    ("catalog", {}),
    ("store.format", {"mhd": "mhd0", "slots": 64}),
    ("store.put", {"mhd": "mhd0", "name": "contract", "files": ["/etc/debian_version"], "meta": {"k": "v"}}),
    ("store.list", {"mhd": "mhd0"}),
    ("store.get", {"mhd": "mhd0", "name": "contract", "out": "/tmp/contract-out"}),
    ("store.check", {"mhd": "mhd0"}),
    ("store.delete", {"mhd": "mhd0", "name": "contract"}),
    ("store.get", {"mhd": "mhd0", "name": "contract"}),
    ("store.format", {"mhd": "mhd0", "bogus": 1}),
    ("store.list", {"mhd": 3}),
    ("no.such.op", {}),
]


def exchange(session: AgentClient, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """One request: the raw lines sent and received, and what the host made of the reply."""
    lines: dict[str, list[bytes]] = {"sent": [], "received": []}
    session.tap = lambda way, line: lines[way].append(line)
    try:
        try:
            outcome: dict[str, Any] = {"result": session.request(op, **args)}
        except AgentError as exc:
            outcome = {"error": exc.code}
    finally:
        session.tap = None
    return {"request": b"".join(lines["sent"]).decode(), "reply": b"".join(lines["received"]).decode(), **outcome}


def untimed(entry: dict[str, Any]) -> dict[str, Any]:
    """An exchange without the agent's timing of the op (it differs on every run)."""
    reply = json.loads(entry["reply"])
    assert set(reply.get("timing", {})) <= {"start_ns", "end_ns"}
    reply.pop("timing", None)
    return {**entry, "reply": reply}


def test_real_agent_replies_match_the_recorded_transcript(testbed: Testbed) -> None:
    with AgentClient(testbed.node("node0"), timeout=120) as session:
        got = [exchange(session, op, args) for op, args in REQUESTS]
    if os.environ.get("CXLTB_RECORD_AGENT"):
        TRANSCRIPT.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"recorded {len(got)} exchanges into {TRANSCRIPT}")
    want = json.loads(TRANSCRIPT.read_text())
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if json.loads(g["request"])["op"] in OPS:  # an op ran (not refused at the envelope): the agent timed it
            assert "timing" in json.loads(g["reply"]), g
        assert untimed(g) == untimed(w), f"{w['request'].strip()}: recorded {w}, now {g}"
