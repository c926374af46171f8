"""Slow tier: the selftests again on the debug kernel (DEBUG_VM, lockdep, page-table
checks); dmesg must stay clean (no WARNING, BUG, lockdep report) on both nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.lifecycle.testbed import Testbed

from .test_mm_template import (
    check_cross_node,
    check_same_pages,
    check_selftests,
    install_selftests,
)
from .test_mm_template import test_every_node_runs_the_patched_kernel as _kernel_check

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.topology(str(REPO / "testbeds" / "two-node-mmt-debug.yaml"))]


@pytest.fixture(scope="module")
def selftests(testbed: Testbed) -> Testbed:
    return install_selftests(testbed)


def test_debug_kernel_boots(testbed: Testbed) -> None:
    _kernel_check(testbed)  # every node runs the release recorded for this testbed's kernel
    # The config the booted kernel was built from, kept beside it in the kernel cache (the guest
    # kernel has no /proc/config.gz). read_text raises if it is missing: no silent pass.
    config = (Path(testbed.state.kernel["dir"]) / "config").read_text()
    assert "CONFIG_PROVE_LOCKING=y" in config and "CONFIG_DEBUG_VM=y" in config
    # And in the running kernel itself: /proc/lockdep_chains exists only with PROVE_LOCKING.
    for node in testbed.nodes:
        assert node.run(["test", "-e", "/proc/lockdep_chains"], check=False).ok, f"{node.name}: lockdep is not on"


def test_selftests_clean_under_debug(selftests: Testbed) -> None:
    check_selftests(selftests)
    check_cross_node(selftests)
    check_same_pages(selftests)
