"""What a feature module's register() is handed: argparse's subparsers, seen through the one
method the modules use (argparse names their class privately)."""

from __future__ import annotations

import argparse
from typing import Protocol


class Subcommands(Protocol):
    def add_parser(self, name: str, *, help: str | None = ...) -> argparse.ArgumentParser: ...
