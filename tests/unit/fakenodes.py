"""The parts of the Node interface a fake node does not use: each fails the test if called."""

from __future__ import annotations

from pathlib import Path

import paramiko


class NoFiles:
    """put/get of a fake node that copies no files."""

    def put(self, local: Path, remote: str) -> None:
        raise AssertionError("this fake node copies no files")

    def get(self, remote: str, local: Path) -> None:
        raise AssertionError("this fake node copies no files")


class NoChannels(NoFiles):
    """A fake guest that opens no raw channels either."""

    def open_channel(self, command: str, timeout: float) -> paramiko.Channel:
        raise AssertionError("this fake node opens no channels")
