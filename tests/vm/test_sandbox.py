"""Sandbox reuse in a booted node: the pool daemon, repurposing across functions, isolation across
reuse (and that each check fails without its cleanup step), release after a crash, an exhausted
pool (queue, and fallback by configuration), the crun baseline. Timings are printed, not asserted.

The tests share the node, not state: each one starts (or restarts) the pool daemon with the
configuration it needs, through the fixtures below, so any subset runs in any order."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tbagent.sandbox.isolation import STEP_FOR  # which cleanup steps back each check

from testbed.lifecycle.testbed import Testbed

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "one-node.yaml"), name="sbxvm")

PRELUDE = """
import json, threading, time
from tbagent.sandbox.server import Client
from tbagent.sandbox import isolation

def name_of(c, lease):
    return [s for s in c.call("status")["busy"] if s["lease"] == lease][0]["name"]

def cycle(c, skip=()):
    a = c.call("acquire", function="dirty")
    d = c.call("invoke", lease=a["lease"])["reply"]
    rel = c.call("release", lease=a["lease"], skip=list(skip))
    b = c.call("acquire", function="probe", timeout=60)
    probe = c.call("invoke", lease=b["lease"], event=isolation.PROBE_EVENT)["reply"]["result"]
    view = c.call("inspect", lease=b["lease"])
    leaks = isolation.leaks(probe, view, name_of(c, b["lease"]))
    c.call("release", lease=b["lease"], destroy=bool(skip))  # a polluted sandbox is not kept
    return {"dirty": d, "release": rel, "same": a["sandbox"] == b["sandbox"], "leaks": leaks, "probe": probe}
"""

# Checks that fail together when the steps backing one of them are skipped.
EXPECTED_LEAKS: dict[tuple[str, ...], set[str]] = {("kill", "cgroup"): {"processes", "sockets", "cgroup"}}


def sandbox(tb: Testbed, *args: str) -> Any:
    return json.loads(tb.exec("node0", "tbagent", "sandbox", *args).stdout)


def client(tb: Testbed, code: str) -> Any:
    """Run a pool client script in the node; its last line of output is JSON."""
    out = tb.exec("node0", "python3", "-c", PRELUDE + code).stdout
    return json.loads(out.strip().splitlines()[-1])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def stop_pool(tb: Testbed) -> None:
    tb.exec("node0", "tbagent", "sandbox", "stop")  # exit 0 also when none is running
    assert tb.exec("node0", "tbagent", "sandbox", "status", check=False).exit_code != 0, "the pool daemon still answers"


def start_pool(tb: Testbed, size: int = 1, on_exhausted: str = "queue", max_size: int = 16) -> dict[str, Any]:
    """The pool daemon with exactly this configuration (test hooks on), idle. A running daemon
    keeps its policy (`pool` only resizes it), so one configured otherwise is restarted."""
    r = tb.exec("node0", "tbagent", "sandbox", "status", check=False)
    if r.exit_code == 0:
        cur = json.loads(r.stdout)
        if (cur["on_exhausted"], cur["test_hooks"], cur["max"]) != (on_exhausted, True, max(max_size, size)):
            stop_pool(tb)
    status: dict[str, Any] = sandbox(tb, "pool", "--size", str(size), "--on-exhausted", on_exhausted,
                                     "--max", str(max_size), "--test-hooks")
    assert (status["size"], status["on_exhausted"], status["test_hooks"]) == (size, on_exhausted, True), status
    # A sandbox destroyed by an earlier test is replaced in the background: wait until all are idle.
    deadline = time.monotonic() + 120
    while len(status["idle"]) != size or status["busy"]:
        assert time.monotonic() < deadline, f"the pool did not settle at {size} idle sandboxes: {status}"
        time.sleep(0.5)
        status = sandbox(tb, "status")
    return status


@pytest.fixture
def no_pool(testbed: Testbed) -> Testbed:
    stop_pool(testbed)
    return testbed


@pytest.fixture
def pool(testbed: Testbed) -> Testbed:
    """One idle sandbox, queueing when it is taken: what reuse, isolation and queueing tests assume."""
    start_pool(testbed, size=1)
    return testbed


@pytest.mark.usefixtures("no_pool")
def test_pool_precreates_sandboxes_with_their_own_namespaces_cgroups_and_network(testbed: Testbed) -> None:
    status = sandbox(testbed, "pool", "--size", "2", "--test-hooks")
    assert status["total"] == 2 and len(status["idle"]) == 2 and not status["busy"]
    for sb in status["idle"]:
        pid = sb["init_pid"]
        check = ("for ns in mnt pid net ipc uts; do [ $(readlink /proc/{p}/ns/$ns) != $(readlink /proc/1/ns/$ns) ] || "
                 "exit 1; done; cat /proc/{p}/cgroup; ip -o -4 addr show dev {v}; "
                 "nsenter -t {p} -n ip -o -4 addr show dev eth0; nsenter -t {p} -u hostname").format(p=pid, v=sb["veth"])
        out = testbed.exec("node0", "sh", "-c", check).stdout
        assert f"0::/tbsandbox/z-{sb['id']}" in out
        octets = sb["address"].split(".")
        host_ip = ".".join([*octets[:3], str(int(octets[3]) - 1)])
        assert f"{host_ip}/30" in out and f"{sb['address']}/30" in out
        assert out.strip().endswith(sb["name"])
        # Reachable from the node on its /30 (a refused connection comes from the sandbox's stack).
        probe = (f"import socket\ntry:\n    socket.create_connection(('{sb['address']}', 9), 3)\n"
                 "except ConnectionRefusedError:\n    print('refused')")
        assert testbed.exec("node0", "python3", "-c", probe).stdout.strip() == "refused"
        assert 0 < sb["init_memory_current"] < 16 << 20
        print(f"{sb['name']}: created in {ms(sb['created']['total'])} {sb['created']}, "
              f"idle init cgroup {sb['init_memory_current'] / 1024:.0f} KiB, spare {sb['fn_memory_current'] / 1024:.0f} KiB")
    # The sandboxes' mounts live in their own mount namespaces, not in the node's.
    assert "tbstage" not in testbed.exec("node0", "cat", "/proc/self/mountinfo").stdout
    status = sandbox(testbed, "pool", "--size", "1", "--test-hooks")
    assert status["total"] == 1 and len(status["idle"]) == 1


@pytest.mark.usefixtures("pool")
def test_repurposing_across_three_functions_reuses_one_sandbox(testbed: Testbed) -> None:
    runs = client(testbed, """
out = []
with Client() as c:
    for fn in ("hello", "jsonrt", "matmul", "hello"):
        out.append(dict(c.call("run", function=fn), fn=fn))
print(json.dumps(out))
""")
    assert len({r["sandbox"] for r in runs}) == 1 and not any(r["fresh"] for r in runs)
    for r in runs:
        assert r["reply"]["ok"] and r["release"]["clean"] and r["release"]["outcome"] == "returned to pool"
        assert r["reply"]["result"]["layer"] == r["fn"]  # its own layer, and only its own
        assert r["timings"]["namespaces"] == 0.0 and r["timings"]["network"] == 0.0
        t = r["timings"]
        print(f"{r['fn']}: ready sandbox {ms(t['ready_sandbox'])} (cgroup {ms(t['cgroup'])}, rootfs {ms(t['rootfs'])}, "
              f"process {ms(t['process'])}), function init {ms(t['function_init'])}")
    hello, jsonrt, matmul = (r["reply"]["result"] for r in runs[:3])
    assert hello["greeting"] == "hello world" and hello["pid"] > 1 and hello["hostname"].startswith("sbx-")
    assert jsonrt["equal"] and jsonrt["items"] == 1000
    assert matmul["check"] and matmul["n"] == 128


@pytest.mark.usefixtures("pool")
def test_a_start_hook_of_the_sandbox_init_can_replace_the_spare(testbed: Testbed) -> None:
    """The seam for starting a function another way (issue part 5: restoring a template-mode
    snapshot): the "fork" hook makes the process through the sandbox init, on demand."""
    r = client(testbed, """
with Client() as c:
    a = c.call("acquire", function="hello", start={"kind": "fork"})
    out = {"acquire": a, "reply": c.call("invoke", lease=a["lease"])["reply"], "release": c.call("release", lease=a["lease"])}
    out["bad"] = c.call("acquire", function="hello", start={"kind": "no-such-hook"}, check=False)
print(json.dumps(out))
""")
    assert r["reply"]["ok"] and r["reply"]["result"]["layer"] == "hello" and r["release"]["clean"]
    assert not r["bad"]["ok"] and "no-such-hook" in r["bad"]["error"]
    t = r["acquire"]["timings"]
    print(f"hook 'fork': ready sandbox {ms(t['ready_sandbox'])} (process {ms(t['process'])}: fork and cgroup migration included)")


@pytest.mark.usefixtures("pool")
def test_isolation_holds_across_reuse(testbed: Testbed) -> None:
    r = client(testbed, "with Client() as c:\n    print(json.dumps(cycle(c)))")
    assert r["dirty"]["ok"] and r["dirty"]["result"]["sleeper_ready"] and r["dirty"]["result"]["env"] == "dirty-secret"
    assert r["release"]["clean"] and r["same"]
    assert r["leaks"] == {}
    assert r["probe"]["cgroup"]["pids.current"] == 1 and r["probe"]["self_cgroup"] == "0::/"
    print("release steps:", {k: ms(v) for k, v in r["release"]["timings"].items()})


@pytest.mark.usefixtures("pool")
@pytest.mark.parametrize("check", list(STEP_FOR))
def test_each_isolation_check_fails_without_its_cleanup_step(testbed: Testbed, check: str) -> None:
    skip = STEP_FOR[check]
    r = client(testbed, f"with Client() as c:\n    print(json.dumps(cycle(c, {list(skip)!r})))")
    assert r["release"]["skipped"] == list(skip) and r["release"]["clean"] and r["same"]
    assert set(r["leaks"]) == EXPECTED_LEAKS.get(skip, {check}), r["leaks"]
    print(f"without {'+'.join(skip)}: {r['leaks']}")


@pytest.mark.usefixtures("pool")
def test_without_kill_the_sandbox_is_destroyed_not_reused(testbed: Testbed) -> None:
    r = client(testbed, "with Client() as c:\n    print(json.dumps(cycle(c, ['kill'])))")
    assert not r["release"]["clean"] and r["release"]["outcome"] == "destroyed (cleanup failed)"
    assert "busy" in r["release"]["errors"]["cgroup"].lower()  # its processes keep fn-ID from being recreated
    assert not r["same"] and r["leaks"] == {}


@pytest.mark.usefixtures("pool")
def test_release_after_a_crash_of_the_function(testbed: Testbed) -> None:
    r = client(testbed, """
with Client() as c:
    a = c.call("acquire", function="crash", timeout=60)
    crash = c.call("invoke", lease=a["lease"])["reply"]
    rel = c.call("release", lease=a["lease"])
    b = c.call("acquire", function="probe")
    probe = c.call("invoke", lease=b["lease"], event={})["reply"]["result"]
    c.call("release", lease=b["lease"])
    hello = c.call("run", function="hello")
print(json.dumps({"crash": crash, "release": rel, "same": a["sandbox"] == b["sandbox"] == hello["sandbox"],
                  "procs": probe["processes"], "self": probe["self"], "hello": hello["reply"]}))
""")
    assert not r["crash"]["ok"] and r["crash"]["crashed"]
    assert r["release"]["clean"] and r["release"]["function_exit"] == "signal 11"
    assert r["release"]["outcome"] == "returned to pool" and r["same"]
    assert [p["pid"] for p in r["procs"]] == [1, r["self"]]  # the crashed function's child is gone too
    assert r["hello"]["ok"]


@pytest.mark.usefixtures("pool")
def test_exhausted_pool_queues_by_default_and_times_out(testbed: Testbed) -> None:
    r = client(testbed, """
res = {}
with Client() as c:
    held = c.call("acquire", function="hello")
    def other():
        with Client() as c2:
            q = c2.call("acquire", function="jsonrt", timeout=30)
            res.update(sandbox=q["sandbox"], waited=q["waited_s"], fresh=q["fresh"])
            c2.call("release", lease=q["lease"])
    t = threading.Thread(target=other)
    t.start()
    time.sleep(1.0)
    res["waiting"] = "sandbox" not in res
    c.call("release", lease=held["lease"])
    t.join()
    res["held"] = held["sandbox"]
    again = c.call("acquire", function="hello")
    res["timeout"] = c.call("acquire", function="hello", timeout=0.5, check=False)
    c.call("release", lease=again["lease"])
    res["stats"] = c.call("status")["stats"]
print(json.dumps(res))
""")
    assert r["waiting"] and r["sandbox"] == r["held"] and not r["fresh"] and r["waited"] >= 0.8
    assert not r["timeout"]["ok"] and "no sandbox was released" in r["timeout"]["error"]
    print(f"queued for {r['waited']:.2f} s; counters {r['stats']}")


def test_exhausted_pool_falls_back_to_a_fresh_sandbox_by_configuration(testbed: Testbed) -> None:
    status = start_pool(testbed, size=1, on_exhausted="fallback", max_size=2)
    assert status["on_exhausted"] == "fallback"
    r = client(testbed, """
with Client() as c:
    held = c.call("acquire", function="hello")
    fresh = c.call("acquire", function="jsonrt")
    third = c.call("acquire", function="hello", check=False)
    out = {"held": held["sandbox"], "fresh": fresh, "third": third,
           "result": c.call("invoke", lease=fresh["lease"])["reply"],
           "rel_fresh": c.call("release", lease=fresh["lease"]), "rel_held": c.call("release", lease=held["lease"]),
           "total": c.call("status")["total"]}
print(json.dumps(out))
""")
    assert r["fresh"]["fresh"] and r["fresh"]["sandbox"] != r["held"] and r["result"]["ok"]
    assert not r["third"]["ok"] and "maximum of 2" in r["third"]["error"]
    assert r["rel_fresh"]["outcome"] == "destroyed (beyond pool size)" and r["rel_held"]["outcome"] == "returned to pool"
    assert r["total"] == 1
    created = r["fresh"]["timings"]["created"]
    print("fresh sandbox phases:", {k: ms(v) for k, v in created.items()})


def test_crun_baseline_makes_the_same_sandbox_and_cleans_up(testbed: Testbed) -> None:
    r = json.loads(testbed.exec("node0", "tbagent", "sandbox", "oci", "hello").stdout)
    res = r["reply"]["result"]
    assert r["reply"]["ok"] and res["layer"] == "hello" and res["hostname"] == "oci-0" and res["pid"] == 1
    t = r["timings"]
    print(f"crun: ready sandbox {ms(t['ready_sandbox'])} (rootfs {ms(t['rootfs_outer'])}, create {ms(t['create'])}, "
          f"network {ms(t['network'])}, process {ms(t['process'])})")
    left = testbed.exec("node0", "sh", "-c", "crun --root /run/tbsandbox/crun list -q; ls -d /sys/fs/cgroup/tbsandbox/oci-* "
                        "2>/dev/null; ls /sys/class/net | grep '^tbo'; grep /run/tbsandbox/oci /proc/self/mountinfo; true").stdout
    assert left.strip() == ""


def test_stop_leaves_nothing_behind(testbed: Testbed) -> None:
    start_pool(testbed, size=2)  # something to stop: sandboxes, their cgroups, veths and the socket
    assert testbed.exec("node0", "tbagent", "sandbox", "stop").stdout.strip() == "stopped"
    left = testbed.exec("node0", "sh", "-c", "ls /sys/fs/cgroup/tbsandbox; ls /sys/class/net | grep '^tbv'; "
                        "grep -l tbsandbox /proc/[0-9]*/comm 2>/dev/null; ls /run/tbsandbox/pool.sock 2>/dev/null; true").stdout
    assert not any(line.startswith(("z-", "fn-", "factory", "tbv", "/proc", "/run")) for line in left.split())
