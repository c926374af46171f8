"""The mm-template kernel on a real 2-node testbed: it boots on every node, and the
kernel-patches/ selftests pass on both nodes, including the cross-node sharing checks."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testbed.access.node import Result
from testbed.lifecycle.testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
SELFTESTS = REPO / "kernel-patches" / "selftests"
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "two-node-mmt.yaml"))
DEV = "/dev/mhd/mhd0"


def _dax(tb: Testbed, node: str) -> str:
    """The selftests find the device in sysfs by its real name, so resolve the stable link."""
    return tb.exec(node, "readlink", "-f", DEV).stdout.strip()


def install_selftests(testbed: Testbed) -> Testbed:
    subprocess.run(["make", "-s", "-C", str(SELFTESTS)], check=True)
    for node in testbed.nodes:
        for prog in ("mmt_test", "mmt_xnode"):
            node.put(SELFTESTS / prog, f"/usr/local/bin/{prog}")
            node.run(["chmod", "755", f"/usr/local/bin/{prog}"])
        node.run(["dmesg", "-C"])
    return testbed


def _dmesg_clean(tb: Testbed) -> None:
    for node in tb.nodes:
        log = node.run(["dmesg"]).stdout
        bad = [ln for ln in log.splitlines() if re.search(r"WARNING|BUG|Oops|lockdep|refcount_t", ln)]
        assert not bad, f"{node.name}: {bad[:5]}"


def test_every_node_runs_the_patched_kernel(testbed: Testbed) -> None:
    release = testbed.state.kernel["release"]
    assert testbed.state.kernel["kind"] == testbed.topology.kernel
    for node in testbed.nodes:
        assert node.run(["uname", "-r"]).stdout.strip() == release
        assert node.run(["test", "-c", "/dev/mm_template"], check=False).ok, f"{node.name}: no /dev/mm_template"


def check_selftests(selftests: Testbed) -> None:
    for node in selftests.nodes:
        r = node.run(["mmt_test", "-d", _dax(selftests, node.name)], check=False, timeout=600)
        tap = r.stdout
        assert r.ok, f"{node.name}: exit {r.exit_code}\n{tap[-3000:]}\n{r.stderr[-2000:]}"
        assert "not ok" not in tap, tap
        assert len(re.findall(r"^ok \d+", tap, re.M)) >= 10, tap
    _dmesg_clean(selftests)


XNODE_TIMEOUT = 300  # mmt_xnode's own rendezvous timeout (-t)


def check_cross_node(selftests: Testbed) -> None:
    """Both roles at once (they rendezvous through the shared device). Each role's Result, or
    the exception its thread raised, reaches this test through its future; a node that never
    reports fails the test instead of leaving it waiting or passing on the other's result."""
    run_id = str(secrets.randbelow(1 << 30))
    roles = {"node0": "A", "node1": "B"}

    def role(node: str, r: str) -> Result:
        return selftests.node(node).run(["mmt_xnode", "node", "-r", r, "-i", run_id, "-d", _dax(selftests, node),
                                         "-t", str(XNODE_TIMEOUT)], check=False, timeout=XNODE_TIMEOUT + 100)

    results: dict[str, Result] = {}
    # No `with`: its exit waits for every thread, so a hung role would hang the test past its deadline.
    pool = ThreadPoolExecutor(max_workers=len(roles))
    try:
        futures = {node: pool.submit(role, node, r) for node, r in roles.items()}
        deadline = time.monotonic() + XNODE_TIMEOUT + 160
        for node, fut in futures.items():
            # Raises the thread's exception, or TimeoutError if the node never reported.
            results[node] = fut.result(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert sorted(results) == sorted(roles), f"nodes that reported: {sorted(results)}"
    for node, res in results.items():
        assert res.ok, f"{node}: {res.stdout[-3000:]} {res.stderr[-2000:]}"
        assert "not ok" not in res.stdout
    _dmesg_clean(selftests)


def check_same_pages(selftests: Testbed) -> None:
    maps = {}
    for node in selftests.nodes:
        out = node.run(["mmt_xnode", "pfns", "-d", _dax(selftests, node.name), "-o", "64", "-n", "32"]).stdout
        dax = re.search(r"^dax \S+ (0x[0-9a-f]+|\d+) (0x[0-9a-f]+|\d+)", out, re.M)
        assert dax, out
        start = int(dax.group(1), 0) >> 12
        pfns = {int(o, 0): int(p, 0) for o, p in re.findall(r"^pfn (\S+) (\S+)", out, re.M)}
        assert len(pfns) == 32, out
        end = int(dax.group(2), 0) >> 12
        assert all(start <= p <= end for p in pfns.values()), f"{node.name}: PFNs outside the CXL region"
        # The page at device offset o is the region's page o/4096 on every node: no copy.
        maps[node.name] = {o: p - start for o, p in pfns.items()}
        assert all(rel == o >> 12 for o, rel in maps[node.name].items()), maps[node.name]
    assert maps["node0"] == maps["node1"]


@pytest.fixture(scope="module")
def selftests(testbed: Testbed) -> Testbed:
    return install_selftests(testbed)


def test_selftests_pass_on_both_nodes(selftests: Testbed) -> None:
    check_selftests(selftests)


def test_cross_node_sharing_and_private_writes(selftests: Testbed) -> None:
    check_cross_node(selftests)


def test_both_nodes_map_the_same_cxl_pages(selftests: Testbed) -> None:
    check_same_pages(selftests)
