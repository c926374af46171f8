"""The function runner and the channel protocol, in a forked child (no root, no VM)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tbagent.sandbox import bench, proto, runner

REPO = Path(__file__).resolve().parents[2]


def start(handler: Path) -> tuple[int, object]:
    ours, theirs = proto.pair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ours.close()
        try:
            runner.serve(theirs, str(handler), marks={"go": 1.0})
        finally:
            os._exit(3)
    theirs.close()
    return pid, ours


def test_runner_reports_started_ready_and_answers(tmp_path: Path) -> None:
    handler = tmp_path / "handler.py"
    handler.write_text("import os\nCOUNT = [0]\ndef handle(event):\n    COUNT[0] += 1\n"
                       "    if event.get('fail'):\n        raise KeyError('x')\n    return {'n': COUNT[0], 'pid': os.getpid()}\n")
    pid, sock = start(handler)
    started = proto.recv(sock, 10)  # type: ignore[arg-type]
    assert started["pid"] == pid and started["marks"] == {"go": 1.0}
    assert proto.recv(sock, 10)["ready"]  # type: ignore[arg-type]
    for n in (1, 2):
        proto.send(sock, {"event": {}})  # type: ignore[arg-type]
        assert proto.recv(sock, 10)["result"] == {"n": n, "pid": pid}  # type: ignore[arg-type]
    proto.send(sock, {"event": {"fail": True}})  # type: ignore[arg-type]
    reply = proto.recv(sock, 10)  # type: ignore[arg-type]
    assert not reply["ok"] and "KeyError" in reply["error"]
    sock.close()  # type: ignore[attr-defined]
    assert os.waitpid(pid, 0)[1] == 0  # EOF on the channel: a clean exit


def test_a_crash_closes_the_channel_even_with_children(tmp_path: Path) -> None:
    handler = tmp_path / "handler.py"
    handler.write_text("import os, signal, time\ndef handle(event):\n    if os.fork() == 0:\n        time.sleep(2)\n"
                       "        os._exit(0)\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    pid, sock = start(handler)
    proto.recv(sock, 10)  # type: ignore[arg-type]
    proto.recv(sock, 10)  # type: ignore[arg-type]
    proto.send(sock, {"event": {}})  # type: ignore[arg-type]
    with pytest.raises(proto.Closed):  # the child does not hold the channel (register_at_fork)
        proto.recv(sock, 1.5)  # type: ignore[arg-type]
    os.waitpid(pid, 0)


def test_a_broken_handler_reports_instead_of_ready(tmp_path: Path) -> None:
    handler = tmp_path / "handler.py"
    handler.write_text("raise RuntimeError('no init')\n")
    pid, sock = start(handler)
    proto.recv(sock, 10)  # type: ignore[arg-type]
    ready = proto.recv(sock, 10)  # type: ignore[arg-type]
    assert ready["ready"] is False and "no init" in ready["error"]
    os.waitpid(pid, 0)


def test_file_descriptors_travel_with_messages() -> None:
    a, b = proto.pair()
    r, w = os.pipe()
    proto.send(a, {"x": 1}, [r])
    msg, fds = proto.recv_fds(b, 1, 5)
    assert msg == {"x": 1} and len(fds) == 1
    os.write(w, b"hi")
    assert os.read(fds[0], 2) == b"hi"
    for fd in (r, w, *fds):
        os.close(fd)
    a.close()
    with pytest.raises(proto.Closed):
        proto.recv(b, 5)


def test_percentile_is_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert bench.percentile(xs, 99) == 99.0 and bench.percentile(xs, 50) == 50.0
    assert bench.percentile([5.0], 99) == 5.0
    s = bench.summary([3.0, 1.0, 2.0])
    assert s["median"] == 2.0 and s["p99"] == 3.0 and s["n"] == 3
