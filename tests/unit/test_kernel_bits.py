from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testbed import cpio
from testbed.kernel import module_closure


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
