from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.artifacts import cpio
from testbed.artifacts.bootfiles import module_closure


def test_module_closure_orders_dependencies_first(tmp_path: Path) -> None:
    base = tmp_path / "lib" / "modules" / "6.0"
    base.mkdir(parents=True)
    (base / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz\n"
        "kernel/fs/jbd2/jbd2.ko.xz:\nkernel/fs/mbcache.ko.xz:\nkernel/lib/crc16.ko.xz:\n"
        "kernel/drivers/block/virtio_blk.ko.xz:\n")
    (base / "modules.builtin").write_text("kernel/crypto/crc32c_generic.ko\n")
    order = module_closure(tmp_path, "6.0", ("virtio_blk", "crc32c_generic", "ext4"))
    assert order[0] == "kernel/drivers/block/virtio_blk.ko.xz"
    assert order[-1] == "kernel/fs/ext4/ext4.ko.xz"
    assert set(order[1:-1]) == {"kernel/fs/jbd2/jbd2.ko.xz", "kernel/fs/mbcache.ko.xz", "kernel/lib/crc16.ko.xz"}


def test_module_closure_unknown_module(tmp_path: Path) -> None:
    base = tmp_path / "lib" / "modules" / "6.0"
    base.mkdir(parents=True)
    (base / "modules.dep").write_text("")
    from testbed.errors import UserError

    with pytest.raises(UserError, match="nosuch"):
        module_closure(tmp_path, "6.0", ("nosuch",))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_newc_archive_is_readable_by_cpio(tmp_path: Path) -> None:
    data = cpio.newc([cpio.directory("bin"), cpio.regular("bin/x", b"hello", 0o755), cpio.symlink("sh", "bin/x")])
    p = subprocess.run(["cpio", "-idv", "--quiet"], input=data, cwd=tmp_path, capture_output=True, check=False)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "bin" / "x").read_bytes() == b"hello"
    assert (tmp_path / "bin" / "x").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "sh").is_symlink()


def test_patch_that_does_not_apply_names_the_patch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from testbed.artifacts import patchseries
    from testbed.errors import UserError

    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "a.c").write_text("int a = 1;\n")
    (tmp_path / "kernel-patches").mkdir()
    good = tmp_path / "kernel-patches" / "0001-good.patch"
    good.write_text("--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-int a = 1;\n+int a = 2;\n")
    bad = tmp_path / "kernel-patches" / "0002-bad.patch"
    bad.write_text("--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-int a = 7;\n+int a = 8;\n")
    with pytest.raises(UserError, match=r"kernel-patches/0002-bad.patch does not apply"):
        patchseries.apply(tree, [good, bad], "the kernel source")
    assert (tree / "a.c").read_text() == "int a = 2;\n"


def test_series_rejects_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from testbed.artifacts import kbuild
    from testbed.errors import UserError

    (tmp_path / "series").write_text("# comment\n../etc/passwd\n")
    monkeypatch.setattr(kbuild, "PATCHES", tmp_path)
    with pytest.raises(UserError, match="not a patch file"):
        kbuild.series()


def test_missing_tool_is_a_user_error() -> None:
    from testbed.errors import UserError
    from testbed.hostcmd import run

    with pytest.raises(UserError, match="make deps"):
        run(["cxltb-no-such-tool"])


def test_local_source_tree_version_and_validation(tmp_path: Path) -> None:
    from testbed.artifacts import kbuild
    from testbed.errors import UserError

    with pytest.raises(UserError, match="not a Linux source tree"):
        kbuild.source_version(tmp_path)
    (tmp_path / "Makefile").write_text("kernelversion:\n\t@echo 6.12.95\n")
    version = kbuild.source_version(tmp_path)
    assert version == f"local:{tmp_path.resolve()}:6.12.95"
    # A local tree gets its own cache key, never the Debian package's.
    assert kbuild.build_key(version)["key"] != kbuild.build_key("6.12.95-1~bpo12+1")["key"]
