"""The mm-template series applies, patch by patch, to the pinned Debian linux-source-6.12."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from testbed.artifacts import kbuild

pytestmark = pytest.mark.skipif(not kbuild.SOURCE_TARBALL.exists(), reason="linux-source-6.12 not installed")


def test_series_applies_to_the_pinned_source(tmp_path: Path) -> None:
    patches = kbuild.series()
    assert len(patches) >= 2
    touched: set[str] = set()
    for p in patches:
        touched |= {m.group(1) for m in re.finditer(r"^\+\+\+ b/(\S+)", p.read_text(errors="replace"), re.M)}
        touched |= {m.group(1) for m in re.finditer(r"^--- a/(\S+)", p.read_text(errors="replace"), re.M)}
    listing = subprocess.run(["tar", "-tf", str(kbuild.SOURCE_TARBALL)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    top = listing[0].split("/")[0]
    members = [f"{top}/{t}" for t in sorted(touched) if f"{top}/{t}" in set(listing)]
    subprocess.run(["tar", "-xf", str(kbuild.SOURCE_TARBALL), "-C", str(tmp_path), *members], check=True)
    tree = tmp_path / top
    for p in patches:  # each patch on top of the previous ones, as the series file orders them
        r = subprocess.run(["patch", "-p1", "--forward", "--batch", "-i", str(p)], cwd=tree, capture_output=True,
                           text=True, check=False)
        assert r.returncode == 0, f"{p.name}:\n{r.stdout}{r.stderr}"
        assert "offset" not in r.stdout and "fuzz" not in r.stdout, f"{p.name} applies only with offset/fuzz"


def test_every_patch_is_signed_off_with_a_message() -> None:
    for p in kbuild.series():
        text = p.read_text()
        assert re.search(r"^Subject: \[PATCH[^\]]*\] \S+: .+", text, re.M), p.name
        assert "Signed-off-by: " in text, p.name
        body = text.split("\n\n", 1)[1].split("\n---\n", 1)[0]
        assert len(body.strip().splitlines()) >= 3, f"{p.name}: commit message too short"
