"""`tbagent sandbox ...`: the pool daemon, its client commands, the crun baseline, the benchmark."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from tbagent.errors import command
from tbagent.sandbox import paths
from tbagent.sandbox.pool import POLICIES, PoolConfig
from tbagent.sandbox.sandbox import CLEANUP_STEPS

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject

    from tbagent.commands import Subcommands


def _config(args: argparse.Namespace) -> PoolConfig:
    return PoolConfig(size=args.size, on_exhausted=args.on_exhausted, max_size=max(args.max, args.size),
                      allow_skip=args.test_hooks, rw_size=args.rw_size)


def _print(obj: Json) -> None:
    print(json.dumps(obj, indent=None, sort_keys=True))


_user_errors = command("sandbox")  # refusals (another pool owns the node, a daemon is running): one line


@_user_errors
def cmd_serve(args: argparse.Namespace) -> int:
    from tbagent.sandbox import server

    return server.serve(_config(args))


def op_pool(size: int, max: int = 16, on_exhausted: str = "queue", timeout: float = 180.0,
            rw_size: str = "256m", test_hooks: bool = False) -> JsonObject:
    """Start the daemon with a pool of `size` (or resize a running one); its status. A running
    daemon keeps its on_exhausted and test hooks: `warning` says so when they differ."""
    from tbagent.sandbox import server

    cfg = PoolConfig(size=size, on_exhausted=on_exhausted, max_size=size if size > max else max, allow_skip=test_hooks,
                     rw_size=rw_size)
    if not server.running():
        paths.LOGS.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tbagent.cli", "sandbox", "serve", "--size", str(cfg.size),
                "--on-exhausted", cfg.on_exhausted, "--max", str(cfg.max_size), "--rw-size", cfg.rw_size,
                *(["--test-hooks"] if cfg.allow_skip else [])]
        with open(paths.LOGS / "serve.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not server.running():
            if proc.poll() is not None:
                tail = (paths.LOGS / "serve.log").read_text(errors="replace").strip().splitlines()[-8:]
                raise OSError("the pool daemon exited during start-up:\n" + "\n".join(tail))
            if time.monotonic() > deadline:
                raise OSError(f"the pool daemon is not ready after {timeout}s")
            time.sleep(0.1)
    warning = None
    with server.Client() as c:
        status: JsonObject = c.call("status")
        if (status["on_exhausted"], status["test_hooks"]) != (cfg.on_exhausted, cfg.allow_skip):
            warning = (f"the running daemon keeps on_exhausted={status['on_exhausted']} "
                       f"test_hooks={status['test_hooks']}; stop it to change them")
        if status["size"] != cfg.size:
            status = c.call("resize", size=cfg.size)
    return {**status, "warning": warning} if warning else status


@_user_errors
def cmd_pool(args: argparse.Namespace) -> int:
    """Start the daemon with a pool of --size (or resize a running one); print its status."""
    status = op_pool(args.size, args.max, args.on_exhausted, args.timeout, args.rw_size, args.test_hooks)
    if (warning := status.pop("warning", None)) is not None:
        print(f"tbagent sandbox: {warning}", file=sys.stderr)
    _print(status)
    return 0


def _call(op: str, **kw: Json) -> JsonObject:
    from tbagent.sandbox import server

    try:
        c = server.Client()
    except OSError as exc:
        raise OSError(f"no pool daemon on {paths.SOCKET} ({exc.strerror}); start one: tbagent sandbox pool --size N") from exc
    with c:
        return c.call(op, check=False, **kw)


def cmd_status(args: argparse.Namespace) -> int:
    reply = _call("status")
    _print(reply)
    return 0 if reply.get("ok") else 1


def op_run(function: str, event: JsonObject | None = None, env: dict[str, str] | None = None,
           skip: list[str] | None = None, on_exhausted: str | None = None, timeout: float | None = None) -> JsonObject:
    """Run `function` once in a repurposed sandbox of the pool: the daemon's record."""
    return _call("run", function=function, event=event or {}, env=env or {}, skip=skip or [],
                 on_exhausted=on_exhausted, timeout=timeout)


def cmd_run(args: argparse.Namespace) -> int:
    env = dict(kv.split("=", 1) for kv in args.env)
    reply = op_run(args.function, json.loads(args.event), env, args.skip, args.on_exhausted, args.timeout)
    _print(reply)
    return 0 if reply.get("ok") and reply["reply"].get("ok") else 1


def _lock_held() -> bool:
    """Whether a pool still owns the node (the daemon releases its lock after destroying all)."""
    try:
        fd = os.open(paths.LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def op_stop(timeout: float = 60.0) -> JsonObject:
    """Destroy every sandbox of the pool and stop its daemon; TimeoutError if it does not stop."""
    from tbagent.sandbox import server

    if not server.running():
        return {"stopped": False}
    _call("stop")
    deadline = time.monotonic() + timeout
    while paths.SOCKET.exists() or _lock_held():
        if time.monotonic() > deadline:
            raise TimeoutError("the pool daemon did not stop in time")
        time.sleep(0.1)
    return {"stopped": True}


def cmd_stop(args: argparse.Namespace) -> int:
    try:
        stopped = op_stop(args.timeout)["stopped"]
    except TimeoutError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("stopped" if stopped else "no pool daemon running")
    return 0


def op_fresh(function: str, event: JsonObject | None = None, variant: str = "full", slot: int = 0) -> JsonObject:
    """The baseline: one sandbox crun makes from scratch, the function run once in it, destroyed."""
    from tbagent.functions import spec as function_spec
    from tbagent.sandbox import cgroup, layers, oci
    from tbagent.sandbox.sandbox import limits_for

    spec = function_spec(function)
    cgroup.ensure_tree()
    layers.build_base()
    oci.sweep()
    box = oci.OciSandbox(slot, variant)
    try:
        timings = box.create(spec, [layers.function_layer(spec), layers.base_dir()], limits_for(spec))
        reply = box.invoke(event or {})
    finally:
        destroy_s = box.destroy()
    return {"ok": True, "timings": timings, "reply": reply, "destroy_s": destroy_s}


def cmd_oci(args: argparse.Namespace) -> int:
    out = op_fresh(args.function, json.loads(args.event), args.variant, args.slot)
    _print(out)
    return 0 if out["reply"].get("ok") else 1


@_user_errors
def cmd_bench(args: argparse.Namespace) -> int:
    from tbagent.sandbox import bench

    _print(bench.run(args.function, args.runs, args.oci_runs, args.variant_runs, args.memory_sandboxes))
    return 0


def cmd_base(args: argparse.Namespace) -> int:
    from tbagent.sandbox import layers

    t0 = time.monotonic()
    path = layers.build_base()
    _print({"base": str(path), "seconds": time.monotonic() - t0})
    return 0


def _pool_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=2, help="sandboxes kept ready (default 2)")
    p.add_argument("--on-exhausted", choices=POLICIES, default="queue", help="with none idle: wait, or create one")
    p.add_argument("--max", type=int, default=16, help="most sandboxes in all, fallback ones included")
    p.add_argument("--rw-size", default="256m", help="tmpfs size of each sandbox's upper directory")
    p.add_argument("--test-hooks", action="store_true", help="test only: let release requests skip cleanup steps")


def register(sub: Subcommands) -> None:
    sb = sub.add_parser("sandbox", help="a pool of reusable, type-agnostic sandboxes").add_subparsers(dest="sbverb", required=True)
    p = sb.add_parser("serve", help="run the pool daemon in the foreground")
    _pool_args(p)
    p.set_defaults(fn=cmd_serve)
    p = sb.add_parser("pool", help="start the pool daemon with N sandboxes (or resize it); print its status")
    _pool_args(p)
    p.add_argument("--timeout", type=float, default=180.0)
    p.set_defaults(fn=cmd_pool)
    sb.add_parser("status", help="the pool's sandboxes and counters as JSON").set_defaults(fn=cmd_status)
    p = sb.add_parser("run", help="run a function once in a pooled sandbox")
    p.add_argument("function")
    p.add_argument("--event", default="{}", help="the invocation's event (JSON)")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--skip", action="append", default=[], choices=CLEANUP_STEPS, help="test only: skip a cleanup step")
    p.add_argument("--on-exhausted", choices=POLICIES)
    p.add_argument("--timeout", type=float, help="how long to queue for a sandbox")
    p.set_defaults(fn=cmd_run)
    p = sb.add_parser("stop", help="destroy every sandbox and stop the daemon")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(fn=cmd_stop)
    p = sb.add_parser("oci", help="baseline: one sandbox made from scratch by crun; run the function once")
    p.add_argument("function")
    p.add_argument("--event", default="{}")
    p.add_argument("--variant", choices=("full", "no-ns", "no-cgroup", "no-mounts"), default="full")
    p.add_argument("--slot", type=int, default=0)
    p.set_defaults(fn=cmd_oci)
    p = sb.add_parser("bench", help="time repurposed against crun-created sandboxes; idle memory (JSON)")
    p.add_argument("--function", default="hello")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--oci-runs", type=int, default=50)
    p.add_argument("--variant-runs", type=int, default=15)
    p.add_argument("--memory-sandboxes", type=int, default=8)
    p.set_defaults(fn=cmd_bench)
    sb.add_parser("base", help="build the shared base layer from this node's root").set_defaults(fn=cmd_base)
