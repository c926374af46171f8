"""`testbed qemu build` / `list`: QEMU 10.0.2 from Debian's orig tarball with qemu-patches/
applied (the direct-mapped CXL memory path), configured for x86_64-softmmu with only what the
testbed uses, built with ccache and cached by tarball hash, patch hashes, configure flags and
a recipe version. Debian's own QEMU stays installed as the `debian` variant."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tbproto.jsontypes import JsonObject

from testbed import paths
from testbed.artifacts import buildlog, cache, patchseries
from testbed.config.topology import QemuKind
from testbed.errors import UserError
from testbed.hostcmd import run

VERSION = "10.0.2"
TARBALL = f"qemu_{VERSION}+ds.orig.tar.xz"
# The hash apt-cache showsrc gives for bookworm-backports' qemu 1:10.0.2+ds-2+deb13u1~bpo12+1;
# checked against apt's own metadata too, so a changed archive is caught either way.
TARBALL_SHA256 = "0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1"
PATCHES = paths.DATA / "qemu-patches"
DEBIAN_EMULATOR = Path("/usr/bin/qemu-system-x86_64")
# A fixed prefix keeps ccache hits across patch changes (config-host.h names it); the install
# is relocated into the cache directory, which QEMU supports (it finds its data by relative path).
PREFIX = "/opt/cxltb-qemu"
# Firmware comes from Debian's packages: the DFSG tarball has no prebuilt blobs.
CONFIGURE = (
    "--target-list=x86_64-softmmu", f"--prefix={PREFIX}", "--without-default-features",
    "--enable-system", "--enable-tcg", "--enable-kvm", "--enable-slirp", "--enable-pixman",
    "--enable-vhost-kernel", "--enable-vhost-net", "--disable-docs", "--disable-werror",
    "--disable-download", "--disable-install-blobs", "--disable-debug-info", "--audio-drv-list=",
    "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
)
# Bump when the build steps change what comes out (not for refactors): part of the cache key.
RECIPE = "qbuild-1"
Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class Emulator:
    kind: QemuKind
    path: Path
    version: str
    key: str = ""  # the cache key of a patched build; empty for Debian's


def series() -> list[Path]:
    return patchseries.read(PATCHES, "the patched QEMU")


def build_key(tarball_sha: str) -> JsonObject:
    patches = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in series()}
    flags = "|".join(CONFIGURE)
    key = hashlib.sha256(f"{tarball_sha}|{sorted(patches.items())}|{flags}|{RECIPE}".encode()).hexdigest()[:12]
    return {"key": key, "tarball_sha256": tarball_sha, "patches": patches, "configure": list(CONFIGURE),
            "recipe": RECIPE}


def _apt_sha256() -> str | None:
    """The orig tarball's sha256 as apt's configured sources list it (None if apt has no record)."""
    out = run(["apt-cache", "showsrc", f"qemu={_source_version()}"], check=False).stdout or ""
    m = re.search(rf"^ ([0-9a-f]{{64}}) \d+ {re.escape(TARBALL)}$", out, re.M)
    return m.group(1) if m else None


def _source_version() -> str:
    out = run(["apt-cache", "showsrc", "qemu"], check=False).stdout or ""
    versions = re.findall(rf"^Version: (\S*{re.escape(VERSION)}\+ds\S*)$", out, re.M)
    if not versions:
        raise UserError(f"apt knows no qemu {VERSION} source: run `make deps` (adds bookworm-backports deb-src)")
    return str(versions[0])


def fetch_source() -> Path:
    """The orig tarball, fetched through apt's configured sources and hash-checked."""
    srcdir = paths.cache_root() / "src"
    tar = srcdir / TARBALL
    if not tar.exists():
        srcdir.mkdir(parents=True, exist_ok=True)
        tmp = srcdir / ".download"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # The .dsc and .debian.tar.xz are not served here, so apt exits non-zero after it has
        # the orig tarball; the tarball itself, checked below, is what counts.
        res = run(["apt-get", "source", "--download-only", f"qemu={_source_version()}"], cwd=tmp,
                  check=False, timeout=900)
        got = tmp / TARBALL
        if not got.exists():
            tail = (res.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"apt-get source qemu did not fetch {TARBALL}: {tail[0]}")
        got.rename(tar)
        shutil.rmtree(tmp, ignore_errors=True)
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    listed = _apt_sha256()
    if digest != TARBALL_SHA256 or (listed is not None and listed != digest):
        tar.unlink()
        raise UserError(f"{TARBALL}: sha256 {digest} matches neither the pinned {TARBALL_SHA256} "
                        f"nor apt's {listed}; removed it, run again")
    return tar


def _env() -> dict[str, str]:
    return cache.ccache_env(paths.cache_root(), paths.cache_root() / "qbuild")


def _emulator(final: Path) -> Path:
    return final / "bin" / "qemu-system-x86_64"


def _version(exe: Path) -> str:
    m = re.search(r"version (\S+)", run([exe, "--version"]).stdout)
    return m.group(1) if m else "?"


def debian() -> Emulator:
    if not DEBIAN_EMULATOR.exists():
        raise UserError(f"{DEBIAN_EMULATOR} missing: run `make deps` (installs QEMU 10 from bookworm-backports)")
    return Emulator(QemuKind.DEBIAN, DEBIAN_EMULATOR, _version(DEBIAN_EMULATOR))


def cached() -> list[JsonObject]:
    return cache.listing(paths.cache_root() / "qemu")


def build(progress: Progress | None = None, jobs: int | None = None) -> Emulator:
    note = progress or buildlog.stderr_progress
    patches = series()
    # The key needs the tarball's hash; a cached build is found without reading the tarball.
    final_glob = sorted((paths.cache_root() / "qemu").glob("patched-*/meta.json"))
    key = build_key(TARBALL_SHA256)
    final = paths.cache_root() / "qemu" / f"patched-{key['key']}"
    if (final / "meta.json").exists() and _emulator(final).exists():
        return Emulator(QemuKind.PATCHED, _emulator(final), cache.read_json(final / "meta.json")["version"],
                        key["key"])
    note("qemu", "fetching the source (apt-get source)")
    tar = fetch_source()
    env = _env()
    work = paths.cache_root() / "qbuild"
    tree, bdir = work / f"qemu-{VERSION}", work / "build"  # fixed paths keep ccache hits
    t0 = time.monotonic()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    note("qemu", "unpacking source")
    run(["tar", "-xf", tar, "-C", work, "--no-same-owner"], timeout=900)
    note("qemu", f"applying {len(patches)} patches")
    patchseries.apply(tree, patches, f"QEMU {VERSION}")
    bdir.mkdir()
    note("qemu", "configuring (x86_64-softmmu, minimal features)")
    run([tree / "configure", "--python=/usr/bin/python3", "--cc=ccache gcc", *CONFIGURE],
        cwd=bdir, env=env, timeout=900)
    njobs = jobs or os.cpu_count() or 2
    build_s = buildlog.run_build(["ninja", "-j", str(njobs)], "qemu", f"building (-j{njobs}, ccache)", note,
                                 cwd=bdir, env=env, timeout=7200)
    with cache.building(final) as out:
        stage = out / "stage"
        run(["ninja", "install"], cwd=bdir, env=env | {"DESTDIR": str(stage)}, timeout=900)
        for item in (stage / PREFIX.lstrip("/")).iterdir():
            item.rename(out / item.name)
        shutil.rmtree(stage)
        version = _version(_emulator(out))
        stats = run(["ccache", "-s"], env=env, check=False).stdout or ""
        cache.write_json(out / "meta.json", {
            "kind": str(QemuKind.PATCHED), **key, "version": version,
            "build_seconds": round(build_s, 1), "total_seconds": round(time.monotonic() - t0, 1),
            "jobs": njobs,
            "ccache": " ".join(ln.strip() for ln in stats.splitlines() if "hit" in ln.lower())[:300]})
    for old in final_glob:
        if old.parent != final:
            shutil.rmtree(old.parent, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return Emulator(QemuKind.PATCHED, _emulator(final), version, key["key"])


def resolve(kind: QemuKind) -> Emulator:
    return build() if kind is QemuKind.PATCHED else debian()
