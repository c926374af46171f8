"""bench/dispatch.py with tiny sizes: the real executor runs through its seam against the fake
agents, every invocation reaches an agent, the cap of topology.py holds unless lifted (and is
restored), and the figures are combined as medians over runs. No timing is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from testbed.config import topology
from testbed.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _load() -> object:
    """bench/ is a folder of scripts, not a package: load the file as a module."""
    spec = importlib.util.spec_from_file_location("bench_dispatch", REPO / "bench" / "dispatch.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


if TYPE_CHECKING:
    import dispatch  # mypy checks bench/dispatch.py under this name
else:
    dispatch = _load()

TINY = dispatch.Load(delay_s=0.0005, rate=300.0, duration=0.1, max_inflight=8)


def test_a_run_reaches_every_node_and_counts_every_call(tmp_path: Path) -> None:
    r = dispatch.run_once(3, TINY, tmp_path)
    assert r.nodes == 3 and set(r.loops) == {"open", "closed"}
    for loop, f in r.loops.items():
        # The agents' own count against the executor's records: no call lost or invented.
        assert f.invocations == f.requests > 0, loop
        assert f.dispatch_p50 <= f.dispatch_p99
    assert r.loops["open"].lateness_p50 is not None and r.loops["closed"].lateness_p50 is None
    # Three closed-loop clients, one per node, each in its own thread beside the main thread.
    assert r.loops["closed"].peak_threads >= r.threads_before + 3
    # Each (thread, node) session is checked once with a ping before use: at least one per
    # node in the closed loop (a client per node) and one per node the open loop reached.
    assert r.session_pings >= 3 + 1


def test_the_node_cap_refuses_unless_lifted_and_is_restored(tmp_path: Path) -> None:
    over = topology.MAX_NODES + 1
    with pytest.raises(ConfigError, match=f"between 1 and {topology.MAX_NODES}, got {over}"):
        dispatch.run_once(over, TINY, tmp_path)
    cap = topology.MAX_NODES
    r = dispatch.run_once(over, dispatch.Load(0.0, 100.0, 0.05, 4), tmp_path, lift_cap=True)
    assert topology.MAX_NODES == cap
    assert r.loops["closed"].requests >= over  # every client ran at least once


def _loop(p50: float, late: float | None) -> dispatch.LoopFigures:
    return dispatch.LoopFigures(10, 10, p50, 2 * p50, late, late, 100.0, 5, 1.0)


def test_combine_takes_medians_over_runs_and_the_table_shows_them() -> None:
    runs = [dispatch.RunFigures(4, {"open": _loop(p, 0.5 * p), "closed": _loop(p, None)}, w, 1, 8, w - 0.5)
            for p, w in ((1.0, 3.0), (9.0, 1.0), (2.0, 2.0))]
    c = dispatch.combine(runs)
    assert c["open"]["dispatch_p50"] == 2.0 and c["open"]["dispatch_p99"] == 4.0
    assert c["open"]["lateness_p50"] == 1.0 and c["closed"]["lateness_p50"] is None
    assert c[""]["wall_s"] == 2.0 and c[""]["units_s"] == 1.5
    text = dispatch.table([(4, c)])
    assert "| 4 | open | 10 | 100 | 2.000 | 4.000 | 1.000 | 1.000 | 5 | 1.00 | 1.50 | 2.00 |" in text
    assert "| 4 | closed | 10 | 100 | 2.000 | 4.000 | - | - | 5 | 1.00 | 1.50 | 2.00 |" in text


def test_the_session_ping_has_its_own_delay(tmp_path: Path) -> None:
    # A session ping that takes 50 ms: each closed-loop client waits for its own before its
    # first call, so the unit lasts at least that long even with a 20 ms loop.
    slow = dispatch.Load(0.0, 1000.0, 0.02, 2, session_delay_s=0.05)
    r = dispatch.run_once(2, slow, tmp_path)
    assert r.session_pings >= 2 and r.loops["closed"].unit_wall_s >= 0.05
