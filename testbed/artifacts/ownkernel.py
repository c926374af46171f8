"""`kernel: /path/to/bzImage`: the user's own kernel, with its modules tree or without one.

The bzImage is copied into the kernel cache with the initramfs and modules.img every kernel
artefact has, keyed by the image's content and the modules tree's listing. Without a modules
tree the guest boots with what the kernel has built in: the initramfs then loads nothing, so
virtio-blk and ext4 (and, for the CXL path, the CXL and dax drivers) must be built in (=y).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from testbed import paths
from testbed.artifacts import cache
from testbed.artifacts.bootfiles import BOOT_MODULES, Kernel, build_initramfs, build_modules_image
from testbed.config.topology import KernelKind
from testbed.errors import UserError

# The x86 boot protocol: "HdrS" at 0x202; at 0x20e a 16-bit pointer (minus 0x200) to the
# NUL-terminated version string ("6.12.0-rc1 (user@host) #1 SMP ...").
HDR_MAGIC_AT = 0x202
VERSION_PTR_AT = 0x20E
RECIPE = "ownkernel-1"


def bzimage_release(image: Path) -> str:
    """The kernel release in a bzImage's header; the file is untrusted, so every offset is checked."""
    with image.open("rb") as f:
        head = f.read(0x10000)
    if len(head) < VERSION_PTR_AT + 2 or head[HDR_MAGIC_AT:HDR_MAGIC_AT + 4] != b"HdrS":
        raise UserError(f"{image}: not an x86 bzImage (no HdrS boot header)")
    at = int.from_bytes(head[VERSION_PTR_AT:VERSION_PTR_AT + 2], "little") + 0x200
    end = head.find(b"\0", at, at + 256)
    if at >= len(head) or end < 0:
        raise UserError(f"{image}: the boot header's version string is missing or truncated")
    words = head[at:end].decode("ascii", "replace").split()
    if not words:
        raise UserError(f"{image}: the boot header's version string is empty")
    return words[0]


def modules_release(modules: Path) -> str:
    found = sorted(p.name for p in (modules / "lib" / "modules").iterdir() if p.is_dir())
    if len(found) != 1:
        raise UserError(f"{modules}/lib/modules: expected one kernel release, found {', '.join(found) or 'none'}")
    return found[0]


def key(image: Path, modules: Path | None) -> str:
    h = hashlib.sha256(RECIPE.encode())
    h.update(image.read_bytes())
    h.update(b"modules\n" if modules is not None else b"built-in only\n")
    if modules is not None:
        # The listing, not the content: a rebuilt module changes its size or mtime.
        for f in sorted((modules / "lib" / "modules").rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(modules)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def stage_without_modules(stage: Path, release: str) -> Path:
    """A modules tree that declares the boot modules built in: the initramfs loads nothing."""
    base = stage / "lib" / "modules" / release
    base.mkdir(parents=True)
    (base / "modules.dep").write_text("")
    (base / "modules.builtin").write_text("".join(f"kernel/{m}.ko\n" for m in BOOT_MODULES))
    return stage


def resolve(image: Path, modules: Path | None) -> Kernel:
    if not image.is_file():
        raise UserError(f"kernel {image}: no such file")
    release = bzimage_release(image)
    if modules is not None:
        mod_release = modules_release(modules)
        if mod_release != release:
            raise UserError(f"modules {modules}: built for {mod_release}, but {image} is {release}")
    final = paths.cache_root() / "kernels" / f"{KernelKind.CUSTOM}-{key(image, modules)}"
    if (final / "meta.json").exists():
        return Kernel(KernelKind.CUSTOM, cache.read_json(final / "meta.json")["release"], final)
    with cache.building(final) as out, tempfile.TemporaryDirectory() as tmp:
        stage = modules if modules is not None else stage_without_modules(Path(tmp), release)
        shutil.copyfile(image, out / "vmlinuz")
        build_initramfs(stage, release, out / "initramfs.img")
        build_modules_image(stage, out / "modules.img")
        cache.write_json(out / "meta.json", {"kind": str(KernelKind.CUSTOM), "release": release, "image": str(image),
                                             "modules": str(modules) if modules else ""})
    return Kernel(KernelKind.CUSTOM, release, final)
