"""Unit tests run no VM and change nothing on the host: opening a libvirt connection is refused
outright, so a seam a test forgot to inject fails the test instead of booting a real testbed.
Tests that exercise the lifecycle replace `daemons.connection` with a fake connection."""

from __future__ import annotations

from typing import Any

import pytest


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a unit test reached libvirt (libvirt.open); inject the seam (a fake connection or Ops)")


@pytest.fixture(autouse=True)
def _no_libvirt(monkeypatch: pytest.MonkeyPatch) -> None:
    import libvirt

    for name in ("open", "openReadOnly", "openAuth"):
        monkeypatch.setattr(libvirt, name, _refuse)
