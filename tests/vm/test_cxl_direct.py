"""The patched QEMU's direct path (the default): every head's region is direct-mapped, as
QEMU itself reports over QMP; CXL memory is read at local-memory speed; sharing holds in both
directions with concurrent writers; cxl-cli still shows the CXL objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.lifecycle.cxlpath import Observed
from testbed.lifecycle.testbed import Testbed

from .cxlmem import CXL, MiB, concurrent_writers, cxl_list, head_paths, read_mbps

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "two-node.yaml"))
# Reading CXL memory must run at least at 1/DIRECT_BOUND of local memory's speed. Measured
# here (TCG): about 0.9 of local on the direct path, about 0.005 on the MMIO path.
DIRECT_BOUND = 3.0


def test_qemu_reports_every_head_direct_mapped(testbed: Testbed) -> None:
    heads = head_paths(testbed)
    assert sorted((h.node, h.mhd) for h in heads) == [("node0", "mhd0"), ("node1", "mhd0")]
    for h in heads:
        assert h.observed is Observed.DIRECT and h.direct_bytes == h.size == 512 * MiB, h
        assert not h.fell_back


def test_cxl_reads_run_within_a_bounded_factor_of_local_memory(testbed: Testbed) -> None:
    for node in ("node0", "node1"):
        cxl = read_mbps(testbed, node, CXL, 256 * MiB, 3)
        local = read_mbps(testbed, node, "anon", 256 * MiB, 3)
        assert local / cxl < DIRECT_BOUND, f"{node}: CXL {cxl:.0f} MB/s, local {local:.0f} MB/s"


def test_sharing_holds_both_ways_with_concurrent_writers(testbed: Testbed) -> None:
    concurrent_writers(testbed, 64 * MiB, 256 * MiB)


def test_cxl_cli_still_shows_memdev_region_and_decoders(testbed: Testbed) -> None:
    for node in ("node0", "node1"):
        seen = cxl_list(testbed, node)
        (mem,) = seen["memdevs"]
        assert mem["memdev"] == "mem0" and mem["ram_size"] == 512 * MiB, mem
        (region,) = seen["regions"]
        assert region["size"] == 512 * MiB and region["interleave_ways"] == 1, region
        # cxl-cli groups decoders by level: the window, the host bridge's, the endpoint's.
        levels = {k: v for group in seen["decoders"] for k, v in group.items()}
        (root,) = levels["root decoders"]
        assert root["size"] == 4 << 30 and root["interleave_ways"] == 1, root
        for level in ("port decoders", "endpoint decoders"):
            (dec,) = levels[level]
            assert (dec["resource"], dec["size"], dec["interleave_ways"]) == (region["resource"], 512 * MiB, 1), dec
