"""Shared test set-up. A `vm` test that is skipped in CI is a failure, not a pass."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/unit/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.unit)
        if "tests/vm/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vm)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and item.get_closest_marker("vm") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"vm test skipped in CI: {report.longrepr}"
