"""crash: starts a child process, then dies of SIGSEGV in the middle of an invocation."""

from __future__ import annotations

import ctypes
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject


def handle(event: JsonObject) -> JsonObject:
    if os.fork() == 0:
        while True:
            time.sleep(3600)
    ctypes.string_at(0)  # NULL dereference: the function process is killed by SIGSEGV
    return {"unreachable": True}
