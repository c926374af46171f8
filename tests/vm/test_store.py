"""The template store on the real shared CXL device of a 2-node testbed.

Each test formats the store and publishes what it needs (fixtures empty_store, populated), so
tests do not depend on one another's leftovers; the one that kills node1 stays last."""

from __future__ import annotations

import json
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from testbed.access.agent import AgentClient, AgentError
from testbed.lifecycle import daemons, names
from testbed.lifecycle.testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "two-node.yaml"))
N = 12
SLOTS = 64  # corrupt_record scans the manifest of 2 heads x SLOTS slots


def _check(tb: Testbed, node: str) -> dict[str, object]:
    r = tb.exec(node, "tbagent", "store", "check", "mhd0", check=False)
    assert r.exit_code in (0, 1), r.stderr
    report: dict[str, object] = json.loads(r.stdout)
    return report


def _require_both_nodes(tb: Testbed) -> None:
    # test_writer_vm_killed_mid_publish destroys node1, so it is the last test of the module.
    with daemons.connection() as conn:
        for node in ("node0", "node1"):
            assert conn.lookupByName(names.domain(tb.name, node)).isActive(), f"{node} is not running"


def format_store(tb: Testbed) -> None:
    """An empty store on mhd0, whatever earlier tests left in it."""
    geo = json.loads(tb.exec("node0", "tbagent", "store", "format", "mhd0", "--slots", str(SLOTS)).stdout)
    assert geo["heads"] == 2 and geo["slots"] == SLOTS, geo
    assert json.loads(tb.exec("node1", "tbagent", "store", "list", "mhd0").stdout) == []


def publish_from_both(tb: Testbed, n: int = N) -> None:
    """node0 and node1 publish n templates each at the same time: NODE-fnI, 20000 + I bytes."""
    script = ("import os, subprocess, sys\n"
              "for i in range(int(sys.argv[1])):\n"
              "    open('/tmp/blob', 'wb').write(os.urandom(20000 + i))\n"
              "    subprocess.run(['tbagent', 'store', 'put', 'mhd0', sys.argv[2] + str(i), '/tmp/blob'], check=True)\n")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(tb.exec, node, "python3", "-c", script, str(n), f"{node}-fn") for node in ("node0", "node1")]
        for fut in futures:
            fut.result(timeout=600)  # re-raises a node's failure here


def corrupt_record(tb: Testbed, name: str) -> None:
    """Scribble over the payload of template `name` in the host's backing file (its checksum now fails)."""
    shm = names.shm_file(tb.name, tb.topology.mhds[0])
    raw = shm.read_bytes()[: 4096 + 2 * SLOTS * 4096]
    needle = f'"name":"{name}"'.encode()
    pos = raw.index(needle)
    with open(shm, "r+b") as fh:
        fh.seek(pos)
        fh.write(b'"name":"' + b"!" * len(name) + b'"')


@pytest.fixture
def empty_store(testbed: Testbed) -> Testbed:
    _require_both_nodes(testbed)
    format_store(testbed)
    return testbed


@pytest.fixture
def populated(empty_store: Testbed) -> Testbed:
    """2 x N templates, N from each head."""
    publish_from_both(empty_store)
    return empty_store


def test_format_and_agent_session(empty_store: Testbed) -> None:
    with AgentClient(empty_store.node("node0")) as agent:
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


def test_one_agent_session_carries_concurrent_requests(empty_store: Testbed) -> None:
    """Sixteen requests from eight threads on one session: each caller gets its own reply (typed),
    with the agent's own timing of the op."""
    with AgentClient(empty_store.node("node0")) as agent:
        assert agent.store_format("mhd0", 64).heads == 2

        def one(i: int) -> tuple[int, Any]:
            if i % 2:
                return i, agent.store_list("mhd0")
            return i, agent.exchange("ping", {})

        with ThreadPoolExecutor(8) as pool:
            got = dict(pool.map(one, range(16)))
    assert all(got[i] == [] for i in range(1, 16, 2))
    pings = [got[i] for i in range(0, 16, 2)]
    assert all(p.result["protocol"] == 1 and p.op_ms is not None and p.op_ms >= 0 for p in pings)


def test_two_nodes_publish_at_the_same_time(empty_store: Testbed) -> None:
    testbed = empty_store
    publish_from_both(testbed)
    for node in ("node0", "node1"):
        report = _check(testbed, node)
        assert report["ok"] and report["templates"] == 2 * N, report
    # Each node reads the other's templates, checksums verified.
    got = json.loads(testbed.exec("node0", "tbagent", "store", "get", "mhd0", "node1-fn3").stdout)
    assert got["crc_ok"] and got["bytes"] == 20003 and got["head"] == 1


def test_garbage_written_into_a_record(populated: Testbed) -> None:
    testbed = populated
    listing = json.loads(testbed.exec("node1", "tbagent", "store", "list", "mhd0").stdout)
    victim = next(t for t in listing if t["name"] == "node0-fn5")
    corrupt_record(testbed, "node0-fn5")
    for node in ("node0", "node1"):
        report = _check(testbed, node)
        assert not report["ok"]
        assert [p["status"] for p in report["problems"]] == ["corrupt"]  # type: ignore[attr-defined]
        assert report["templates"] == 2 * N - 1
    names_now = {t["name"] for t in json.loads(testbed.exec("node1", "tbagent", "store", "list", "mhd0").stdout)}
    assert victim["name"] not in names_now and "node0-fn6" in names_now


def test_store_full_keeps_the_rest(populated: Testbed) -> None:
    testbed = populated
    section = json.loads(testbed.exec("node0", "tbagent", "info").stdout)["cxl"][0]["size"]
    big = int(section, 16) // 2 + (4 << 20)  # more than one head's section
    testbed.exec("node0", "sh", "-c", f"head -c {big} /dev/zero > /tmp/big")
    r = testbed.exec("node0", "tbagent", "store", "put", "mhd0", "too-big", "/tmp/big", check=False)
    assert r.exit_code == 2 and "store full" in r.stderr
    assert _check(testbed, "node1")["templates"] == 2 * N  # the refused put published nothing


def test_writer_vm_killed_mid_publish(populated: Testbed) -> None:
    """Last in this module: it destroys node1."""
    testbed = populated
    corrupt_record(testbed, "node0-fn5")  # a corrupt record must survive the churn and the kill
    churn = ("import os, subprocess\n"
             "open('/tmp/b', 'wb').write(os.urandom(4 << 20))\n"
             "i = 0\n"
             "while True:\n"
             "    subprocess.run(['tbagent', 'store', 'put', 'mhd0', f'churn{i}', '/tmp/b'], check=True)\n"
             "    subprocess.run(['tbagent', 'store', 'delete', 'mhd0', f'churn{i}'], check=True)\n"
             "    subprocess.run(['tbagent', 'store', 'gc', 'mhd0'], check=True)\n"
             "    i += 1\n")
    # $! is the churn process itself (nohup execs python3): checked by pid, no pattern that
    # could match the shell running the check.
    start = f"nohup python3 -c {shlex.quote(churn)} </dev/null >/tmp/churn.log 2>&1 & echo $!"
    pid = testbed.exec("node1", "sh", "-c", start).stdout.strip()
    assert pid.isdigit(), pid
    time.sleep(8)
    alive = testbed.exec("node1", "kill", "-0", pid, check=False)
    assert alive.exit_code == 0, f"the churn process {pid} is gone: " + testbed.exec("node1", "cat", "/tmp/churn.log").stdout[-2000:]
    assert "store" in testbed.exec("node1", "cat", f"/proc/{pid}/cmdline").stdout  # it is the churn script, not a reused pid
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

