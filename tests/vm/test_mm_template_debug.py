"""Slow tier: the selftests again on the debug kernel (DEBUG_VM, lockdep, page-table
checks); dmesg must stay clean (no WARNING, BUG, lockdep report) on both nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.pytest_plugin import Testbed

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
    _kernel_check(testbed)
    config = testbed.exec("node0", "sh", "-c", "test -e /proc/config.gz && zcat /proc/config.gz || true").stdout
    if config:
        assert "CONFIG_PROVE_LOCKING=y" in config and "CONFIG_DEBUG_VM=y" in config


def test_selftests_clean_under_debug(selftests: Testbed) -> None:
    check_selftests(selftests)
    check_cross_node(selftests)
    check_same_pages(selftests)
