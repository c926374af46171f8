"""The template store on the real shared CXL device of a 2-node testbed."""

from __future__ import annotations

import json
import shlex
import threading
import time
from pathlib import Path

import pytest

from testbed import daemons, names
from testbed.agent import AgentError, AgentSession
from testbed.pytest_plugin import Testbed

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "two-node.yaml"))
N = 12


def _check(tb: Testbed, node: str) -> dict[str, object]:
    r = tb.exec(node, "tbagent", "store", "check", "mhd0", check=False)
    assert r.exit_code in (0, 1), r.stderr
    report: dict[str, object] = json.loads(r.stdout)
    return report


def test_format_and_agent_session(testbed: Testbed) -> None:
    with AgentSession(testbed.node("node0")) as agent:
        assert agent.request("ping")["protocol"] == 1
        geo = agent.request("store.format", mhd="mhd0", slots=64)
        assert geo["heads"] == 2
        assert agent.request("store.list", mhd="mhd0") == []
        with pytest.raises(AgentError) as info:
            agent.request("store.get", mhd="mhd0", name="nothing")
        assert info.value.code == "StoreError"
        with pytest.raises(AgentError):
            agent.request("store.list", bogus=1)
        assert agent.request("ping")["agent"]  # the session survives errors


def test_two_nodes_publish_at_the_same_time(testbed: Testbed) -> None:
    script = ("import os, subprocess, sys\n"
              "for i in range(int(sys.argv[1])):\n"
              "    open('/tmp/blob', 'wb').write(os.urandom(20000 + i))\n"
              "    subprocess.run(['tbagent', 'store', 'put', 'mhd0', sys.argv[2] + str(i), '/tmp/blob'], check=True)\n")
    errors: list[BaseException] = []

    def publish(node: str) -> None:
        try:
            testbed.exec(node, "python3", "-c", script, str(N), f"{node}-fn")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(n,)) for n in ("node0", "node1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for node in ("node0", "node1"):
        report = _check(testbed, node)
        assert report["ok"] and report["templates"] == 2 * N, report
    # Each node reads the other's templates, checksums verified.
    got = json.loads(testbed.exec("node0", "tbagent", "store", "get", "mhd0", "node1-fn3").stdout)
    assert got["crc_ok"] and got["bytes"] == 20003 and got["head"] == 1


def test_garbage_written_into_a_record(testbed: Testbed) -> None:
    listing = json.loads(testbed.exec("node1", "tbagent", "store", "list", "mhd0").stdout)
    victim = next(t for t in listing if t["name"] == "node0-fn5")
    # Find its slot from the host side and scribble over its payload in the backing file.
    shm = names.shm_file(testbed.name, testbed.topology.mhds[0])
    raw = shm.read_bytes()[: 4096 + 2 * 64 * 4096]
    needle = b'"name":"node0-fn5"'
    pos = raw.index(needle)
    with open(shm, "r+b") as fh:
        fh.seek(pos)
        fh.write(b'"name":"GARBAGE!!"')
    for node in ("node0", "node1"):
        report = _check(testbed, node)
        assert not report["ok"]
        assert [p["status"] for p in report["problems"]] == ["corrupt"]  # type: ignore[attr-defined]
        assert report["templates"] == 2 * N - 1
    names_now = {t["name"] for t in json.loads(testbed.exec("node1", "tbagent", "store", "list", "mhd0").stdout)}
    assert victim["name"] not in names_now and "node0-fn6" in names_now


def test_store_full_keeps_the_rest(testbed: Testbed) -> None:
    section = json.loads(testbed.exec("node0", "tbagent", "info").stdout)["cxl"][0]["size"]
    big = int(section, 16) // 2 + (4 << 20)  # more than one head's section
    testbed.exec("node0", "sh", "-c", f"head -c {big} /dev/zero > /tmp/big")
    r = testbed.exec("node0", "tbagent", "store", "put", "mhd0", "too-big", "/tmp/big", check=False)
    assert r.exit_code == 2 and "store full" in r.stderr
    assert _check(testbed, "node1")["templates"] == 2 * N - 1


def test_writer_vm_killed_mid_publish(testbed: Testbed) -> None:
    churn = ("import os, subprocess\n"
             "open('/tmp/b', 'wb').write(os.urandom(4 << 20))\n"
             "i = 0\n"
             "while True:\n"
             "    subprocess.run(['tbagent', 'store', 'put', 'mhd0', f'churn{i}', '/tmp/b'], check=True)\n"
             "    subprocess.run(['tbagent', 'store', 'delete', 'mhd0', f'churn{i}'], check=True)\n"
             "    subprocess.run(['tbagent', 'store', 'gc', 'mhd0'], check=True)\n"
             "    i += 1\n")
    testbed.exec("node1", "sh", "-c", f"nohup python3 -c {shlex.quote(churn)} >/tmp/churn.log 2>&1 &")
    time.sleep(8)
    assert testbed.exec("node1", "pgrep", "-f", "churn", check=False).exit_code == 0
    with daemons.connection() as conn:
        conn.lookupByName(names.domain(testbed.name, "node1")).destroy()  # the head dies mid-protocol
    report = _check(testbed, "node0")
    assert all(p["status"] in ("corrupt", "unpublished") for p in report["problems"]), report  # type: ignore[attr-defined]
    # Only the record scribbled on earlier may be corrupt: the kill tore nothing that was published.
    assert sum(p["status"] == "corrupt" for p in report["problems"]) == 1  # type: ignore[attr-defined]
    names_now = {t["name"] for t in json.loads(testbed.exec("node0", "tbagent", "store", "list", "mhd0").stdout)}
    assert {f"node0-fn{i}" for i in range(N) if i != 5} <= names_now
    assert {f"node1-fn{i}" for i in range(N)} <= names_now
    for i in (0, N - 1):
        assert json.loads(testbed.exec("node0", "tbagent", "store", "get", "mhd0", f"node1-fn{i}").stdout)["crc_ok"]

