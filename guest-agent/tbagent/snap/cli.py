"""`tbagent snap ...`: take a snapshot into the store, prepare it here, run instances, show frames."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from tbproto.ops import Mode

from tbagent.errors import command
from tbagent.snap import runs, snapshot

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

    from tbagent.commands import Subcommands


def _json_arg(text: str) -> JsonObject:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _env_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def _print(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def op_take(name: str, function: str, mhd: str = "mhd0", warm: JsonObject | None = None,
            env: dict[str, str] | None = None) -> JsonObject:
    return snapshot.take(name, function, mhd, warm, env)


def op_prepare(name: str, mhd: str = "mhd0", full: bool = False) -> JsonObject:
    local = snapshot.prepare(name, mhd, full)
    return {"name": name, "dir": str(local.dir), "mmt": local.mmt_name, "function": local.function,
            "areas": len(local.layout["areas"]), "full": (local.full / ".complete").exists()}


def op_run(name: str, mode: str, count: int = 1, event: JsonObject | None = None, requests: int = 1,
           populate: bool = False, mhd: str = "mhd0", replay_warm: bool = False,
           sandbox: str | None = None) -> list[JsonObject]:
    return list(runs.run(name, Mode(mode), count, event, requests, populate, mhd, replay_warm, sandbox))


def op_dedup(name: str, mode: str, count: int = 1, event: JsonObject | None = None,
             mhd: str = "mhd0") -> JsonObject:
    return runs.dedup(name, Mode(mode), count, event, mhd)


@command(lambda args: f"snap {args.snap}")
def _cmd(args: argparse.Namespace) -> int:
    if args.snap == "take":
        _print(op_take(args.name, args.function, args.mhd, args.warm, dict(args.env)))
    elif args.snap == "prepare":
        _print(op_prepare(args.name, args.mhd, args.full))
    elif args.snap == "run":
        for rec in runs.run(args.name, Mode(args.mode), args.count, args.event, args.requests, args.populate, args.mhd,
                            args.replay_warm, args.sandbox):
            _print(rec)
    elif args.snap == "dedup":
        _print(op_dedup(args.name, args.mode, args.count, args.event, args.mhd))
    elif args.snap == "frames":
        _print(runs.frames(args.name, args.mhd))
    return 0


def register(sub: Subcommands) -> None:
    p = sub.add_parser("snap", help="function snapshots in the CXL store and their restore modes")
    s = p.add_subparsers(dest="snap", required=True)
    take = s.add_parser("take", help="start a function, warm it, checkpoint it, publish it as a template")
    take.add_argument("name")
    take.add_argument("function")
    take.add_argument("--warm", type=_json_arg, default=None, help="the warm-up request's event (JSON)")
    take.add_argument("--env", type=_env_arg, action="append", default=[], metavar="KEY=VALUE")
    prep = s.add_parser("prepare", help="unpack a snapshot on this node and register its mm-template")
    prep.add_argument("name")
    prep.add_argument("--full", action="store_true", help="also the full image set (criu and lazy modes)")
    run = s.add_parser("run", help="start instances in a mode and measure them (JSON lines)")
    run.add_argument("name")
    run.add_argument("--mode", choices=[m.value for m in Mode], required=True)
    run.add_argument("--count", type=int, default=1)
    run.add_argument("--event", type=_json_arg, default=None, help="request event (default: the warm-up's)")
    run.add_argument("--requests", type=int, default=1)
    run.add_argument("--populate", action="store_true", help="template: map every page at attach")
    run.add_argument("--sandbox", choices=["pool", "fresh"], default=None,
                     help="restore inside a sandbox of the pool daemon: repurposed (pool) or made for it (fresh)")
    run.add_argument("--replay-warm", action="store_true",
                     help="cold: answer the snapshot's warm-up request first (unmeasured), to compare results")
    dd = s.add_parser("dedup", help="count identical private pages over N instances (JSON)")
    dd.add_argument("name")
    dd.add_argument("--mode", choices=[m.value for m in Mode], required=True)
    dd.add_argument("--count", type=int, default=1)
    dd.add_argument("--event", type=_json_arg, default=None)
    fr = s.add_parser("frames", help="which CXL pages back a template instance (device offsets)")
    fr.add_argument("name")
    for q in (take, prep, run, dd, fr):
        q.add_argument("--mhd", default="mhd0")
    p.set_defaults(fn=_cmd)
