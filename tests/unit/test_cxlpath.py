"""Each head's CXL path as read back from QEMU, against QMP replies recorded from real QEMU
10.0.2 domains (tests/unit/data/qmp-replies.json), and what a run's report then says."""

from __future__ import annotations

import libvirt_qemu
import pytest

from testbed.lifecycle import cxlpath
from testbed.lifecycle.cxlpath import Observed
from testbed.scenario.output import fidelity

from .qmp_replay import Conn, monitor

MiB = 1 << 20


@pytest.fixture(autouse=True)
def recorded_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libvirt_qemu, "qemuMonitorCommand", monitor)


@pytest.mark.parametrize(("variant", "configured", "observed", "direct", "fell_back"), [
    ("patched-direct", "direct", Observed.DIRECT, 512 * MiB, False),
    ("patched-mmio", "mmio", Observed.MMIO, 0, False),
    ("debian", "mmio", Observed.MMIO, 0, False),
    ("patched-mmio", "direct", Observed.MMIO, 0, True),  # configured direct, but QEMU maps nothing
])
def test_head_path_from_recorded_replies(variant: str, configured: str, observed: Observed, direct: int,
                                         fell_back: bool) -> None:
    (h,) = cxlpath.testbed_paths(Conn({"d0": variant}), {"node0": ("d0", ["mhd0"])}, {"mhd0": configured})
    assert (h.observed, h.direct_bytes, h.size, h.fell_back) == (observed, direct, 512 * MiB, fell_back)
    assert h.as_dict()["fell_back"] is fell_back
    if variant == "debian":
        assert "no direct mapping" in h.detail and "not found" in h.detail


def test_a_missing_domain_or_device_is_unknown_not_mmio() -> None:
    heads = cxlpath.testbed_paths(Conn({}), {"node0": ("gone", ["mhd0"])}, {"mhd0": "direct"})
    assert [h.observed for h in heads] == [Observed.UNKNOWN] and "Domain not found" in heads[0].detail
    assert heads[0].fell_back  # configured direct, not seen direct: reported, never assumed


@pytest.mark.parametrize(("direct", "size", "want"), [
    (0, 512 * MiB, Observed.MMIO), (256 * MiB, 512 * MiB, Observed.PARTIAL), (512 * MiB, 512 * MiB, Observed.DIRECT)])
def test_classify(direct: int, size: int, want: Observed) -> None:
    assert cxlpath.classify(direct, size) is want


def test_distortions_follow_what_was_observed() -> None:
    direct = cxlpath.testbed_paths(Conn({"d0": "patched-direct"}), {"n0": ("d0", ["mhd0"])}, {"mhd0": "direct"})
    notes = fidelity.distortions("tcg", [h.as_dict() for h in direct])
    assert any(n.startswith("direct path:") and "2x DRAM latency" in n for n in notes)
    assert any(n.startswith("TCG:") for n in notes)
    assert not any(n.startswith(("mmio path:", "FELL BACK")) for n in notes)
    fell = cxlpath.testbed_paths(Conn({"d0": "patched-mmio"}), {"n0": ("d0", ["mhd0"])}, {"mhd0": "direct"})
    notes = fidelity.distortions("kvm", [h.as_dict() for h in fell])
    assert any(n.startswith("mmio path:") for n in notes)
    assert any(n.startswith("FELL BACK: n0/mhd0") for n in notes)
    assert not any(n.startswith(("direct path:", "TCG:")) for n in notes)
