"""What boots a guest kernel besides vmlinuz: the Kernel artefact's files, the tiny initramfs
(busybox plus the modules that reach the root disk, or for the accelerator probe the CXL and
dax modules and cxlmem) and modules.img, an ext4 image of /lib/modules that every node mounts
read-only. Shared by Debian's kernel (kernel.py) and the patched build (kbuild.py)."""

from __future__ import annotations

import lzma
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed import paths
from testbed.artifacts import cpio
from testbed.config.topology import KernelKind
from testbed.errors import UserError
from testbed.hostcmd import run

# Modules the initramfs loads, in dependency order, to mount an ext4 root on virtio-blk.
BOOT_MODULES = ("virtio_blk", "crc32c_generic", "ext4")
# What the accelerator probe's initramfs loads to commit a CXL RAM region and map it by device-dax.
PROBE_MODULES = ("cxl_acpi", "cxl_pci", "cxl_port", "cxl_mem", "dax_cxl", "device_dax")
CXLMEM_SOURCE = paths.DATA / "guest-agent" / "native" / "cxlmem.c"
INITRAMFS_DIR = paths.DATA / "images" / "initramfs"
BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class Kernel:
    kind: KernelKind
    release: str
    directory: Path

    @property
    def vmlinuz(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.directory / "initramfs.img"

    @property
    def modules_img(self) -> Path:
        return self.directory / "modules.img"

    @property
    def probe_initramfs(self) -> Path:
        """The accelerator probe's initramfs (Debian's kernel only): CXL and dax modules, cxlmem."""
        return self.directory / "probe-initramfs.img"


def module_closure(modroot: Path, release: str, names: tuple[str, ...]) -> list[str]:
    """Module files (relative to lib/modules/RELEASE) for names and their dependencies,
    dependencies first; built-in modules are skipped."""
    base = modroot / "lib" / "modules" / release
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[re.sub(r"\.ko(\.[a-z]+)?$", "", Path(mod).name).replace("-", "_")] = mod
    builtin = {
        re.sub(r"\.ko$", "", Path(x).name).replace("-", "_")
        for x in (base / "modules.builtin").read_text().split()
    } if (base / "modules.builtin").exists() else set()
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        # modules.dep lists the full transitive set; visit in reverse so deepest load first.
        for dep in reversed(deps.get(mod, [])):
            visit(dep)
        order.append(mod)

    for name in names:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise UserError(f"kernel {release}: module {name} is neither built in nor in modules.dep")
        visit(by_name[key])
    return order


def _modules(modroot: Path, release: str, names: tuple[str, ...], order_file: str) -> list[cpio.Entry]:
    base = modroot / "lib" / "modules" / release
    entries, order = [], []
    for rel in module_closure(modroot, release, names):
        data = (base / rel).read_bytes()
        name = Path(rel).name
        if name.endswith(".xz"):
            data, name = lzma.decompress(data), name[:-3]
        entries.append(cpio.regular(f"lib/modules/{name}", data))
        order.append(name)
    entries.append(cpio.regular(order_file, ("\n".join(order) + "\n").encode()))
    return entries


def build_initramfs(modroot: Path, release: str, out: Path, probe: bool = False) -> None:
    """The boot initramfs; with probe, the accelerator probe's (CXL modules, a static cxlmem)."""
    entries = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules")]
    entries.append(cpio.regular("bin/busybox", BUSYBOX.read_bytes(), 0o755))
    entries.append(cpio.regular("init", (INITRAMFS_DIR / "init").read_bytes(), 0o755))
    entries += _modules(modroot, release, BOOT_MODULES, "modules.order")
    if probe:
        entries += _modules(modroot, release, PROBE_MODULES, "probe.order")
        entries.append(cpio.regular("bin/probe-cxl", (INITRAMFS_DIR / "probe-cxl").read_bytes(), 0o755))
        with tempfile.TemporaryDirectory() as tmp:
            exe = Path(tmp) / "cxlmem"
            run(["gcc", "-O2", "-Wall", "-Werror", "-static", "-o", exe, CXLMEM_SOURCE])
            entries.append(cpio.regular("bin/cxlmem", exe.read_bytes(), 0o755))
    out.write_bytes(cpio.gzip_newc(entries))


def build_modules_image(modroot: Path, out: Path) -> None:
    src = modroot / "lib" / "modules"
    used = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    size_mib = used * 13 // 10 // (1 << 20) + 32
    run(["mkfs.ext4", "-q", "-F", "-L", "cxltb-modules", "-d", src, "-E", "root_owner=0:0",
         out, f"{size_mib}M"])
