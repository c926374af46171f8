"""Pool logic with fake sandboxes: leases, reuse, exhaustion (fallback and queue), destruction of
sandboxes whose cleanup failed, the test-only skip hook (no root, no VM)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from tbagent.sandbox import sandbox as sandbox_mod
from tbagent.sandbox.pool import Exhausted, Pool, PoolConfig

REPO = Path(__file__).resolve().parents[2]


class FakeSandbox:
    def __init__(self, sid: int, slot: int, fail_cleanup: set[int]) -> None:
        self.id, self.slot = sid, slot
        self.created: dict[str, float] = {"total": 0.001}
        self.destroyed = False
        self.functions: list[str] = []
        self.skipped: list[list[str]] = []
        self._fail = fail_cleanup

    def repurpose(self, spec: Any, env: dict[str, str] | None = None, start: dict[str, Any] | None = None,
                  lowers: list[Path] | None = None) -> dict[str, Any]:
        self.functions.append(spec.name)
        return {"ready_sandbox": 0.001}

    def invoke(self, event: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return {"ok": True, "result": {"sandbox": self.id}}

    def release(self, skip: Iterable[str] = ()) -> dict[str, Any]:
        self.skipped.append(list(skip))
        return {"clean": self.id not in self._fail, "errors": {} if self.id not in self._fail else {"kill": "x"}}

    def inspect(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"id": self.id}

    def destroy(self) -> None:
        self.destroyed = True


def make_pool(size: int = 1, fail: set[int] | None = None, **kw: Any) -> tuple[Pool, list[FakeSandbox]]:
    made: list[FakeSandbox] = []

    def make(sid: int, slot: int) -> FakeSandbox:
        sb = FakeSandbox(sid, slot, fail or set())
        made.append(sb)
        return sb

    return Pool(PoolConfig(size=size, **kw), make=make).start(), made


def test_pool_precreates_and_reuses_one_sandbox_across_functions() -> None:
    pool, made = make_pool(size=2)
    assert len(made) == 2 and pool.status()["total"] == 2
    seen = []
    for fn in ("hello", "jsonrt", "matmul"):
        lease = pool.acquire(fn)
        assert not lease.fresh
        seen.append(lease.sandbox.id)
        assert pool.invoke(lease.id, {})["ok"]
        assert pool.release(lease.id)["outcome"] == "returned to pool"
    assert len(set(seen)) == 1 and made[1].functions == ["hello", "jsonrt", "matmul"]
    assert pool.stats["reused"] == 3 and pool.stats["created"] == 2


def test_unknown_function_is_refused_before_taking_a_sandbox() -> None:
    pool, _ = make_pool()
    with pytest.raises(ValueError, match="unknown function"):
        pool.acquire("nope")
    assert len(pool.status()["idle"]) == 1


def test_fallback_creates_a_fresh_sandbox_and_drops_it_on_release() -> None:
    pool, made = make_pool(size=1, on_exhausted="fallback", max_size=2)
    held = pool.acquire("hello")
    extra = pool.acquire("hello")
    assert extra.fresh and extra.sandbox.id != held.sandbox.id and "created" in extra.timings
    with pytest.raises(Exhausted, match="maximum"):
        pool.acquire("hello")
    assert pool.release(extra.id)["outcome"] == "destroyed (beyond pool size)"
    assert made[1].destroyed and pool.status()["total"] == 1
    assert pool.release(held.id)["outcome"] == "returned to pool"


def test_queue_waits_for_a_release_and_gets_that_sandbox() -> None:
    pool, _ = make_pool(size=1, on_exhausted="queue")
    held = pool.acquire("hello")
    got: dict[str, Any] = {}

    def waiter() -> None:
        lease = pool.acquire("jsonrt")
        got.update(sandbox=lease.sandbox.id, waited=lease.waited_s)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    assert not got
    pool.release(held.id)
    t.join(5)
    assert got["sandbox"] == held.sandbox.id and got["waited"] >= 0.15


def test_queue_times_out_and_a_request_may_override_the_policy() -> None:
    pool, _ = make_pool(size=1, on_exhausted="queue")
    pool.acquire("hello")
    with pytest.raises(Exhausted, match="released within"):
        pool.acquire("hello", timeout=0.1)
    assert pool.acquire("hello", on_exhausted="fallback").fresh


def test_a_sandbox_whose_cleanup_fails_is_destroyed_and_replaced() -> None:
    pool, made = make_pool(size=1, fail={1})
    lease = pool.acquire("hello")
    report = pool.release(lease.id)
    assert report["outcome"] == "destroyed (cleanup failed)" and made[0].destroyed
    lease = pool.acquire("hello")  # queues until the replacement exists
    assert lease.sandbox.id == 2 and pool.stats["unclean"] == 1


def test_skipping_cleanup_steps_is_a_test_hook_only() -> None:
    pool, _ = make_pool(size=1)
    lease = pool.acquire("hello")
    with pytest.raises(PermissionError):
        pool.release(lease.id, skip=["upper"])
    hooked, made2 = make_pool(size=1, allow_skip=True)
    lease = hooked.acquire("hello")
    with pytest.raises(ValueError, match="unknown cleanup step"):
        hooked.release(lease.id, skip=["nope"])
    hooked.release(lease.id, skip=["upper"])
    assert made2[0].skipped == [["upper"]]


def test_destroy_on_request_and_resize() -> None:
    pool, made = make_pool(size=2)
    lease = pool.acquire("hello")
    assert pool.release(lease.id, destroy=True)["outcome"] == "destroyed (requested)"
    deadline = time.monotonic() + 5
    while pool.status()["total"] < 2 or len(pool.status()["idle"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pool.resize(1)
    assert pool.status()["total"] == 1 and sum(sb.destroyed for sb in made) == 2
    pool.resize(3)
    assert len(pool.status()["idle"]) == 3
    pool.close()
    assert all(sb.destroyed for sb in made)


def test_cleanup_plan_keeps_the_order_and_validates() -> None:
    assert sandbox_mod.cleanup_plan() == list(sandbox_mod.CLEANUP_STEPS)
    assert sandbox_mod.cleanup_plan(["kill", "cgroup"]) == ["mounts", "upper", "hostname", "env", "ipc", "network"]
    with pytest.raises(ValueError):
        sandbox_mod.cleanup_plan(["bogus"])


def test_pool_config_validates() -> None:
    with pytest.raises(ValueError):
        PoolConfig(on_exhausted="drop")
    with pytest.raises(ValueError):
        PoolConfig(size=5, max_size=2)
