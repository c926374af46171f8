"""Guest images: a Debian bookworm root filesystem from Debian's packages, as a qcow2 base.

Two cached stages, each keyed by a hash of its recipe:
  1. rootfs/<hash>: debootstrap --variant=minbase with images/<name>/packages.txt;
  2. images/<name>-<hash>.qcow2: stage 1 plus images/<name>/overlay and the guest agent,
     made into ext4 with mkfs.ext4 -d (no loop mounts, no root-only tricks beyond chroot).
Every node boots a copy-on-write overlay of the base.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed import paths
from testbed.artifacts import cache
from testbed.errors import UserError
from testbed.hostcmd import run
from testbed.lifecycle import state as st

log = logging.getLogger("testbed")
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
ROOTFS_SIZE = "4G"
AGENT_DIR = paths.DATA / "guest-agent"
PROTOCOL_DIR = paths.DATA / "protocol" / "tbproto"  # the wire types tbagent imports
CRIU_MMT = paths.DATA / "criu-mmt"


@dataclass(frozen=True)
class Image:
    name: str
    path: Path
    key: str


def packages(name: str) -> list[str]:
    recipe = paths.DATA / "images" / name / "packages.txt"
    if not recipe.exists():
        raise UserError(f"unknown image {name!r}: {recipe} does not exist")
    return [ln.split("#")[0].strip() for ln in recipe.read_text().splitlines() if ln.split("#")[0].strip()]


def rootfs_key(name: str) -> str:
    return cache.hash_files([], paths.DATA, [SUITE, MIRROR, "minbase", *packages(name)])[:12]


def kernel_uapi() -> list[Path]:
    """The patch that carries include/uapi/linux/mm_template.h (the plugin is built with it)."""
    return sorted((paths.DATA / "kernel-patches").glob("*-mm-add-the-mm-template-interface.patch"))


def image_key(name: str) -> str:
    recipe = paths.DATA / "images" / name
    return cache.hash_files([recipe, AGENT_DIR / "tbagent", PROTOCOL_DIR, AGENT_DIR / "native", CRIU_MMT, *kernel_uapi()], paths.DATA,
                            [rootfs_key(name), ROOTFS_SIZE, Path(__file__).read_text()])[:12]


def image_path(name: str) -> Path:
    return paths.cache_root() / "images" / f"{name}-{image_key(name)}.qcow2"


def cached(name: str) -> Image | None:
    p = image_path(name)
    return Image(name, p, image_key(name)) if p.exists() else None


def build_rootfs(name: str) -> Path:
    final = paths.cache_root() / "rootfs" / f"{name}-{rootfs_key(name)}"
    if (final / ".complete").exists():
        return final
    with cache.building(final) as tmp:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(packages(name))}",
             SUITE, tmp, MIRROR], timeout=1800)
        (tmp / ".complete").write_text("ok\n")
    return final


def _customise(root: Path, name: str) -> None:
    shutil.copytree(paths.DATA / "images" / name / "overlay", root, dirs_exist_ok=True, symlinks=True)
    # Host keys are provisioned per node at boot; the image must not carry shared ones.
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    agent = root / "usr" / "lib" / "python3" / "dist-packages" / "tbagent"
    shutil.copytree(AGENT_DIR / "tbagent", agent, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROTOCOL_DIR, agent.with_name("tbproto"), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    # The cache-maintenance helper for non-coherent shared CXL memory (host and guest are
    # both bookworm x86-64, so the host compiler builds it for the guest).
    run(["gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", root / "usr" / "lib" / "cxltb" / "libcxlcache.so",
         AGENT_DIR / "native" / "cxlcache.c"])
    # Memory bandwidth, latency and sharing checks on CXL and local memory (tests and bench/).
    run(["gcc", "-O2", "-Wall", "-Werror", "-o", root / "usr" / "local" / "bin" / "cxlmem",
         AGENT_DIR / "native" / "cxlmem.c"])
    # CRIU's template restore: the cxltb_mmt plugin, against the image's own criu headers.
    with tempfile.TemporaryDirectory() as build:
        run(["make", "-s", "-C", CRIU_MMT, f"CRIU_INC={root / 'usr' / 'include'}", f"BUILD={build}"])
        plugins = root / "usr" / "lib" / "cxltb" / "criu"
        plugins.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(build) / "cxltb_mmt.so", plugins / "cxltb_mmt.so")
    wrapper = root / "usr" / "local" / "bin" / "tbagent"
    wrapper.write_text("#!/usr/bin/python3\nimport sys\nfrom tbagent.cli import main\nsys.exit(main())\n")
    wrapper.chmod(0o755)
    # The modules disk of the booted kernel is mounted here by the initramfs.
    (root / "usr" / "lib" / "modules").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "fstab").write_text("# cxl-testbed: mounts are done by /sbin/cxltb-init\n")
    # Trim what a node never reads (docs, man pages, apt lists) to keep the base small.
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/info", "var/lib/apt/lists", "var/cache/apt"):
        p = root / sub
        if p.exists():
            shutil.rmtree(p)
            p.mkdir()


def build(name: str) -> Image:
    existing = cached(name)
    if existing:
        return existing
    rootfs = build_rootfs(name)
    final = image_path(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Work beside the cache so the finished image is published by one rename.
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as tmp:
        work = Path(tmp)
        root = work / "root"
        run(["cp", "-a", rootfs, root])
        (root / ".complete").unlink()
        _customise(root, name)
        raw = work / "root.img"
        run(["mkfs.ext4", "-q", "-F", "-L", "cxltb-root", "-d", root, raw, ROOTFS_SIZE], timeout=600)
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, work / "image.qcow2"], timeout=600)
        (work / "image.qcow2").chmod(0o644)
        (work / "image.qcow2").rename(final)
    prune(name, final)
    return Image(name, final, image_key(name))


def _is_version(name: str, path: Path) -> bool:
    """Whether `path` is a build of image `name`: exactly NAME-<12 hex>.qcow2 (so not the
    builds of another image whose name merely starts with NAME-)."""
    return re.fullmatch(re.escape(name) + r"-[0-9a-f]{12}\.qcow2", path.name) is not None


def prune(name: str, final: Path) -> list[Path]:
    """Delete the older builds of image `name` beside `final` that no recorded testbed boots
    from (a node's overlay names its base as backing file: deleting it breaks the node).
    Returns what was deleted."""
    in_use = st.referenced_images()
    if in_use is None:
        log.warning("not pruning old %s images: a testbed state file cannot be read, so any of them may be in use", name)
        return []
    removed = []
    for old in sorted(final.parent.glob(f"{name}-*.qcow2")):
        if old != final and _is_version(name, old) and old.resolve() not in in_use:
            old.unlink()
            removed.append(old)
    return removed
