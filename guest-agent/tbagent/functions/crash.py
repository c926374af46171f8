"""crash: starts a child process, then dies of SIGSEGV in the middle of an invocation."""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any


def handle(event: dict[str, Any]) -> dict[str, Any]:
    if os.fork() == 0:
        while True:
            time.sleep(3600)
    ctypes.string_at(0)  # NULL dereference: the function process is killed by SIGSEGV
    return {"unreachable": True}
