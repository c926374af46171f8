"""Testbed lifecycle without libvirt or root: the per-name lock, who tears down what, corrupt
state files and what an interrupted rollback reports. libvirt is replaced by a fake connection
holding the objects a crashed `up` of testbed "tb" leaves behind."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import libvirt
import pytest

from testbed.config.topology import HostFacts, Topology
from testbed.config.topology import load as load_topology
from testbed.errors import Interrupted, UserError
from testbed.lifecycle import daemons, locks, names, provision
from testbed.lifecycle import state as st
from testbed.lifecycle.testbed import Testbed
from testbed.ui import cli, status

pytestmark = pytest.mark.unit


# --- fakes --------------------------------------------------------------------------------

class FakeDomain:
    def __init__(self, conn: FakeConn, name: str) -> None:
        self.conn = conn
        self._name = name

    def name(self) -> str:
        return self._name

    def isPersistent(self) -> bool:
        return False  # the toolkit starts transient domains (createXML)

    def isActive(self) -> bool:
        return self._name in self.conn.domains

    def destroyFlags(self, flags: int) -> None:
        self.conn.domains.pop(self._name)
        self.conn.removed.append(f"domain {self._name}")

    def state(self) -> list[int]:
        return [libvirt.VIR_DOMAIN_RUNNING, 1]


class FakeNetwork:
    def __init__(self, conn: FakeConn, name: str) -> None:
        self.conn = conn
        self._name = name

    def isPersistent(self) -> bool:
        return False

    def isActive(self) -> bool:
        return True

    def destroy(self) -> None:
        self.conn.networks.discard(self._name)
        self.conn.removed.append(f"network {self._name}")


class FakeConn:
    """The libvirt calls sweep and status make, over sets of domain and network names."""

    def __init__(self, domains: list[str], networks: list[str]) -> None:
        self.domains = {d: FakeDomain(self, d) for d in domains}
        self.networks = set(networks)
        self.removed: list[str] = []

    def listAllDomains(self) -> list[FakeDomain]:
        return list(self.domains.values())

    def lookupByName(self, name: str) -> FakeDomain:
        if name not in self.domains:
            raise libvirt.libvirtError(f"Domain not found: no domain with matching name '{name}'")
        return self.domains[name]

    def networkLookupByName(self, name: str) -> FakeNetwork:
        if name not in self.networks:
            raise libvirt.libvirtError(f"Network not found: no network with matching name '{name}'")
        return FakeNetwork(self, name)


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """State, cache and shm roots in a temporary directory; no hugetlbfs mounts."""
    for var, sub in (("CXLTB_STATE_DIR", "state"), ("CXLTB_CACHE_DIR", "cache"), ("CXLTB_SHM_DIR", "shm")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setattr(provision, "hugetlbfs_mounts", lambda: [])
    return tmp_path


def _leftovers(roots: Path) -> FakeConn:
    """What a crashed `up` of testbed "tb" (two nodes, one MHD) leaves, plus another testbed's domain."""
    (roots / "shm" / "cxltb-tb_mhd0").write_bytes(b"\0" * 4096)
    (roots / "shm" / "cxltb-other_mhd0").write_bytes(b"\0" * 4096)
    names.Layout("tb").node_dir("node0").mkdir(parents=True)
    return FakeConn(["cxltb-tb_node0", "cxltb-tb_node1", "cxltb-other_node0"], ["cxltb-tb", "cxltb-other"])


def _topology(tmp_path: Path, name: str = "tb") -> Topology:
    f = tmp_path / f"{name}.yaml"
    f.write_text(f"name: {name}\nnodes: 2\n")
    return load_topology(f, HostFacts(64 << 30, 8))


def _hold_lock(name: str, state_dir: str, held: Event, release: Event) -> None:
    os.environ["CXLTB_STATE_DIR"] = state_dir
    with locks.testbed_lock(name):
        held.set()
        release.wait(30)


@contextlib.contextmanager
def lock_held_elsewhere(name: str) -> Iterator[int]:
    """Another process holding the testbed's lock, as a concurrent `testbed up` would; yields its pid."""
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(name, os.environ["CXLTB_STATE_DIR"], held, release))
    proc.start()
    try:
        assert held.wait(10), "the lock holder did not start"
        assert proc.pid is not None
        yield proc.pid
    finally:
        release.set()
        proc.join(10)


def _no_libvirt() -> Any:
    pytest.fail("libvirt was contacted although another process holds the testbed lock")


# --- 1. one up/down of a name at a time ----------------------------------------------------

def test_lock_refuses_a_second_holder_and_names_its_pid(roots: Path) -> None:
    with lock_held_elsewhere("tb") as pid:
        with pytest.raises(UserError, match=rf"testbed tb is being brought up or down by another process \(pid {pid},"):
            with locks.testbed_lock("tb"):
                pass
        with locks.testbed_lock("other"):  # other names are not held up
            pass
    with locks.testbed_lock("tb"):  # released when its holder ends
        assert locks.lock_path("tb").read_text() == f"{os.getpid()}\n"
    # Outside the testbed's directory, which `down` removes while holding the lock.
    assert not locks.lock_path("tb").is_relative_to(names.Layout("tb").root)


def test_up_of_a_busy_name_fails_at_once_without_sweeping(roots: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(daemons, "connection", _no_libvirt)
    f = roots / "tb.yaml"
    f.write_text("name: tb\nnodes: 2\n")
    ops = cli.Ops(host_facts=lambda: HostFacts(64 << 30, 8), up=provision.up)
    with lock_held_elsewhere("tb") as pid:
        assert cli.main(["up", "-f", str(f)], ops=ops) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"testbed: error: testbed tb is being brought up or down by another process (pid {pid},")


def test_down_of_a_busy_name_fails_at_once(roots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemons, "connection", _no_libvirt)
    with lock_held_elsewhere("tb") as pid, pytest.raises(UserError, match=f"pid {pid}"):
        provision.down("tb")


def test_down_holds_the_lock_while_it_sweeps(roots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _leftovers(roots)
    seen: list[bool] = []

    @contextlib.contextmanager
    def connection() -> Iterator[FakeConn]:
        try:
            with locks.testbed_lock("tb"):
                seen.append(False)
        except UserError:
            seen.append(True)
        yield conn

    monkeypatch.setattr(daemons, "connection", connection)
    provision.down("tb")
    assert seen == [True]
    assert set(conn.domains) == {"cxltb-other_node0"} and conn.networks == {"cxltb-other"}
    assert not names.Layout("tb").root.exists() and locks.lock_path("tb").exists()


# --- 2. demo and the pytest fixture leave a testbed they did not create --------------------

def _tb_state() -> st.State:
    s = st.State("tb", "tb.yaml", "", "x", st.Phase.UP, accel="tcg", kernel={"release": "6.12"})
    s.nodes = {n: st.NodeState(n, f"cxltb-tb_{n}", 4000 + i, "10.0.0.1/24", ["m"]) for i, n in enumerate(["n0", "n1"])}
    return s


@pytest.mark.parametrize("created", [False, True])
def test_demo_tears_down_only_a_testbed_it_created(tmp_path: Path, created: bool,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    downs: list[str] = []
    f = tmp_path / "tb.yaml"
    f.write_text("name: tb\nnodes: 2\n")
    ops = cli.Ops(host_facts=lambda: HostFacts(64 << 30, 8), up=lambda topo, progress: (_tb_state(), created),
                  prove_sharing=lambda tb: [], down=downs.append)
    assert cli.main(["demo", "-f", str(f)], ops=ops) == 0
    assert downs == (["tb"] if created else [])
    if not created:
        assert "was already up" in capsys.readouterr().out


@pytest.mark.parametrize("created", [False, True])
def test_fixture_tears_down_only_a_testbed_it_created(tmp_path: Path, created: bool) -> None:
    downs: list[str] = []
    with Testbed.up(_topology(tmp_path), up=lambda t, progress: (_tb_state(), created), down=downs.append) as tb:
        assert tb.state.testbed == "tb"
    assert downs == (["tb"] if created else [])


def test_fixture_does_not_tear_down_after_a_refused_up(tmp_path: Path) -> None:
    def busy(topology: Topology, progress: Any) -> tuple[st.State, bool]:
        raise UserError("testbed tb is being brought up or down by another process (pid 1)")

    downs: list[str] = []
    with pytest.raises(UserError), Testbed.up(_topology(tmp_path), up=busy, down=downs.append):
        pass
    assert downs == []


# --- 3. corrupt state files -----------------------------------------------------------------

CORRUPT = {
    "null": "null",
    "string": '"x"',
    "list": "[1, 2]",
    "truncated": '{"testbed": "tb", "topo',
    "missing fields": '{"testbed": "tb"}',
    "unknown field": '{"testbed": "tb", "topology_file": "", "topology_text": "", "config_hash": "", "colour": 1}',
    "unknown object kind": '{"testbed": "tb", "topology_file": "", "topology_text": "", "config_hash": "", '
                           '"objects": [{"kind": "volume", "name": "cxltb-tb_x"}]}',
    "object without a name": '{"testbed": "tb", "topology_file": "", "topology_text": "", "config_hash": "", '
                              '"objects": [{"kind": "domain"}]}',
    "bad node": '{"testbed": "tb", "topology_file": "", "topology_text": "", "config_hash": "", '
                '"nodes": {"n0": {"name": "n0"}}}',
    "another testbed's objects": '{"testbed": "tb", "topology_file": "", "topology_text": "", "config_hash": "", '
                                 '"objects": [{"kind": "domain", "name": "cxltb-other_node0"}]}',
    "another testbed's name": '{"testbed": "other", "topology_file": "", "topology_text": "", "config_hash": ""}',
}


@pytest.mark.parametrize("text", CORRUPT.values(), ids=CORRUPT.keys())
def test_down_with_a_corrupt_state_sweeps_by_name_and_says_so_once(roots: Path, text: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    conn = _leftovers(roots)
    names.Layout("tb").state_file.write_text(text)
    with caplog.at_level(logging.WARNING, logger="testbed"):
        removed = provision.sweep(conn, "tb")
    assert set(conn.domains) == {"cxltb-other_node0"} and conn.networks == {"cxltb-other"}
    assert sorted(p.name for p in (roots / "shm").iterdir()) == ["cxltb-other_mhd0"]
    assert not names.Layout("tb").root.exists()
    assert "domain cxltb-tb_node0" in removed and "network cxltb-tb" in removed
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "corrupt state" in warnings[0] and "removing everything named after testbed tb" in warnings[0]


def test_a_good_state_round_trips(roots: Path) -> None:
    s = _tb_state()
    s.objects = [{"kind": st.Kind.NETWORK, "name": "cxltb-tb"}, {"kind": st.Kind.FILE, "name": "/dev/shm/cxltb-tb_m"}]
    s.timings = {"up_total": 1.5}
    st.save(names.Layout("tb"), s)
    assert st.load(names.Layout("tb")) == s


@pytest.mark.parametrize("text", [CORRUPT["null"], CORRUPT["unknown object kind"]], ids=["null", "unknown kind"])
def test_status_reports_a_corrupt_state_in_one_line(roots: Path, text: str, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    conn = _leftovers(roots)
    names.Layout("tb").state_file.write_text(text)

    @contextlib.contextmanager
    def connection() -> Iterator[FakeConn]:
        yield conn

    monkeypatch.setattr(daemons, "connection", connection)
    data = status.all_status(["tb"], probe=False)
    assert data[0]["phase"] == "corrupt" and "corrupt state" in data[0]["error"]
    ops = cli.Ops(known=lambda root: ["tb"], status=lambda n: status.all_status(n, probe=False))
    assert cli.main(["status"], ops=ops) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("testbed tb: ") and "corrupt state" in lines[0]


# --- 4. what an interrupted `up` claims -----------------------------------------------------

def _interrupted_up(roots: Path, sweep: Callable[[Any, str], list[str]], monkeypatch: pytest.MonkeyPatch) -> Interrupted:
    """Ctrl-C inside an `up` transaction that has recorded a network and a domain."""
    monkeypatch.setattr(provision, "sweep", sweep)
    layout = names.Layout("tb")
    caught: KeyboardInterrupt | None = None
    try:  # not pytest.raises: a bare KeyboardInterrupt escaping it would stop the whole session
        with provision.transaction(FakeConn([], []), layout, st.State("tb", "tb.yaml", "", "x")) as tx:
            tx.record(st.Kind.NETWORK, "cxltb-tb")
            tx.record(st.Kind.DOMAIN, "cxltb-tb_node0")
            raise KeyboardInterrupt
    except KeyboardInterrupt as exc:
        caught = exc
    assert isinstance(caught, Interrupted), f"the transaction re-raised {caught!r}, not Interrupted"
    return caught


def test_second_ctrl_c_during_rollback_is_reported_with_what_may_be_left(roots: Path, monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted_sweep(conn: Any, testbed: str) -> list[str]:
        raise KeyboardInterrupt  # the second Ctrl-C

    exc = _interrupted_up(roots, interrupted_sweep, monkeypatch)
    assert not exc.rolled_back
    assert exc.left == ("domain cxltb-tb_node0", "network cxltb-tb", f"dir {names.Layout('tb').root}")

    def up(topo: Any, progress: Any) -> Any:
        raise exc

    f = roots / "tb.yaml"
    f.write_text("name: tb\nnodes: 2\n")
    assert cli.main(["up", "-f", str(f)], ops=cli.Ops(host_facts=lambda: HostFacts(64 << 30, 8), up=up)) == 130
    err = capsys.readouterr().err
    assert "rolled back" not in err
    assert "domain cxltb-tb_node0; network cxltb-tb" in err and "`testbed down tb`" in err


def test_completed_rollback_is_reported_as_such(roots: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    exc = _interrupted_up(roots, lambda conn, testbed: [], monkeypatch)
    assert exc.rolled_back

    def up(topo: Any, progress: Any) -> Any:
        raise exc

    f = roots / "tb.yaml"
    f.write_text("name: tb\nnodes: 2\n")
    assert cli.main(["up", "-f", str(f)], ops=cli.Ops(host_facts=lambda: HostFacts(64 << 30, 8), up=up)) == 130
    assert "everything created was rolled back" in capsys.readouterr().err


def test_an_interrupt_outside_a_transaction_claims_no_rollback(capsys: pytest.CaptureFixture[str]) -> None:
    def down(name: str) -> list[str]:
        raise KeyboardInterrupt  # e.g. Ctrl-C during `testbed down`

    assert cli.main(["down", "tb"], ops=cli.Ops(down=down)) == 130
    err = capsys.readouterr().err
    assert "rolled back" not in err and "testbed down NAME" in err


def test_demo_without_a_file_uses_the_bundled_topology_from_any_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from testbed import paths

    monkeypatch.chdir(tmp_path)  # no testbeds/ here
    loaded: list[Path] = []

    def load(path: Path, host: HostFacts | None = None, /) -> Topology:
        loaded.append(Path(path))
        raise UserError("stop here")

    ops = cli.Ops(host_facts=lambda: HostFacts(64 << 30, 8), load_topology=load)
    assert cli.main(["demo"], ops=ops) == 2
    assert loaded == [paths.DATA / "testbeds" / "two-node.yaml"] and loaded[0].is_file()
