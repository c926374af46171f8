"""The same patched QEMU with `path: mmio`: QEMU reports no direct mapping, and reading CXL
memory is far slower than local memory. This proves the switch is real and that the direct
path's bound in test_cxl_direct.py would trip on the MMIO path."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.lifecycle.cxlpath import Observed
from testbed.lifecycle.testbed import Testbed

from .cxlmem import CXL, MiB, concurrent_writers, head_paths, read_mbps
from .test_cxl_direct import DIRECT_BOUND

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "two-node-mmio.yaml"))


def test_qemu_reports_every_head_on_mmio(testbed: Testbed) -> None:
    heads = head_paths(testbed)
    assert len(heads) == 2
    for h in heads:
        assert h.configured == "mmio" and h.observed is Observed.MMIO and h.direct_bytes == 0, h


def test_cxl_reads_on_mmio_fail_the_direct_bound(testbed: Testbed) -> None:
    for node in ("node0", "node1"):
        # 256 MiB as on the direct path, one measured pass: at ~20 MB/s that is ~13 s.
        cxl = read_mbps(testbed, node, CXL, 256 * MiB, 1)
        local = read_mbps(testbed, node, "anon", 256 * MiB, 3)
        assert local / cxl > 10 * DIRECT_BOUND, f"{node}: CXL {cxl:.0f} MB/s, local {local:.0f} MB/s"


def test_sharing_holds_both_ways_with_concurrent_writers(testbed: Testbed) -> None:
    concurrent_writers(testbed, 4 * MiB, 256 * MiB)
