"""hello: the smallest function. Optional event keys: name, sleep (seconds, to hold a sandbox)."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any


def handle(event: dict[str, Any]) -> dict[str, Any]:
    if event.get("sleep"):
        time.sleep(float(event["sleep"]))
    with open("/function/meta.json") as fh:
        layer = json.load(fh)["name"]
    return {"greeting": f"{os.environ.get('GREETING', 'hi')} {event.get('name', 'world')}",
            "layer": layer, "hostname": socket.gethostname(), "pid": os.getpid()}
