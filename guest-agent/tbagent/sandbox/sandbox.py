"""One sandbox, as the pool sees it: create, repurpose for a function, invoke, release, destroy.

Phases of a fresh sandbox: cgroup (z-ID for its init, fn-ID for the function), namespaces (the
factory forks; unshare; PID 1), network (veth pair + addresses), rootfs (the stage: private
mounts, pivot_root), spare (the next function's process, forked and moved into fn-ID).
Repurposing keeps all of that and changes only what depends on the function: the fn-ID limits (if
they differ), the environment, the rootfs (a new overlay of the function's layers on the emptied
upper tmpfs, mounted in the same mount namespace: no new namespace) and the process: one message
to the spare, which mounts that rootfs, attaches its cgroup view, chroots and runs the function.

Release runs the cleanup steps in CLEANUP_STEPS order, then forks the next spare. Each step can be
skipped (test-only, to show that the isolation check it backs then fails); a step that fails gets
the sandbox destroyed instead of reused.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tbagent.functions import FunctionSpec
from tbagent.lines import Closed, LinePipes
from tbagent.sandbox import layers, net, paths, proto, zygote
from tbagent.sandbox.cgroup import Group, Limits

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

# kill: cgroup.kill of fn-ID (every process, sockets closed with them)   -> processes, sockets, pids
# mounts: detach the rootfs tree with the function's own mounts          -> mounts
# upper: a new tmpfs for the upper directory                             -> files
# hostname: back to the sandbox's own                                    -> hostname
# env: the sandbox's environment back to the base (the pool's record)   -> environment variables
# ipc: a fresh IPC namespace                                             -> SysV / POSIX IPC objects
# network: the kept netns back to its link state, address and MTU         -> network configuration
# cgroup: recreate fn-ID (memory.peak, pids.peak, cpu.stat start at 0)  -> cgroup usage
CLEANUP_STEPS = ("kill", "mounts", "upper", "hostname", "env", "ipc", "network", "cgroup")
DEFAULT_LIMITS = Limits()
TIMEOUT = 30.0


def cleanup_plan(skip: Iterable[str] = ()) -> list[str]:
    skip = set(skip)
    unknown = skip - set(CLEANUP_STEPS)
    if unknown:
        raise ValueError(f"unknown cleanup step(s) {sorted(unknown)}; steps: {', '.join(CLEANUP_STEPS)}")
    return [s for s in CLEANUP_STEPS if s not in skip]


def _real_pid(zpid: int, ns_pid: int) -> int:
    """The node-wide PID of a child of the sandbox init known by its PID in the sandbox."""
    with open(f"/proc/{zpid}/task/{zpid}/children") as fh:
        for kid in fh.read().split():
            with open(f"/proc/{kid}/status") as st:
                nspid = next(ln.split()[1:] for ln in st if ln.startswith("NSpid:"))
            if len(nspid) > 1 and int(nspid[1]) == ns_pid:
                return int(kid)
    return 0


def describe_status(status: int | None) -> str | None:
    """A wait status as text: 'exit 0', 'signal 11'; None if the init did not see it exit."""
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


_LIMITS: dict[str, Limits] = {}
_OVERLAYS: dict[tuple[Path, ...], str] = {}


def limits_for(spec: FunctionSpec) -> Limits:
    if spec.name not in _LIMITS:
        base: dict[str, object] = {"memory": DEFAULT_LIMITS.memory_max, "cpu": DEFAULT_LIMITS.cpu_quota,
                                   "pids": DEFAULT_LIMITS.pids_max}
        _LIMITS[spec.name] = Limits.from_dict({**base, **spec.limits})
    return _LIMITS[spec.name]


def overlay_for(lowers: list[Path]) -> str:
    """Mount data of a function's rootfs (as the sandbox sees the store), made once per layer stack."""
    key = tuple(lowers)
    if key not in _OVERLAYS:
        _OVERLAYS[key] = layers.overlay_options([layers.in_stage(p) for p in lowers], f"{paths.IN_RW}/upper",
                                                f"{paths.IN_RW}/work")
    return _OVERLAYS[key]


class Factory:
    """The pool's handle on the factory process (see zygote.py)."""

    def __init__(self, log: Path) -> None:
        group = Group("factory")
        if not group.exists():
            group.create()
        ours, theirs = proto.pair()
        script = 'echo 0 > "$1" && exec python3 -I -m tbagent.sandbox.zygote "$2"'
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", script, "sh", str(group.path / "cgroup.procs"), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=dict(zygote.BASE_ENV))
        theirs.close()
        self.sock = ours
        self.group = group
        self.lock = threading.Lock()

    def spawn(self, cfg: JsonObject) -> tuple[socket.socket, int, float]:
        ours, theirs = proto.pair()
        try:
            with self.lock:
                proto.send(self.sock, {"op": "spawn", "cfg": cfg}, [theirs.fileno()])
                reply = proto.recv(self.sock, TIMEOUT)
            if not reply.get("ok"):
                raise OSError(f"factory: {reply.get('error')}")
        finally:
            theirs.close()
        msg = proto.recv(ours, TIMEOUT)
        return ours, int(msg["pid"]), float(msg["unshare_s"])

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.group.destroy()


class Sandbox:
    def __init__(self, sid: int, slot: int, rw_size: str = "256m") -> None:
        self.id = sid
        self.slot = slot
        self.name = f"sbx-{sid}"
        self.rw_size = rw_size
        self.zgroup = Group(f"z-{sid}")
        self.fgroup = Group(f"fn-{sid}")
        self.link = net.plan(slot, net.POOL_BASE, "tbv")
        self.ctl: socket.socket | None = None
        self.zpid = 0
        self.created: dict[str, float] = {}
        self.uses = 0
        self.function: str | None = None
        self.fsock: socket.socket | None = None
        self.fpid = 0
        self.fpipes: LinePipes | None = None  # a restored process's request and reply pipes
        self.real_fpid = 0
        self.mounts_baseline: list[str] = []
        self.limits = DEFAULT_LIMITS  # what fn-ID has now
        self.env = dict(zygote.BASE_ENV)  # the sandbox's environment: a function's is added on repurpose
        self.spare: tuple[int, socket.socket] | None = None  # the next function's process (zygote.py)

    # --- creation ------------------------------------------------------------------------------
    def create(self, factory: Factory) -> Sandbox:
        t: dict[str, float] = {}
        t0 = time.monotonic()
        try:
            self.zgroup.create()
            self.fgroup.create(DEFAULT_LIMITS)
            t1 = time.monotonic()
            t["cgroup"] = t1 - t0
            cfg = {"hostname": self.name, "fn_cgroup": self.fgroup.name, "z_cgroup": self.zgroup.name,
                   "rw_size": self.rw_size, "net_prefix": self.link.prefix}
            self.ctl, self.zpid, t["unshare"] = factory.spawn(cfg)
            t2 = time.monotonic()
            t["namespaces"] = t2 - t1
            net.attach(self.zpid, self.link)
            t3 = time.monotonic()
            t["network"] = t3 - t2
            reply = proto.call(self.ctl, {"op": "setup"}, TIMEOUT)
            self.mounts_baseline = list(reply["mounts"])
            t4 = time.monotonic()
            t["rootfs"] = t4 - t3
            self.prepare()
            t["spare"] = time.monotonic() - t4
            t["total"] = time.monotonic() - t0
        except BaseException:
            self.destroy()
            raise
        self.created = t
        return self

    def prepare(self) -> None:
        """Have the init fork the next function's process; keep its channel."""
        assert self.ctl is not None
        proto.send(self.ctl, {"op": "prepare"})
        reply, fds = proto.recv_fds(self.ctl, 1, TIMEOUT)
        if not reply.get("ok") or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(f"prepare {self.name}: {reply.get('error')}")
        self.spare = (int(reply["pid"]), socket.socket(fileno=fds[0]))

    # --- repurpose -------------------------------------------------------------------------------
    def repurpose(self, spec: FunctionSpec, env: dict[str, str] | None = None,
                  start: JsonObject | None = None, lowers: list[Path] | None = None) -> JsonObject:
        """Switch to `spec` and start its process; returns the phase timings (seconds).
        `start` picks a start hook of the sandbox init (zygote.START_HOOKS) instead of the spare."""
        assert self.ctl is not None
        if lowers is None:
            lowers = [layers.function_layer(spec), layers.base_dir()]
        t0 = time.monotonic()
        limits = limits_for(spec)
        if limits != self.limits:  # change only what must change
            self.fgroup.set_limits(limits)
            self.limits = limits
        t1 = time.monotonic()
        self.env.update(spec.env)
        self.env.update(env or {})
        msg = {"overlay": overlay_for(lowers), "env": self.env}
        hook = (start or {}).get("kind", "spare")
        if hook == "spare":
            for attempt in (1, 2):
                if self.spare is None:
                    self.prepare()  # slow path: the last cleanup could not make one
                assert self.spare is not None
                self.fpid, self.fsock = self.spare
                self.spare = None
                try:
                    proto.send(self.fsock, {**msg, "go": time.monotonic()})
                    break
                except OSError:  # the spare is gone (killed from outside): make another, once
                    self.fsock.close()
                    if attempt == 2:
                        raise
        else:
            proto.send(self.ctl, {"op": "start", "hook": hook, **msg, **dict(start or {})})
            want = 2 if hook == "restore" else 1
            reply, fds = proto.recv_fds(self.ctl, want, TIMEOUT)
            if not reply.get("ok") or len(fds) != want:
                for fd in fds:
                    os.close(fd)
                raise OSError(f"start hook {hook!r} in {self.name}: {reply.get('error')}")
            if hook == "restore":
                return self._restored(spec, int(reply["pid"]), fds, t0, t1)
            self.fpid, self.fsock = int(reply["pid"]), socket.socket(fileno=fds[0])
        self.function = spec.name
        chan = self.fsock
        assert chan is not None
        started = proto.recv(chan, TIMEOUT)
        t2 = time.monotonic()
        if not started.get("started"):
            raise OSError(f"{spec.name} did not start in {self.name}: {started.get('error')}")
        ready = proto.recv(chan, TIMEOUT)
        t3 = time.monotonic()
        if not ready.get("ready"):
            raise OSError(f"{spec.name} failed to initialise: {ready.get('error')}")
        marks = {str(k): float(v) for k, v in dict(started.get("marks", {})).items()}
        marks["started"] = float(started["started"])
        steps = ["go", "woke", "rootfs", "cgroupns", "chroot", "started"]
        detail = {f"process.{b}": marks[b] - marks[a] for a, b in itertools.pairwise(steps) if a in marks and b in marks}
        detail["process.delivered"] = t2 - marks["started"]
        rootfs = detail.pop("process.rootfs", 0.0)
        return {**detail, "namespaces": 0.0, "network": 0.0, "cgroup": t1 - t0, "rootfs": rootfs,
                "process": (t2 - t1) - rootfs, "ready_sandbox": t2 - t0, "function_init": float(ready["init_s"]),
                "ready_function": t3 - t0, "started_at": marks["started"]}

    def _restored(self, spec: FunctionSpec, pid: int, fds: list[int], t0: float, t1: float) -> JsonObject:
        """A process restored by the "restore" hook: JSON lines over pipes (tbagent.snap.fnserver)."""
        t2 = time.monotonic()
        self.fpid, self.fpipes, self.function = pid, LinePipes(fds[0], fds[1]), spec.name
        self.real_fpid = _real_pid(self.zpid, pid)
        ping = self._pipe_call({"op": "ping"}, TIMEOUT)
        if not ping.get("ok"):
            raise OSError(f"restored {spec.name} in {self.name} does not answer: {ping.get('error')}")
        t3 = time.monotonic()
        return {"namespaces": 0.0, "network": 0.0, "cgroup": t1 - t0, "restore": t2 - t1, "ready_sandbox": t2 - t0,
                "ready_function": t3 - t0, "function_pid": self.real_fpid}

    def _pipe_call(self, req: JsonObject, timeout: float | None) -> JsonObject:
        assert self.fpipes is not None
        try:
            return self.fpipes.call(req, timeout)
        except Closed:
            return {"ok": False, "crashed": True, "error": "function process died"}
        except TimeoutError:
            return {"ok": False, "error": f"no answer within {timeout}s"}

    def invoke(self, event: JsonObject, timeout: float | None = TIMEOUT) -> JsonObject:
        if self.fpipes is not None:
            t0 = time.monotonic()
            reply = self._pipe_call({"op": "invoke", "event": event}, timeout)
            reply["invoke_s"] = time.monotonic() - t0
            return reply
        if self.fsock is None:
            raise OSError(f"{self.name} runs no function")
        t0 = time.monotonic()
        try:
            proto.send(self.fsock, {"event": event})
            reply = proto.recv(self.fsock, timeout)
        except (proto.Closed, BrokenPipeError, ConnectionResetError) as exc:
            reply = {"ok": False, "crashed": True, "error": f"function process died: {exc}"}
        except TimeoutError:
            reply = {"ok": False, "error": f"no answer within {timeout}s"}
        reply["invoke_s"] = time.monotonic() - t0
        return reply

    # --- release ---------------------------------------------------------------------------------
    def release(self, skip: Iterable[str] = ()) -> JsonObject:
        """Clean up after a function. `clean` False means the sandbox must not be reused."""
        assert self.ctl is not None
        steps = cleanup_plan(skip)
        timings: dict[str, float] = {}
        errors: dict[str, str] = {}
        for s in (self.fsock, self.spare[1] if self.spare else None):
            if s is not None:  # an unused spare (a start hook ran instead) goes with the kill too
                s.close()
        if self.fpipes is not None:
            self.fpipes.close()
        self.fsock = self.spare = self.fpipes = None
        if "kill" in steps:
            t0 = time.monotonic()
            try:
                self.fgroup.kill()
            except (OSError, TimeoutError) as exc:
                errors["kill"] = str(exc)
            timings["kill"] = time.monotonic() - t0
        if "env" in steps:
            t0 = time.monotonic()
            self.env = dict(zygote.BASE_ENV)
            timings["env"] = time.monotonic() - t0
        inside = [s for s in steps if s in zygote.RESET_STEPS]
        exits: dict[str, int] = {}
        try:
            reply = proto.call(self.ctl, {"op": "reset", "steps": inside}, TIMEOUT)
            timings.update(reply["timings"])
            errors.update(reply["errors"])
            exits = {k: int(v) for k, v in reply["exits"].items()}
        except (OSError, proto.Closed) as exc:
            errors["reset"] = str(exc)
        if "cgroup" in steps:
            t0 = time.monotonic()
            try:
                self.fgroup.recreate(DEFAULT_LIMITS)
                self.limits = DEFAULT_LIMITS
            except OSError as exc:
                errors["cgroup"] = str(exc)
            timings["cgroup"] = time.monotonic() - t0
        if not errors and self.spare is None:  # the next function's process, off its start path
            t0 = time.monotonic()
            try:
                self.prepare()
            except (OSError, proto.Closed) as exc:
                errors["prepare"] = str(exc)
            timings["spare"] = time.monotonic() - t0
        status = exits.get(str(self.fpid))
        self.uses += 1
        self.function = None
        return {"clean": not errors, "function_exit": describe_status(status), "steps": steps,
                "skipped": [s for s in CLEANUP_STEPS if s not in steps],
                "timings": timings, "errors": errors}

    # --- observation -----------------------------------------------------------------------------
    def inspect(self) -> JsonObject:
        assert self.ctl is not None
        view = proto.call(self.ctl, {"op": "inspect"}, TIMEOUT)
        view.pop("ok", None)
        view["mounts_baseline"] = self.mounts_baseline
        view["cgroup"] = self.fgroup.stats() if self.fgroup.exists() else {}
        view["init_memory"] = self.zgroup.stats()
        view["netns_tcp"] = Path(f"/proc/{self.zpid}/net/tcp").read_text().splitlines()[1:]
        return view

    def describe(self) -> JsonObject:
        def current(g: Group) -> int | None:
            return g.stats().get("memory.current") if g.exists() else None

        return {"id": self.id, "name": self.name, "slot": self.slot, "init_pid": self.zpid, "uses": self.uses,
                "function": self.function, "address": self.link.peer_ip, "veth": self.link.host_if,
                "init_memory_current": current(self.zgroup), "fn_memory_current": current(self.fgroup),
                "created": self.created}

    # --- destruction -----------------------------------------------------------------------------
    def destroy(self) -> None:
        """Kill everything (the init first: its PID namespace takes every process with it)."""
        for s in (self.fsock, self.ctl, self.spare[1] if self.spare else None):
            if s is not None:
                s.close()
        if self.fpipes is not None:
            self.fpipes.close()
        self.fsock = self.ctl = self.fpipes = None
        self.spare = None
        for g in (self.zgroup, self.fgroup):
            try:
                g.destroy()
            except (OSError, TimeoutError) as exc:
                print(f"tbagent sandbox: cannot remove cgroup {g.name}: {exc}", file=sys.stderr)
        try:
            net.delete_link(self.link.host_if)
        except OSError as exc:
            print(f"tbagent sandbox: cannot delete {self.link.host_if}: {exc}", file=sys.stderr)
