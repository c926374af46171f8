"""`tbagent info`: node, kernel and CXL set-up as JSON."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tbagent import __version__

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

    from tbagent.commands import Subcommands

CXL_JSON = Path("/run/cxltb/cxl.json")
READY = Path("/run/cxltb/ready")


def info() -> JsonObject:
    return {
        "agent": __version__,
        "hostname": os.uname().nodename,
        "kernel": os.uname().release,
        "ready_s": float(READY.read_text()) if READY.exists() else None,
        "cxl": json.loads(CXL_JSON.read_text()) if CXL_JSON.exists() else [],
    }


def cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(info()))
    return 0


def register(sub: Subcommands) -> None:
    sub.add_parser("info", help="node, kernel and CXL set-up as JSON").set_defaults(fn=cmd_info)
