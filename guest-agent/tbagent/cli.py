"""tbagent command line. Each feature module adds its own subcommands through register()."""

from __future__ import annotations

import argparse
import importlib
import sys

from tbproto.errors import exit_code

from tbagent import __version__
from tbagent.commands import Subcommands
from tbagent.errors import code_of

# Feature modules; each defines register(subparsers) and sets `fn` defaults on its parsers.
FEATURES = ("tbagent.info", "tbagent.dax", "tbagent.store.cli", "tbagent.serve", "tbagent.sandbox", "tbagent.snap.cli",
            "tbagent.llm.cli", "tbagent.llm.migrate", "tbagent.kv.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tbagent", description="cxl-testbed guest agent")
    p.add_argument("--version", action="version", version=__version__)
    sub: Subcommands = p.add_subparsers(dest="verb", required=True)
    for name in FEATURES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (ValueError, OSError) as exc:
        print(f"tbagent: {exc}", file=sys.stderr)
        return exit_code(code_of(exc))


if __name__ == "__main__":
    sys.exit(main())
