"""`testbed kernel build`: Linux 6.12 from Debian's linux-source-6.12 (or a local tree) with the
kernel-patches/ series applied, configured from a small base plus the project's fragment,
built with ccache, and cached by source version, patch hashes and config hash."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tbproto.jsontypes import JsonObject

from testbed import paths
from testbed.artifacts import buildlog, cache, patchseries
from testbed.artifacts.bootfiles import Kernel, build_initramfs, build_modules_image
from testbed.config.topology import KernelKind
from testbed.errors import UserError
from testbed.hostcmd import run

SOURCE_PACKAGE = "linux-source-6.12"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
PATCHES = paths.DATA / "kernel-patches"
FRAGMENT = PATCHES / "config" / "mm-template.fragment"
# The debug variant (DEBUG_VM, lockdep, page-table checks) adds these, in order.
DEBUG_FRAGMENTS = (PATCHES / "config" / "debug.fragment", PATCHES / "config" / "debug-tcg.fragment")
DEBUG_REQUIRED = ("DEBUG_VM", "PROVE_LOCKING", "DEBUG_ATOMIC_SLEEP")
# The base: x86_64 defconfig plus the kernel's own kvm_guest.config, then the fragment.
BASE_TARGETS = ("defconfig", "kvm_guest.config")
# Options the guest cannot do without; merge_config.sh silently drops unmet ones, so check.
REQUIRED = ("MM_TEMPLATE", "DEV_DAX", "DEV_DAX_CXL", "CXL_BUS", "CXL_PCI", "CXL_ACPI", "CXL_MEM", "CXL_REGION",
            "CHECKPOINT_RESTORE", "USERFAULTFD", "OVERLAY_FS", "VIRTIO_BLK", "VIRTIO_NET", "EXT4_FS",
            "FW_CFG_SYSFS", "CGROUPS", "MEMCG", "NET_NS", "PID_NS", "VETH", "NF_TABLES", "NF_TABLES_INET", "CFS_BANDWIDTH")
Progress = Callable[[str, str], None]
# Bump when the build steps change what comes out (not for refactors): part of the cache key.
RECIPE = "kbuild-1"


def series() -> list[Path]:
    return patchseries.read(PATCHES, "the mm-template kernel")


def source_version(source: Path | None) -> str:
    if source is not None:
        if not (source / "Makefile").exists():
            raise UserError(f"--source {source}: not a Linux source tree (no Makefile)")
        head = run(["make", "-s", "kernelversion"], cwd=source).stdout.strip()
        return f"local:{source.resolve()}:{head}"
    if not SOURCE_TARBALL.exists():
        raise UserError(f"{SOURCE_TARBALL} missing: run `make deps` (installs {SOURCE_PACKAGE} from bookworm-backports)")
    return run(["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE]).stdout.strip()


def fragments(debug: bool) -> list[Path]:
    return [FRAGMENT, *(DEBUG_FRAGMENTS if debug else ())]


def build_key(version: str, debug: bool = False) -> JsonObject:
    patches = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in series()}
    config = hashlib.sha256(b"".join(f.read_bytes() for f in fragments(debug))
                            + "|".join(BASE_TARGETS).encode()).hexdigest()
    recipe = RECIPE
    key = hashlib.sha256(f"{version}|{sorted(patches.items())}|{config}|{recipe}".encode()).hexdigest()[:12]
    return {"key": key, "source_version": version, "patches": patches, "config_hash": config}


def _env() -> dict[str, str]:
    return {**cache.ccache_env(paths.cache_root(), paths.cache_root() / "kbuild"),
            "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 2026", "KBUILD_BUILD_USER": "cxltb",
            "KBUILD_BUILD_HOST": "cxltb"}


def _configure(tree: Path, env: dict[str, str], debug: bool) -> str:
    for target in BASE_TARGETS:
        run(["make", target], cwd=tree, env=env)
    run(["scripts/kconfig/merge_config.sh", "-m", ".config", *fragments(debug)], cwd=tree, env=env)
    run(["make", "olddefconfig"], cwd=tree, env=env)
    config = (tree / ".config").read_text()
    required = REQUIRED + (DEBUG_REQUIRED if debug else ())
    missing = [o for o in required if not re.search(rf"^CONFIG_{o}=[ym]$", config, re.M)]
    if missing:
        raise UserError(f"{FRAGMENT}: after merging, the kernel config lacks {', '.join('CONFIG_' + m for m in missing)} "
                        "(a dependency is unmet; check the fragment)")
    return hashlib.sha256(config.encode()).hexdigest()[:16]


def cached(kind: KernelKind = KernelKind.MM_TEMPLATE) -> list[JsonObject]:
    return cache.listing(paths.cache_root() / "kernels")


def build(source: Path | None = None, progress: Progress | None = None, jobs: int | None = None,
          debug: bool = False) -> Kernel:
    note = progress or buildlog.stderr_progress
    version = source_version(source)
    key = build_key(version, debug)
    kind = KernelKind.MM_TEMPLATE_DEBUG if debug else KernelKind.MM_TEMPLATE
    final = paths.cache_root() / "kernels" / f"{kind}-{key['key']}"
    if (final / "meta.json").exists():
        return Kernel(kind, cache.read_json(final / "meta.json")["release"], final)
    env = _env()
    work = paths.cache_root() / "kbuild"
    tree = work / "linux"  # a fixed path keeps ccache hits across builds
    t0 = time.monotonic()
    if tree.exists():
        shutil.rmtree(tree)
    work.mkdir(parents=True, exist_ok=True)
    note("kernel", "unpacking source")
    if source is not None:
        run(["cp", "-a", source, tree])
    else:
        tmp = work / "unpack"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        run(["tar", "-xf", SOURCE_TARBALL, "-C", tmp], timeout=900)
        (next(tmp.iterdir())).rename(tree)
        tmp.rmdir()
    note("kernel", f"applying {len(series())} patches")
    patchseries.apply(tree, series(), "the kernel source")
    config_hash = _configure(tree, env, debug)
    njobs = jobs or os.cpu_count() or 2
    build_s = buildlog.run_build(["make", f"-j{njobs}", "CC=ccache gcc", "bzImage", "modules"], "kernel",
                                 f"building bzImage and modules (-j{njobs}, ccache)", note, cwd=tree, env=env,
                                 timeout=7200)
    release = run(["make", "-s", "kernelrelease"], cwd=tree, env=env).stdout.strip()
    with cache.building(final) as out:
        stage = out / "stage"
        run(["make", "-s", f"INSTALL_MOD_PATH={stage}", "INSTALL_MOD_STRIP=1", "modules_install"], cwd=tree, env=env)
        run(["depmod", "-b", stage, release])
        shutil.copyfile(tree / "arch" / "x86" / "boot" / "bzImage", out / "vmlinuz")
        shutil.copyfile(tree / ".config", out / "config")
        build_initramfs(stage, release, out / "initramfs.img")
        build_modules_image(stage, out / "modules.img")
        shutil.rmtree(stage)
        stats = run(["ccache", "-s"], env=env, check=False).stdout or ""
        cache.write_json(out / "meta.json", {
            "kind": str(kind), "release": release, **key, "config_sha": config_hash,
            "build_seconds": round(build_s, 1), "total_seconds": round(time.monotonic() - t0, 1),
            "ccache": " ".join(ln.strip() for ln in stats.splitlines() if "hit" in ln.lower())[:300]})
    for old in final.parent.glob(f"{kind}-????????????"):  # same variant, older keys
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return Kernel(kind, release, final)
