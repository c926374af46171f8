"""The pool: N pre-created, type-agnostic sandboxes; leases; exhaustion policy; replacement.

acquire(F): an idle sandbox is repurposed for F. With none idle, by policy:
  queue     wait (up to a timeout) until one is released;
  fallback  create a fresh sandbox now (up to max_size in all); on release, a sandbox beyond the
            pool's size is destroyed rather than kept.
release: the sandbox's cleanup steps; if one fails the sandbox is destroyed and a replacement is
created in the background, so the pool keeps its size.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tbagent.functions import spec as function_spec
from tbagent.sandbox import cgroup, layers, net, paths
from tbagent.sandbox.sandbox import Factory, Sandbox, cleanup_plan
from tbagent.sandbox.zygote import START_HOOKS

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

    from tbagent.functions import FunctionSpec

POLICIES = ("queue", "fallback")


class Exhausted(RuntimeError):
    pass


class SandboxLike(Protocol):
    id: int
    slot: int
    created: dict[str, float]

    def repurpose(self, spec: FunctionSpec, env: dict[str, str] | None = None, start: JsonObject | None = None,
                  lowers: list[Path] | None = None) -> JsonObject: ...
    def invoke(self, event: JsonObject, timeout: float | None = ...) -> JsonObject: ...
    def release(self, skip: Iterable[str] = ()) -> JsonObject: ...
    def inspect(self) -> JsonObject: ...
    def describe(self) -> JsonObject: ...
    def destroy(self) -> None: ...


@dataclass
class PoolConfig:
    size: int = 2
    on_exhausted: str = "queue"
    max_size: int = 16
    queue_timeout: float = 60.0
    allow_skip: bool = False      # test-only: honour requests to skip cleanup steps
    rw_size: str = "256m"

    def __post_init__(self) -> None:
        if self.on_exhausted not in POLICIES:
            raise ValueError(f"on_exhausted must be one of {POLICIES}, not {self.on_exhausted!r}")
        if not 0 <= self.size <= self.max_size <= net.MAX_SLOTS:
            raise ValueError(f"need 0 <= size ({self.size}) <= max ({self.max_size}) <= {net.MAX_SLOTS}")


@dataclass
class Lease:
    id: str
    sandbox: SandboxLike
    function: str
    fresh: bool
    waited_s: float
    timings: JsonObject = field(default_factory=dict)


class Pool:
    def __init__(self, cfg: PoolConfig, make: Callable[[int, int], SandboxLike] | None = None) -> None:
        self.cfg = cfg
        self._make_fn = make
        self._factory: Factory | None = None
        self._cond = threading.Condition()
        self._idle: list[SandboxLike] = []
        self._leases: dict[str, Lease] = {}
        self._total = 0                # idle + leased + being created
        self._slots: set[int] = set()
        self._ids = itertools.count(1)
        self._lease_ids = itertools.count(1)
        self._layers: dict[str, list[Path]] = {}
        self._lockfd = -1
        self.stats = {"created": 0, "destroyed": 0, "unclean": 0, "fallback": 0, "queued": 0, "reused": 0}

    # --- life cycle ------------------------------------------------------------------------------
    def start(self) -> Pool:
        """Own the node's sandbox machinery, sweep a dead pool's leftovers, build the base, fill."""
        if self._make_fn is None:
            for d in (paths.RUN, paths.LOGS, paths.STAGE):
                d.mkdir(parents=True, exist_ok=True)
            self._lockfd = os.open(paths.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lockfd)
                raise RuntimeError(f"another sandbox pool owns this node ({paths.LOCK})") from None
            sweep()
            cgroup.ensure_tree()
            layers.build_base()
        self.fill()
        return self

    def close(self) -> None:
        with self._cond:
            victims = self._idle + [lease.sandbox for lease in self._leases.values()]
            self._idle, self._leases = [], {}
        for sb in victims:
            self._destroy(sb)
        if self._factory is not None:
            self._factory.close()
            self._factory = None
        if self._lockfd >= 0:
            os.close(self._lockfd)
            self._lockfd = -1

    def _make(self, sid: int, slot: int) -> SandboxLike:
        if self._make_fn is not None:
            return self._make_fn(sid, slot)
        with self._cond:
            if self._factory is None or self._factory.proc.poll() is not None:  # gone: make another
                if self._factory is not None:
                    self._factory.close()
                self._factory = Factory(paths.LOGS / "factory.log")
            factory = self._factory
        return Sandbox(sid, slot, self.cfg.rw_size).create(factory)

    def _create(self) -> SandboxLike:
        """Create one sandbox; the caller has already counted it in _total."""
        with self._cond:
            slot = min(set(range(net.MAX_SLOTS)) - self._slots)
            self._slots.add(slot)
            sid = next(self._ids)
        try:
            sb = self._make(sid, slot)
        except BaseException:
            with self._cond:
                self._slots.discard(slot)
                self._total -= 1
                self._cond.notify_all()
            raise
        self.stats["created"] += 1
        return sb

    def fill(self) -> None:
        while True:
            with self._cond:
                if self._total >= self.cfg.size:
                    return
                self._total += 1
            sb = self._create()
            with self._cond:
                self._idle.append(sb)
                self._cond.notify_all()

    def resize(self, size: int) -> None:
        PoolConfig(size, self.cfg.on_exhausted, max(self.cfg.max_size, size))  # validates
        with self._cond:
            self.cfg.size = size
            self.cfg.max_size = max(self.cfg.max_size, size)
            surplus = []
            while self._total > size and self._idle:
                surplus.append(self._idle.pop(0))
                self._total -= 1
        for sb in surplus:
            self._destroy(sb, counted=False)
        self.fill()

    def _destroy(self, sb: SandboxLike, counted: bool = True) -> None:
        sb.destroy()
        self.stats["destroyed"] += 1
        with self._cond:
            self._slots.discard(sb.slot)
            if counted:
                self._total -= 1
            self._cond.notify_all()

    def _replenish(self) -> None:
        threading.Thread(target=self._fill_quietly, name="replenish", daemon=True).start()

    def _fill_quietly(self) -> None:
        try:
            self.fill()
        except Exception as exc:  # the next acquire will report a creation failure itself
            print(f"tbagent sandbox: cannot replenish the pool: {exc}", flush=True)

    # --- leases ----------------------------------------------------------------------------------
    def lowers(self, function: str) -> list[Path]:
        if function not in self._layers:
            self._layers[function] = [layers.function_layer(function_spec(function)), layers.base_dir()]
        return self._layers[function]

    def acquire(self, function: str, env: dict[str, str] | None = None, on_exhausted: str | None = None,
                timeout: float | None = None, start: JsonObject | None = None, fresh: bool = False) -> Lease:
        """A sandbox repurposed for `function`; `fresh`: one created from scratch even if some are
        idle (the baseline: a new sandbox per instance)."""
        spec = function_spec(function)
        lowers = self.lowers(function) if self._make_fn is None else None
        policy = on_exhausted or self.cfg.on_exhausted
        if policy not in POLICIES:
            raise ValueError(f"on_exhausted must be one of {POLICIES}")
        hook = (start or {}).get("kind", "spare")
        if hook != "spare" and hook not in START_HOOKS:
            raise ValueError(f"unknown start hook {hook!r}; hooks: spare, {', '.join(START_HOOKS)}")
        t0 = time.monotonic()
        asked_fresh, fresh = fresh, False
        with self._cond:
            if asked_fresh:
                if self._total >= self.cfg.max_size:
                    raise Exhausted(f"pool at its maximum of {self.cfg.max_size} sandboxes")
                self._total += 1
                fresh = True
            elif not self._idle and policy == "fallback" and self._total < self.cfg.max_size:
                self._total += 1
                fresh = True
            elif not self._idle:
                if policy == "fallback":
                    raise Exhausted(f"pool exhausted and at its maximum of {self.cfg.max_size} sandboxes")
                self.stats["queued"] += 1
                if not self._cond.wait_for(lambda: bool(self._idle), timeout or self.cfg.queue_timeout):
                    raise Exhausted(f"no sandbox was released within {timeout or self.cfg.queue_timeout}s")
            sb = None if fresh else self._idle.pop()
        waited = time.monotonic() - t0
        if sb is None:
            self.stats["fallback"] += 1
            sb = self._create()
        else:
            self.stats["reused"] += 1
        try:
            timings = sb.repurpose(spec, env, start, lowers)
        except BaseException:
            self._destroy(sb)
            self._replenish()
            raise
        if fresh:
            timings["created"] = sb.created
        lease = Lease(f"L{next(self._lease_ids)}", sb, function, fresh, waited, timings)
        with self._cond:
            self._leases[lease.id] = lease
        return lease

    def lease(self, lease_id: str) -> Lease:
        with self._cond:
            try:
                return self._leases[lease_id]
            except KeyError:
                raise KeyError(f"no lease {lease_id!r}") from None

    def invoke(self, lease_id: str, event: JsonObject, timeout: float | None = None) -> JsonObject:
        return self.lease(lease_id).sandbox.invoke(event, timeout)

    def release(self, lease_id: str, skip: Iterable[str] = (), destroy: bool = False) -> JsonObject:
        skip = list(skip)
        if skip and not self.cfg.allow_skip:
            raise PermissionError("skipping cleanup steps is a test hook; start the pool with --test-hooks")
        cleanup_plan(skip)  # validates before anything is done
        with self._cond:
            lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise KeyError(f"no lease {lease_id!r}")
        sb = lease.sandbox
        if destroy:
            self._destroy(sb)
            self._replenish()
            return {"clean": None, "outcome": "destroyed (requested)"}
        report = sb.release(skip)
        if not report["clean"]:
            self.stats["unclean"] += 1
            self._destroy(sb)
            self._replenish()
            report["outcome"] = "destroyed (cleanup failed)"
            return report
        with self._cond:
            surplus = self._total > self.cfg.size
            if not surplus:
                self._idle.append(sb)
                self._cond.notify_all()
        if surplus:
            self._destroy(sb)
            report["outcome"] = "destroyed (beyond pool size)"
        else:
            report["outcome"] = "returned to pool"
        return report

    def inspect(self, lease_id: str) -> JsonObject:
        return self.lease(lease_id).sandbox.inspect()

    def status(self) -> JsonObject:
        with self._cond:
            idle = [sb.describe() for sb in self._idle]
            busy = [dict(lease.sandbox.describe(), lease=lease.id) for lease in self._leases.values()]
            total = self._total
        return {"size": self.cfg.size, "max": self.cfg.max_size, "on_exhausted": self.cfg.on_exhausted,
                "test_hooks": self.cfg.allow_skip, "total": total, "idle": idle, "busy": busy, "stats": dict(self.stats)}


def sweep() -> list[str]:
    """Remove what a dead pool left behind: its cgroups (and so its processes) and host veths."""
    gone = []
    for g in cgroup.stale_groups():
        if g.name.startswith("oci-"):
            continue  # the crun baseline's, which cleans up after itself
        g.destroy()
        gone.append(f"cgroup {g.name}")
    for link in net.stale_links(("tbv",)):
        net.delete_link(link)
        gone.append(f"link {link}")
    return gone
