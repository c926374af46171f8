"""hello: the smallest function. Optional event keys: name, sleep (seconds, to hold a sandbox)."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

META = "/function/meta.json"


def handle(event: JsonObject) -> JsonObject:
    if event.get("sleep"):
        time.sleep(float(event["sleep"]))
    # The layer's name in a sandbox; a snapshot instance runs outside one.
    layer = json.loads(open(META).read())["name"] if os.path.exists(META) else None
    return {"greeting": f"{os.environ.get('GREETING', 'hi')} {event.get('name', 'world')}",
            "layer": layer, "hostname": socket.gethostname(), "pid": os.getpid()}
