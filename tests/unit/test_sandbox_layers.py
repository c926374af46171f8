"""Root filesystem layers and cgroup limits (no root, no VM)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tbagent.functions import CATALOG, spec
from tbagent.sandbox import layers
from tbagent.sandbox.cgroup import Limits, parse_size

REPO = Path(__file__).resolve().parents[2]


def fake_root(tmp: Path) -> Path:
    src = tmp / "src"
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    (src / "etc" / "ssh").mkdir(parents=True)
    (src / "etc" / "ssh" / "ssh_host_ed25519_key").write_text("secret")
    (src / "etc" / "shadow").write_text("root:x")
    (src / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (src / "etc" / "python3").mkdir()
    os.symlink("usr/bin", src / "bin")
    return src


def test_base_links_usr_copies_etc_without_secrets(tmp_path: Path) -> None:
    src = fake_root(tmp_path)
    base = layers.build_base(src, tmp_path / "store")
    assert (base / ".complete").exists()
    assert os.stat(base / "usr/bin/tool").st_ino == os.stat(src / "usr/bin/tool").st_ino  # a hard link, no copy
    assert os.readlink(base / "bin") == "usr/bin"
    assert (base / "etc/passwd").read_text().startswith("root:") and (base / "etc/python3").is_dir()
    assert not (base / "etc/ssh").exists() and not (base / "etc/shadow").exists()
    assert oct((base / "tmp").stat().st_mode & 0o7777) == "0o1777" and (base / "sys/fs/cgroup").is_dir()
    assert layers.build_base(src, tmp_path / "store") == base  # idempotent


def test_function_layers_are_immutable_and_named_by_content(tmp_path: Path) -> None:
    hello = spec("hello")
    path = layers.function_layer(hello, tmp_path)
    assert path.name == layers.layer_id(hello) and path.name.startswith("hello-")
    assert (path / "function/handler.py").read_bytes() == hello.source.read_bytes()
    assert '"name": "hello"' in (path / "function/meta.json").read_text()
    assert layers.function_layer(hello, tmp_path) == path
    assert len({layers.layer_id(s) for s in CATALOG.values()}) == len(CATALOG)
    assert layers.in_stage(path, tmp_path) == f"/store/fn/{path.name}"


def test_overlay_options_list_lowers_top_first_and_refuse_separators() -> None:
    assert layers.overlay_options(["/store/fn/a", "/store/base"], "/rw/upper", "/rw/work") == \
        "lowerdir=/store/fn/a:/store/base,upperdir=/rw/upper,workdir=/rw/work"
    with pytest.raises(ValueError):
        layers.overlay_options(["/a:b"], "/u", "/w")


def test_limits_map_to_cgroup_files() -> None:
    assert Limits().files() == {"memory.max": str(256 << 20), "cpu.max": "max 100000", "pids.max": "64"}
    lim = Limits.from_dict({"memory": "384M", "cpu": 0.5, "pids": 8})
    assert lim.files() == {"memory.max": str(384 << 20), "cpu.max": "50000 100000", "pids.max": "8"}
    assert Limits(None, None, None).files() == {"memory.max": "max", "cpu.max": "max 100000", "pids.max": "max"}
    assert parse_size("1G") == 1 << 30 and parse_size("64k") == 64 << 10 and parse_size(5) == 5
    with pytest.raises(ValueError):
        parse_size("lots")


def test_threads_making_one_function_layer_at_once_all_get_it_whole(tmp_path: Path) -> None:
    # The agent and the pool daemon serve requests on threads of one process: several may make
    # the same function's layer at once (the azure-replay scenario did), and none may fail.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    hello = spec("hello")
    for i in range(20):
        store = tmp_path / f"s{i}"
        start = threading.Barrier(8)

        def make(_: int, store: Path = store, start: threading.Barrier = start) -> Path:
            start.wait()
            return layers.function_layer(hello, store)

        with ThreadPoolExecutor(8) as pool:
            made = set(pool.map(make, range(8)))
        (path,) = made
        assert (path / "function/meta.json").is_file() and (path / "function/handler.py").is_file()
        assert oct(path.stat().st_mode & 0o777) == "0o755"
        assert [p.name for p in store.joinpath("fn").iterdir()] == [path.name]  # no work folder left
