"""Fixtures for the llm checkpoint tests: a plain file formatted as a two-head template store,
standing in for the MHD's dax device, and the cache library built for it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tbagent.store import Store

REPO = Path(__file__).resolve().parents[2]
SIZE = 32 << 20


@pytest.fixture(name="cache_lib", scope="module", autouse=True)
def cache_lib_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    out = tmp_path_factory.mktemp("lib") / "libcxlcache.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(out), str(REPO / "guest-agent" / "native" / "cxlcache.c")],
                   check=True)
    import tbagent.store.cachectl as cc

    saved = cc.LIB_PATHS
    cc.LIB_PATHS = (str(out),)
    yield
    cc.LIB_PATHS = saved


@pytest.fixture(name="device")
def device_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("tbagent.store.core.LOCK_DIR", tmp_path / "locks")
    path = tmp_path / "dev"
    with open(path, "wb") as fh:
        fh.truncate(SIZE)
    Store.format(str(path), 0, nheads=2, slots=16).close()
    return str(path)
