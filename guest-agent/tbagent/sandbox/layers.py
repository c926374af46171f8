"""Root filesystem layers: a shared read-only base built once from the node's own root, and one
small immutable layer per function (its code at /function). A sandbox's rootfs is an overlay of
[function layer, base] with a fresh upper directory on the sandbox's own tmpfs.

The base is a directory, not bind mounts: overlayfs does not descend into mounts below a lower
directory, so the base holds hard links to the node's /usr (same ext4 file system; no copy of
the data, about a second to make under TCG), the usr-merge symlinks, a copy of /etc without the
node's secrets (ssh host keys, shadow files), and empty mount points.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tbagent.functions import FunctionSpec
from tbagent.sandbox import paths

ETC_SKIP = {"ssh", "shadow", "shadow-", "gshadow", "gshadow-", "machine-id"}
SKELETON = {"proc": 0o555, "sys": 0o555, "sys/fs": 0o755, "sys/fs/cgroup": 0o755, "dev": 0o755, "run": 0o755,
            "tmp": 0o1777, "var": 0o755, "var/tmp": 0o1777, "root": 0o700, "home": 0o755, "mnt": 0o755}
USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
BASE_NAME = "base"


def base_dir(store: Path | None = None) -> Path:
    return (store or paths.STORE) / BASE_NAME


def build_base(src: Path = Path("/"), store: Path | None = None) -> Path:
    """Make the base once (idempotent); a half-built one is removed and made again."""
    final = base_dir(store)
    if (final / ".complete").exists():
        return final
    work = final.with_name(BASE_NAME + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for rel, mode in SKELETON.items():
        (work / rel).mkdir(exist_ok=True)
        os.chmod(work / rel, mode)
    for name in USR_LINKS:
        link = src / name
        if link.is_symlink():
            os.symlink(os.readlink(link), work / name)
    # Hard links to every file of the node's /usr (-x: not into the modules disk on /usr/lib/modules).
    subprocess.run(["cp", "-al", "--one-file-system", str(src / "usr"), str(work / "usr")], check=True)
    (work / "etc").mkdir()
    for entry in sorted((src / "etc").iterdir()):
        if entry.name in ETC_SKIP:
            continue
        dest = work / "etc" / entry.name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dest, symlinks=True)
        else:
            shutil.copy2(entry, dest, follow_symlinks=False)
    (work / "etc" / "hostname").write_text("sandbox\n")
    (work / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (work / ".complete").write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    work.rename(final)
    return final


def layer_files(spec: FunctionSpec) -> dict[str, bytes]:
    """The files of a function's own layer, relative to the layer root."""
    meta = {"name": spec.name, "env": spec.env}
    return {
        f"{paths.FUNCTION_DIR.lstrip('/')}/handler.py": spec.source.read_bytes(),
        f"{paths.FUNCTION_DIR.lstrip('/')}/meta.json": json.dumps(meta, sort_keys=True).encode() + b"\n",
    }


def layer_id(spec: FunctionSpec) -> str:
    h = hashlib.sha256()
    for rel, data in sorted(layer_files(spec).items()):
        h.update(rel.encode() + b"\0" + data)
    return f"{spec.name}-{h.hexdigest()[:12]}"


def function_layer(spec: FunctionSpec, store: Path | None = None) -> Path:
    """The function's layer directory, made on first use. Layers are immutable: a changed
    function gets a new directory, so a mounted overlay never sees its lower layer change."""
    final = (store or paths.STORE) / "fn" / layer_id(spec)
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # A work folder of its own per call: threads of one process (the agent and the pool daemon
    # serve requests concurrently) share a pid, so a pid-named folder was built by two at once.
    work = Path(tempfile.mkdtemp(prefix=final.name + ".tmp", dir=final.parent))
    work.chmod(0o755)  # as a plain mkdir makes it: sandboxes read their layers
    for rel, data in layer_files(spec).items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    try:
        work.rename(final)
    except OSError:  # made meanwhile by another thread
        shutil.rmtree(work, ignore_errors=True)
    return final


def in_stage(layer: Path, store: Path | None = None) -> str:
    """A layer's path as a sandbox init sees it (the store is bind-mounted at /store)."""
    return f"{paths.IN_STORE}/{layer.relative_to(store or paths.STORE)}"


def overlay_options(lowers: list[str], upper: str, work: str) -> str:
    """Mount data for overlayfs; lowers are listed top-most first."""
    for p in [*lowers, upper, work]:
        if any(c in p for c in ",:\\"):
            raise ValueError(f"overlay path {p!r} contains a separator")
    return f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
