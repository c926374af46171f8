"""The function process: loads /function/handler.py and answers invocations on its channel.

Two ways in: forked by a sandbox init (`serve(sock)`, the pool's path), or exec'd by crun as the
OCI container's process (`python3 -m tbagent.sandbox.runner`, the channel socket on fd 0).
Messages out: {"started"}, then {"ready"} (or {"ready": false, "error"}), then one reply per
invocation {"ok", "result" | "error", "run_s"}.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from types import ModuleType

from tbagent.sandbox import proto

# Only what the runner needs, as it is also a fresh process's start-up in the crun baseline
# (no typing, pathlib, importlib.util or traceback: each costs milliseconds under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

HANDLER = "/function/handler.py"  # paths.FUNCTION_DIR


def load(path: str = HANDLER) -> ModuleType:
    with open(path, "rb") as fh:
        code = compile(fh.read(), path, "exec")
    mod = ModuleType("handler")
    mod.__file__ = path
    sys.modules["handler"] = mod
    exec(code, mod.__dict__)  # noqa: S102 - this is the function's code, run in its sandbox
    return mod


def serve(sock: socket.socket, handler: str = HANDLER, marks: dict[str, float] | None = None) -> NoReturn:
    # A function's own children must not keep the channel open, or its crash would go unseen.
    os.register_at_fork(after_in_child=sock.close)
    proto.send(sock, {"started": time.monotonic(), "pid": os.getpid(), "marks": marks or {}})
    t0 = time.monotonic()
    try:
        mod = load(handler)
    except BaseException as exc:  # the function's initialisation failed: report, then exit
        import traceback

        proto.send(sock, {"ready": False, "error": f"{type(exc).__name__}: {exc}",
                          "trace": traceback.format_exc(limit=5)})
        os._exit(1)
    proto.send(sock, {"ready": True, "init_s": time.monotonic() - t0})
    while True:
        try:
            msg = proto.recv(sock)
        except proto.Closed:
            os._exit(0)
        t1 = time.monotonic()
        try:
            reply = {"ok": True, "result": mod.handle(msg.get("event", {}))}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply["run_s"] = time.monotonic() - t1
        try:
            proto.send(sock, reply)
        except (OSError, ValueError) as exc:
            proto.send(sock, {"ok": False, "error": f"cannot send the result: {exc}", "run_s": reply["run_s"]})


def main() -> NoReturn:
    """crun's entry point: the channel is fd 0 (crun passes stdio through to the container)."""
    sock = socket.socket(fileno=os.dup(0))
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    serve(sock)


if __name__ == "__main__":
    main()
