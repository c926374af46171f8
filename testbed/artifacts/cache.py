"""Content-addressed cache helpers: hash recipes, publish results atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tbproto.jsontypes import Json, JsonObject


def hash_files(paths: Iterable[Path], root: Path, extra: Iterable[str] = ()) -> str:
    """sha256 over relative names, modes and contents of files (recursively), plus extra strings."""
    h = hashlib.sha256()
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(oct(f.stat().st_mode & 0o777).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    for s in extra:
        h.update(s.encode() + b"\0")
    return h.hexdigest()


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside `final`; on success rename it into place, else remove it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)  # QEMU runs as another user and must read cached kernels and images
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def listing(folder: Path) -> list[JsonObject]:
    """The meta.json of every artefact under folder, each with its directory as "dir"."""
    rows = []
    for meta in sorted(folder.glob("*/meta.json")):
        data: JsonObject = read_json(meta)
        data["dir"] = str(meta.parent)
        rows.append(data)
    return rows


def ccache_env(root: Path, basedir: Path) -> dict[str, str]:
    """ccache settings shared by the kernel and QEMU builds; a fixed basedir keeps hits across trees."""
    ccache = root / "ccache"
    ccache.mkdir(parents=True, exist_ok=True)
    return {"CCACHE_DIR": str(ccache), "CCACHE_BASEDIR": str(basedir), "CCACHE_NOHASHDIR": "1",
            "CCACHE_MAXSIZE": "5G"}


def write_json(path: Path, data: Json) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Json:
    return json.loads(path.read_text())
