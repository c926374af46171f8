"""A function instance's process for snapshots: `python3 -m tbagent.snap.fnserver NAME`.

Loads the function's module (its initialisation), says {"ready"}, then answers one JSON line per
request on stdin with one JSON line on stdout. Plain pipes, so CRIU can checkpoint it between two
requests and a restore can hand it new pipes (--inherit-fd).
  {"op": "ping"}                 -> {"ok": true}                  (touches none of the function)
  {"op": "invoke", "event": {}}  -> {"ok": true, "result": ..., "run_s": s} | {"ok": false, "error"}
"""

from __future__ import annotations

import json
import os
import sys
import time

from tbagent.functions import spec
from tbagent.sandbox.runner import load


def main(name: str) -> int:
    out = sys.stdout
    t0 = time.monotonic()
    try:
        mod = load(str(spec(name).source))
    except BaseException as exc:  # the function's initialisation failed: report, then exit
        out.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True, "init_s": time.monotonic() - t0, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if req.get("op") == "ping":
                reply: dict[str, object] = {"ok": True}
            else:
                t1 = time.monotonic()
                reply = {"ok": True, "result": mod.handle(req.get("event", {}))}
                reply["run_s"] = time.monotonic() - t1
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
