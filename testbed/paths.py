"""Where the toolkit keeps things. Overridable by environment, so tests can use temp dirs."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent  # the checkout, when running from one


def _data_root() -> Path:
    """Where the project's data folders (images/, guest-agent/, kernel-patches/, testbeds/,
    ...) are: inside the package in an installed wheel (setup.py puts them there), else the
    checkout."""
    installed = PACKAGE / "_data"
    return installed if installed.is_dir() else REPO


DATA = _data_root()


def state_root() -> Path:
    """Per-testbed runtime state: keys, overlays, seeds, console logs, state.json."""
    return Path(os.environ.get("CXLTB_STATE_DIR", "/var/lib/cxl-testbed"))


def cache_root() -> Path:
    """Content-addressed artefacts: guest images, kernels, downloaded packages."""
    return Path(os.environ.get("CXLTB_CACHE_DIR", "/var/cache/cxl-testbed"))


def shm_root() -> Path:
    return Path(os.environ.get("CXLTB_SHM_DIR", "/dev/shm"))


def testbed_dir(name: str) -> Path:
    return state_root() / "testbeds" / name
