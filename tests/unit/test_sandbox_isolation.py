"""The isolation checks on synthetic observations, and the in-sandbox cleanup steps with the
system calls monkeypatched out: skipping a step leaves exactly its kind of state behind."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tbagent.functions import dirty
from tbagent.sandbox import isolation, zygote

REPO = Path(__file__).resolve().parents[2]

BASELINE = ["/", "/store", "/cg", "/dev", "/rw", "/proc"]


def clean_probe() -> dict[str, Any]:
    return {
        "self": 3,
        "files": {p: False for p in isolation.PROBE_EVENT["paths"]},
        "processes": [{"pid": 1, "comm": "tbsandbox-init", "cmdline": ""}, {"pid": 3, "comm": "tbsandbox-fn", "cmdline": ""}],
        "mounts": ["/", "/proc", "/dev", "/sys/fs/cgroup"],
        "env": {"PATH": "/usr/bin", "HOME": "/root"},
        "sockets": {"tcp": [], "udp": [], "unix": [], "bindable": {str(dirty.LEAK_TCP_PORT): True}},
        "cgroup": {"memory.peak": 3 << 20, "pids.current": 1},
        "hostname": "sbx-1",
        "ipc_shm_keys": [],
        "net": {"mtu": 1500, "up": True, "routes": []},
    }


def clean_view() -> dict[str, Any]:
    return {"mounts": [*BASELINE, *zygote.FUNCTION_MOUNTS], "mounts_baseline": BASELINE}


LEAKS = {
    "files": lambda p, v: p["files"].__setitem__(dirty.LEAK_FILES[0], True),
    "processes": lambda p, v: p["processes"].append({"pid": 9, "comm": dirty.LEAK_PROC_NAME, "cmdline": ""}),
    "mounts": lambda p, v: v["mounts"].extend(["/root", "/root/mnt/leak"]),
    "env": lambda p, v: p["env"].__setitem__(dirty.LEAK_ENV, "dirty-secret"),
    "sockets": lambda p, v: p["sockets"]["tcp"].append({"port": dirty.LEAK_TCP_PORT, "state": "LISTEN"}),
    "cgroup": lambda p, v: p["cgroup"].__setitem__("memory.peak", dirty.LEAK_MEMORY),
    "hostname": lambda p, v: p.__setitem__("hostname", dirty.LEAK_HOSTNAME),
    "ipc": lambda p, v: p["ipc_shm_keys"].append(dirty.LEAK_SHM_KEY),
    "network": lambda p, v: p["net"].__setitem__("mtu", dirty.LEAK_MTU),
}


def test_a_clean_sandbox_has_no_leaks() -> None:
    assert isolation.leaks(clean_probe(), clean_view(), "sbx-1") == {}


@pytest.mark.parametrize("category", isolation.CATEGORIES)
def test_each_leftover_is_reported_under_its_own_category(category: str) -> None:
    probe, view = clean_probe(), clean_view()
    LEAKS[category](probe, view)
    assert set(isolation.leaks(probe, view, "sbx-1")) == {category}


def test_every_category_names_the_cleanup_steps_it_relies_on() -> None:
    from tbagent.sandbox.sandbox import CLEANUP_STEPS

    assert set(isolation.STEP_FOR) == set(isolation.CATEGORIES)
    assert {s for steps in isolation.STEP_FOR.values() for s in steps} == set(CLEANUP_STEPS)


def test_stacked_rootfs_counts_as_a_leaked_mount() -> None:
    view = clean_view()
    view["mounts"] = [*view["mounts"], "/root", "/root/proc"]
    assert isolation.extra_mounts(view) == ["/root", "/root/proc"]


class FakeZygote(zygote.Zygote):
    """A sandbox init whose system calls are replaced by bookkeeping."""

    def __init__(self) -> None:
        super().__init__(None, {"hostname": "sbx-1", "fn_cgroup": "fn-1"})  # type: ignore[arg-type]
        self.hostname_now = "sbx-1"
        self.upper: list[str] = []
        self.ipc_ns = 1

    def _reap(self, _sig: int, _frame: object) -> None:
        pass  # not waitpid(-1) in the test runner

    def _reset_upper(self) -> None:
        self.upper = []

    def _reset_mounts(self) -> None:
        pass

    def _reset_hostname(self) -> None:
        self.hostname_now = self.hostname

    def _reset_ipc(self) -> None:
        self.ipc_ns += 1

    def _reset_network(self) -> None:
        pass


def test_skipping_an_in_sandbox_step_leaves_its_state() -> None:
    z = FakeZygote()

    def dirty_run() -> None:
        z.hostname_now, z.upper, z.ipc_ns = dirty.LEAK_HOSTNAME, ["/tmp/leak.txt"], 1

    dirty_run()
    reply, _ = z.op_reset({"steps": list(zygote.RESET_STEPS)})
    assert not reply["errors"] and set(reply["timings"]) == set(zygote.RESET_STEPS)
    assert z.hostname_now == "sbx-1" and z.upper == [] and z.ipc_ns == 2
    left: dict[str, Callable[[], bool]] = {
        "hostname": lambda: z.hostname_now == dirty.LEAK_HOSTNAME,
        "upper": lambda: bool(z.upper),
        "ipc": lambda: z.ipc_ns == 1,
    }
    for step, still_there in left.items():
        dirty_run()
        z.op_reset({"steps": [s for s in zygote.RESET_STEPS if s != step]})
        assert still_there(), step


def test_skipping_the_env_step_carries_a_function_environment_over(monkeypatch: pytest.MonkeyPatch) -> None:
    from tbagent.functions import spec
    from tbagent.sandbox import sandbox as sandbox_mod

    sb = sandbox_mod.Sandbox(1, 0)
    monkeypatch.setattr(sb, "ctl", FakeCtl(), raising=False)
    monkeypatch.setattr(sb.fgroup, "kill", lambda timeout=5.0: None)
    monkeypatch.setattr(sb.fgroup, "recreate", lambda limits: None)
    monkeypatch.setattr(sb, "prepare", lambda: None)
    sb.env.update(spec("dirty").env)  # what repurpose did for dirty
    sb.release()
    assert dirty.LEAK_ENV not in sb.env and sb.env == zygote.BASE_ENV
    sb.env.update(spec("dirty").env)
    sb.release(skip=["env"])
    assert sb.env[dirty.LEAK_ENV] == "dirty-secret"


class FakeCtl:
    """Answers the sandbox init's `reset` with success."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def settimeout(self, t: float | None) -> None:
        pass

    def recv(self, n: int) -> bytes:
        return b'{"ok": true, "timings": {}, "errors": {}, "exits": {}}'

    def close(self) -> None:
        pass


def test_a_failing_step_is_reported_not_raised() -> None:
    z = FakeZygote()

    def boom() -> None:
        raise OSError(16, "busy")

    z._reset_mounts = boom  # type: ignore[method-assign]
    reply, _ = z.op_reset({"steps": ["mounts", "hostname"]})
    assert "mounts" in reply["errors"] and "hostname" not in reply["errors"]


def test_probe_event_covers_every_leaked_file() -> None:
    probe = copy.deepcopy(isolation.PROBE_EVENT)
    assert set(dirty.LEAK_FILES) <= set(probe["paths"]) and dirty.LEAK_TCP_PORT in probe["ports"]
