"""The host side of the agent protocol against replies recorded from a real `tbagent serve`
(tests/unit/data/agent-transcript.json, recorded and re-checked by tests/vm/test_agent_contract.py):
AgentClient must send exactly the recorded request lines and make of each recorded reply the
recorded result or error, and every recorded result must decode as its op's tbproto reply type.
Then the client's own guarantees: concurrent calls matched by id, and a lost session failing
every pending call (never a hang)."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tbproto import ops as proto
from tbproto.codec import ProtocolError, decode_as

from testbed.access.agent import AgentClient, AgentError, AgentSkew
from testbed.errors import NodeTimeout, Unreachable

TRANSCRIPT: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "agent-transcript.json").read_text())


class Node:
    name = "node0"

    def open_channel(self, command: str, timeout: float) -> Any:
        raise AssertionError("the tests attach streams")


class Agent:
    """Both ends of the streams: what the client writes, and replies made by `answer` from each
    request line (None: no reply), given to the client's reader as they are made."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.sent: list[bytes] = []
        self.replies: queue.Queue[bytes] = queue.Queue()

    # the client's writer
    def write(self, data: bytes) -> int:
        self.sent.append(data)
        for reply in self.answer(data) or []:
            self.replies.put(reply)
        return len(data)

    def flush(self) -> None:
        pass

    # the client's reader
    def readline(self, limit: int = -1) -> bytes:
        return self.replies.get(timeout=10)


def client(answer: Any, timeout: float = 5) -> tuple[AgentClient, Agent]:
    c = AgentClient(Node(), timeout=timeout, check=False)
    agent = Agent(answer)
    c.attach(agent, agent)  # type: ignore[arg-type]
    return c, agent


def recorded(op: str) -> dict[str, Any]:
    return next(json.loads(e["reply"]) for e in TRANSCRIPT if json.loads(e["request"])["op"] == op and "error" not in e)


def replay(entries: list[dict[str, Any]]) -> tuple[AgentClient, Agent]:
    """A client that has opened its session as the recorded one did (the ping and catalog of
    the handshake, answered with the recorded replies), then gets `entries`' replies in turn."""
    it = iter(entries)
    handshake = iter([recorded("ping"), recorded("catalog")])

    def answer(line: bytes) -> list[bytes]:
        rid = json.loads(line)["id"]
        if rid <= 2:
            return [json.dumps({**next(handshake), "id": rid}).encode() + b"\n"]
        return [next(it)["reply"].encode()]

    c, agent = client(answer)
    c.handshake()  # the real agent's catalogue is this host's
    return c, agent


def test_transcript_covers_results_and_every_error_kind() -> None:
    assert {e.get("error") for e in TRANSCRIPT} >= {None, "StoreError", "bad-args", "unknown-op"}


def test_host_sends_the_recorded_requests_and_reads_the_recorded_replies() -> None:
    c, agent = replay(TRANSCRIPT)
    for e in TRANSCRIPT:
        req = json.loads(e["request"])
        if "error" in e:
            with pytest.raises(AgentError) as info:
                c.request(req["op"], **req["args"])
            assert info.value.code == e["error"]
            assert json.loads(e["reply"])["error"]["message"] in str(info.value)
        else:
            assert c.request(req["op"], **req["args"]) == e["result"]
        assert agent.sent[-1].decode() == e["request"]


def test_every_recorded_result_decodes_as_its_ops_reply_type() -> None:
    decoded = 0
    for e in TRANSCRIPT:
        op = json.loads(e["request"])["op"]
        if "error" not in e and op in proto.OPS:
            decode_as(proto.OPS[op].reply, e["result"], op)
            decoded += 1
    assert decoded >= 7


def test_typed_methods_decode_the_recorded_replies() -> None:
    by_op = {json.loads(e["request"])["op"]: json.loads(e["reply"]) for e in TRANSCRIPT if "error" not in e}
    recorded = iter([by_op["store.list"], by_op["store.check"]])
    c, _ = client(lambda line: [json.dumps({**next(recorded), "id": json.loads(line)["id"]}).encode() + b"\n"])
    (entry,) = c.store_list("mhd0")
    assert isinstance(entry, proto.StoreEntry) and entry.name == "contract" and entry.extents[0].len == entry.bytes
    assert c.store_check("mhd0").ok


def test_a_reply_of_the_wrong_shape_is_a_protocol_error() -> None:
    c, _ = client(lambda line: [json.dumps({"v": 1, "id": json.loads(line)["id"], "ok": True,
                                            "result": [{"name": 3}]}).encode() + b"\n"])
    with pytest.raises(ProtocolError, match=r"store.list: result\[0\].name: expected a string"):
        c.store_list("mhd0")


def test_a_reply_out_of_step_is_refused() -> None:
    first = TRANSCRIPT[0]
    c, _ = replay([TRANSCRIPT[1]])  # the reply to request 2, read for request 1
    req = json.loads(first["request"])
    with pytest.raises(Exception, match="out of step"):
        c.request(req["op"], **req["args"])
    with pytest.raises(Unreachable):  # and the session is over
        c.request("ping")


def test_concurrent_calls_are_matched_by_id() -> None:
    """Replies come back in the reverse order of the requests; each caller gets its own."""
    held: list[bytes] = []

    def answer(line: bytes) -> list[bytes]:
        req = json.loads(line)
        held.append(json.dumps({"v": 1, "id": req["id"], "ok": True, "result": req["args"]}).encode() + b"\n")
        return list(reversed(held)) if len(held) == 4 else []

    c, _ = client(answer)
    got: dict[int, Any] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, c.request("x", n=i))) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(5)
    assert got == {i: {"n": i} for i in range(4)}


def test_a_lost_session_fails_every_pending_call() -> None:
    agent_gone = threading.Event()

    def answer(line: bytes) -> list[bytes]:
        if json.loads(line)["id"] == 3:
            agent_gone.set()
            return [b""]  # end of stream: the agent exited
        return []

    c, _ = client(answer)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            c.request("slow")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(5)
    assert agent_gone.is_set() and len(errors) == 3 and all(isinstance(e, Unreachable) for e in errors)
    assert all("closed the session" in str(e) for e in errors)


def test_a_garbage_reply_fails_the_session_with_its_cause() -> None:
    c, _ = client(lambda _line: [b"{not json\n"])
    with pytest.raises(Unreachable, match="agent session lost") as info:
        c.request("ping")
    assert info.value.__cause__ is not None


def test_no_reply_is_a_timeout_not_a_hang() -> None:
    c, _ = client(lambda _line: [], timeout=0.2)
    with pytest.raises(NodeTimeout, match=r"no reply within 0\.2s"):
        c.request("ping")


def test_a_skewed_agent_is_refused_at_the_start() -> None:
    def answer(line: bytes) -> list[bytes]:
        req = json.loads(line)
        result = {"agent": "0.0.9", "protocol": 1} if req["op"] == "ping" else {"protocol": 1, "functions": ["hello"]}
        return [json.dumps({"v": 1, "id": req["id"], "ok": True, "result": result}).encode() + b"\n"]

    c, _ = client(answer)
    with pytest.raises(AgentSkew, match="rebuild the image"):
        c.handshake()
