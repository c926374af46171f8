"""tbagent command line: node information and raw access to the CXL device."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tbagent import __version__, dax

CXL_JSON = Path("/run/cxltb/cxl.json")


def cmd_info(args: argparse.Namespace) -> int:
    info = {
        "agent": __version__,
        "hostname": os.uname().nodename,
        "kernel": os.uname().release,
        "ready_s": float(Path("/run/cxltb/ready").read_text()) if Path("/run/cxltb/ready").exists() else None,
        "cxl": json.loads(CXL_JSON.read_text()) if CXL_JSON.exists() else [],
    }
    print(json.dumps(info))
    return 0


def _device(name: str) -> str:
    path = name if name.startswith("/") else f"/dev/mhd/{name}"
    if not os.path.exists(path):
        raise SystemExit(f"tbagent: no such CXL device {path}")
    return path


def cmd_dax_write(args: argparse.Namespace) -> int:
    dax.write(_device(args.device), args.offset, bytes.fromhex(args.hex))
    return 0


def cmd_dax_read(args: argparse.Namespace) -> int:
    print(dax.read(_device(args.device), args.offset, args.length).hex())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tbagent", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("info", help="node, kernel and CXL set-up as JSON").set_defaults(fn=cmd_info)
    dx = sub.add_parser("dax", help="raw access to a CXL device").add_subparsers(dest="op", required=True)
    w = dx.add_parser("write", help="write hex bytes at an offset")
    w.add_argument("device", help="MHD name (/dev/mhd/NAME) or a /dev/daxX.Y path")
    w.add_argument("offset", type=int)
    w.add_argument("hex")
    w.set_defaults(fn=cmd_dax_write)
    r = dx.add_parser("read", help="read bytes at an offset, printed as hex")
    r.add_argument("device")
    r.add_argument("offset", type=int)
    r.add_argument("length", type=int)
    r.set_defaults(fn=cmd_dax_read)
    args = p.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ValueError, OSError) as exc:
        print(f"tbagent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
