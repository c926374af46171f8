"""The host side of the agent protocol against replies recorded from a real `tbagent serve`
(tests/unit/data/agent-transcript.json, recorded and re-checked by tests/vm/test_agent_contract.py):
AgentSession must send exactly the recorded request lines and make of each recorded reply the
recorded result or error."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from testbed.access.agent import AgentError, AgentSession

TRANSCRIPT: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "agent-transcript.json").read_text())


class Node:
    name = "node0"


def session_replaying(replies: list[str]) -> tuple[AgentSession, io.BytesIO]:
    """An AgentSession whose channel is the recorded replies, as the SSH channel would give them."""
    s = AgentSession(Node(), timeout=1)  # type: ignore[arg-type]
    sent = io.BytesIO()
    s.stdin, s.stdout = sent, io.BytesIO("".join(replies).encode())
    return s, sent


def test_transcript_covers_results_and_every_error_kind() -> None:
    assert {e.get("error") for e in TRANSCRIPT} >= {None, "StoreError", "bad-args", "unknown-op"}


def test_host_sends_the_recorded_requests_and_reads_the_recorded_replies() -> None:
    s, sent = session_replaying([e["reply"] for e in TRANSCRIPT])
    for e in TRANSCRIPT:
        req = json.loads(e["request"])
        start = sent.tell()
        if "error" in e:
            with pytest.raises(AgentError) as info:
                s.request(req["op"], **req["args"])
            assert info.value.code == e["error"]
            assert json.loads(e["reply"])["error"]["message"] in str(info.value)
        else:
            assert s.request(req["op"], **req["args"]) == e["result"]
        assert sent.getvalue()[start:].decode() == e["request"]


def test_a_reply_out_of_step_is_refused() -> None:
    first = TRANSCRIPT[0]
    s, _ = session_replaying([TRANSCRIPT[1]["reply"]])  # the reply to request 2, read for request 1
    req = json.loads(first["request"])
    with pytest.raises(Exception, match="out of step"):
        s.request(req["op"], **req["args"])
