"""The patched-QEMU pipeline's pure parts: the series, the cache key, the refusal of a tarball
whose hash is wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from testbed.artifacts import qemu
from testbed.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_series_names_every_patch_in_order() -> None:
    names = [p.name for p in qemu.series()]
    assert names == sorted(names) and len(names) == 4
    assert {p.name for p in (REPO / "qemu-patches").glob("*.patch")} == set(names)
    for p in qemu.series():  # git format-patch style, with a message that says why
        text = p.read_text()
        assert text.startswith("From ") and "\nSubject: [PATCH" in text and "\n---\n" in text


@pytest.fixture
def patches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "qemu-patches"
    d.mkdir()
    (d / "0001-a.patch").write_text("a\n")
    (d / "series").write_text("# comment\n0001-a.patch\n")
    monkeypatch.setattr(qemu, "PATCHES", d)
    return d


def test_key_follows_patches_flags_and_recipe(patches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k1 = qemu.build_key("t" * 64)["key"]
    assert qemu.build_key("t" * 64)["key"] == k1
    assert qemu.build_key("u" * 64)["key"] != k1
    (patches / "0001-a.patch").write_text("b\n")
    k2 = qemu.build_key("t" * 64)["key"]
    assert k2 != k1
    monkeypatch.setattr(qemu, "CONFIGURE", (*qemu.CONFIGURE, "--enable-debug"))
    assert qemu.build_key("t" * 64)["key"] not in (k1, k2)
    monkeypatch.setattr(qemu, "RECIPE", "qbuild-x")
    assert len({k1, k2, qemu.build_key("t" * 64)["key"]}) == 3


@pytest.mark.parametrize("line", ["../etc/passwd", "missing.patch"])
def test_series_refuses_names_that_are_not_patch_files(patches: Path, line: str) -> None:
    (patches / "series").write_text(line + "\n")
    with pytest.raises(UserError, match="not a patch file in qemu-patches/"):
        qemu.series()


def test_a_tarball_with_the_wrong_hash_is_refused_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXLTB_CACHE_DIR", str(tmp_path))
    tar = tmp_path / "src" / qemu.TARBALL
    tar.parent.mkdir()
    tar.write_bytes(b"not qemu")
    monkeypatch.setattr(qemu, "_apt_sha256", lambda: None)
    with pytest.raises(UserError, match=hashlib.sha256(b"not qemu").hexdigest()):
        qemu.fetch_source()
    assert not tar.exists()
