"""Guest kernels: what a topology's `kernel:` names, fetched or built, cached by content.

A kernel artefact is a directory with vmlinuz, a tiny initramfs and modules.img
(bootfiles.py). Keeping modules out of the root image lets one guest image serve every
kernel. Debian's kernel is unpacked here; the mm-template kernels are built by kbuild.py.
"""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

from testbed import paths
from testbed.artifacts import bootfiles, cache, kbuild
from testbed.artifacts.bootfiles import BUSYBOX, CXLMEM_SOURCE, INITRAMFS_DIR, Kernel, build_initramfs, build_modules_image
from testbed.config.topology import KernelKind
from testbed.hostcmd import run

__all__ = ["BUILDERS", "DEBIAN_PACKAGE", "Kernel", "debian_kernel", "recipe_hash", "resolve"]

DEBIAN_PACKAGE = "linux-image-6.12.95+deb12-amd64-unsigned"


def recipe_hash(extra: str) -> str:
    return cache.hash_files([INITRAMFS_DIR, CXLMEM_SOURCE], paths.DATA, [extra, BUSYBOX.name,
                            str(BUSYBOX.stat().st_size) if BUSYBOX.exists() else "none",
                            Path(__file__).read_text(), Path(bootfiles.__file__).read_text()])[:12]


def debian_kernel() -> Kernel:
    """Debian's 6.12 kernel from bookworm-backports, unpacked, with our initramfs."""
    key = recipe_hash(DEBIAN_PACKAGE)
    final = paths.cache_root() / "kernels" / f"debian-{key}"
    if (final / "meta.json").exists():
        meta = cache.read_json(final / "meta.json")
        return Kernel(KernelKind.DEBIAN, meta["release"], final)
    debs = paths.cache_root() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not glob.glob(str(debs / f"{DEBIAN_PACKAGE}_*.deb")):
        run(["apt-get", "download", DEBIAN_PACKAGE], cwd=debs, timeout=600)
    deb = sorted(glob.glob(str(debs / f"{DEBIAN_PACKAGE}_*.deb")))[-1]
    with cache.building(final) as tmp:
        root = tmp / "root"
        run(["dpkg-deb", "-x", deb, root])
        release = next((root / "lib" / "modules").iterdir()).name
        run(["depmod", "-b", root, release])
        shutil.copyfile(root / "boot" / f"vmlinuz-{release}", tmp / "vmlinuz")
        build_initramfs(root, release, tmp / "initramfs.img")
        build_initramfs(root, release, tmp / "probe-initramfs.img", probe=True)
        build_modules_image(root, tmp / "modules.img")
        shutil.rmtree(root)
        cache.write_json(tmp / "meta.json", {"kind": "debian", "release": release, "package": DEBIAN_PACKAGE})
    for old in final.parent.glob("debian-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return Kernel(KernelKind.DEBIAN, release, final)


def mm_template_kernel() -> Kernel:
    return kbuild.build()


def mm_template_debug_kernel() -> Kernel:
    return kbuild.build(debug=True)


BUILDERS = {KernelKind.DEBIAN: debian_kernel, KernelKind.MM_TEMPLATE: mm_template_kernel,
            KernelKind.MM_TEMPLATE_DEBUG: mm_template_debug_kernel}


def resolve(kind: KernelKind) -> Kernel:
    return BUILDERS[kind]()
