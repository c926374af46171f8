"""Pruning old guest images after a build: only this image name's older versions, and never
one a recorded testbed still boots from (its nodes' overlays name it as their backing file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.artifacts import image
from testbed.lifecycle import names
from testbed.lifecycle import state as st

pytestmark = pytest.mark.unit
NEW, OLD, IN_USE, OTHER = "0123456789ab", "00000000beef", "fedcba987654", "aaaaaaaaaaaa"


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CXLTB_STATE_DIR", str(tmp_path / "state"))
    d = tmp_path / "cache" / "images"
    d.mkdir(parents=True)
    for f in (f"bookworm-{NEW}.qcow2", f"bookworm-{OLD}.qcow2", f"bookworm-{IN_USE}.qcow2",
              f"bookworm-big-{OTHER}.qcow2",   # another image whose name starts with bookworm-
              "bookworm-notes.qcow2",           # not a version: no 12-hex key
              f"bookworm-{OLD}.qcow2.part", f"trixie-{OLD}.qcow2"):
        (d / f).write_bytes(b"QFI\xfb")
    return d


def _record(testbed: str, image_path: Path, phase: st.Phase = st.Phase.UP) -> None:
    s = st.State(testbed, f"{testbed}.yaml", "", "x", phase, image=str(image_path))
    st.save(names.Layout(testbed), s)


def test_prune_removes_only_unused_older_versions_of_this_image(images: Path) -> None:
    _record("running", images / f"bookworm-{IN_USE}.qcow2")
    _record("half-up", images / f"bookworm-big-{OTHER}.qcow2", st.Phase.CREATING)
    removed = image.prune("bookworm", images / f"bookworm-{NEW}.qcow2")
    assert removed == [images / f"bookworm-{OLD}.qcow2"]
    assert sorted(p.name for p in images.iterdir()) == sorted([
        f"bookworm-{NEW}.qcow2", f"bookworm-{IN_USE}.qcow2", f"bookworm-big-{OTHER}.qcow2", "bookworm-notes.qcow2",
        f"bookworm-{OLD}.qcow2.part", f"trixie-{OLD}.qcow2"])


def test_prune_keeps_everything_while_a_state_file_cannot_be_read(images: Path) -> None:
    # A corrupt state may reference any version: deleting one could pull a running node's backing file.
    layout = names.Layout("broken")
    layout.root.mkdir(parents=True)
    layout.state_file.write_text(json.dumps({"testbed": "broken", "image": 7}))
    assert image.prune("bookworm", images / f"bookworm-{NEW}.qcow2") == []
    assert (images / f"bookworm-{OLD}.qcow2").exists()


def test_prune_recognises_a_reference_through_another_spelling_of_the_path(images: Path) -> None:
    _record("running", images / ".." / "images" / f"bookworm-{OLD}.qcow2")
    assert image.prune("bookworm", images / f"bookworm-{NEW}.qcow2") == [images / f"bookworm-{IN_USE}.qcow2"]
