"""The per-node pool daemon (`tbagent sandbox serve`) and its client.

Protocol: a unix stream socket, one JSON object per line each way. Requests carry "op":
  status | acquire {function, env?, on_exhausted?, timeout?} | invoke {lease, event?, timeout?}
  | inspect {lease} | release {lease, skip?, destroy?} | run {function, event?, env?, skip?, ...}
  | resize {size} | stop
Answers carry "ok" and, on failure, "error". Leases still held when their connection closes are
released, so a client that dies does not leak sandboxes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tbagent.sandbox import paths
from tbagent.sandbox.pool import Exhausted, Lease, Pool, PoolConfig

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject


class ClientError(RuntimeError):
    pass


def _lease_reply(lease: Lease) -> JsonObject:
    return {"lease": lease.id, "sandbox": lease.sandbox.id, "fresh": lease.fresh, "waited_s": lease.waited_s,
            "timings": lease.timings}


def dispatch(pool: Pool, req: JsonObject, owned: set[str], stop: threading.Event) -> JsonObject:
    op = req.get("op")
    if op == "status":
        return pool.status()
    if op == "acquire":
        lease = pool.acquire(str(req["function"]), req.get("env"), req.get("on_exhausted"), req.get("timeout"),
                             req.get("start"), bool(req.get("fresh", False)))
        owned.add(lease.id)
        return _lease_reply(lease)
    if op == "invoke":
        return {"reply": pool.invoke(str(req["lease"]), req.get("event", {}), req.get("timeout", 60.0))}
    if op == "inspect":
        return pool.inspect(str(req["lease"]))
    if op == "release":
        owned.discard(str(req["lease"]))
        return pool.release(str(req["lease"]), req.get("skip", ()), bool(req.get("destroy", False)))
    if op == "run":
        lease = pool.acquire(str(req["function"]), req.get("env"), req.get("on_exhausted"), req.get("timeout"))
        try:
            reply = pool.invoke(lease.id, req.get("event", {}), req.get("invoke_timeout", 60.0))
        finally:
            release = pool.release(lease.id, req.get("skip", ()))
        return {**_lease_reply(lease), "reply": reply, "release": release}
    if op == "resize":
        pool.resize(int(req["size"]))
        return pool.status()
    if op == "stop":
        stop.set()
        return {"stopping": True}
    raise ValueError(f"unknown op {op!r}")


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        owned: set[str] = set()
        try:
            for line in self.rfile:
                try:
                    req = json.loads(line)
                    reply = dispatch(self.server.pool, req, owned, self.server.stop_event)
                    reply["ok"] = True
                except (ValueError, KeyError, OSError, PermissionError, Exhausted, TimeoutError, RuntimeError) as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")
                self.wfile.flush()
        finally:
            for lease in owned:
                try:
                    self.server.pool.release(lease)
                except (KeyError, OSError, RuntimeError):
                    pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, pool: Pool) -> None:
        self.pool = pool
        self.stop_event = threading.Event()
        super().__init__(path, _Handler)


def running(path: Path | None = None) -> bool:
    path = path or paths.SOCKET
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
        return True
    except OSError:
        return False


def serve(cfg: PoolConfig, path: Path | None = None) -> int:
    path = path or paths.SOCKET
    if running(path):
        raise RuntimeError(f"a pool daemon already listens on {path}")
    pool = Pool(cfg)
    try:
        pool.start()
        path.unlink(missing_ok=True)
        server = _Server(str(path), pool)
        os.chmod(path, 0o600)
        signal.signal(signal.SIGTERM, lambda *_: server.stop_event.set())
        def stop_when_asked() -> None:
            server.stop_event.wait()
            server.shutdown()

        threading.Thread(target=stop_when_asked, daemon=True).start()
        print(f"tbagent sandbox: pool of {cfg.size} ready on {path}", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
            path.unlink(missing_ok=True)
    finally:
        pool.close()
    return 0


class Client:
    def __init__(self, path: Path | None = None, timeout: float | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path or paths.SOCKET))
        self.file = self.sock.makefile("rwb")

    def call(self, op: str, check: bool = True, **kw: Json) -> JsonObject:
        self.file.write(json.dumps({"op": op, **kw}).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise ClientError("the pool daemon closed the connection")
        reply: JsonObject = json.loads(line)
        if check and not reply.get("ok"):
            raise ClientError(str(reply.get("error")))
        return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_ready(path: Path | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not running(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no pool daemon on {path or paths.SOCKET} after {timeout}s; see {paths.LOGS}/serve.log")
        time.sleep(0.1)
