"""The side-effecting operations the CLI calls, typed, in one Ops object that unit tests fill
with fakes. Each default imports its module when called, so building the parser stays cheap
for every verb."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tbproto.jsontypes import JsonObject

from testbed.config.topology import HostFacts, Topology

if TYPE_CHECKING:
    from testbed.access.agent import Exchanger
    from testbed.access.node import ChannelNode, SshEndpoint
    from testbed.lifecycle.names import Layout
    from testbed.lifecycle.sharing import SharingResult
    from testbed.lifecycle.state import State
    from testbed.lifecycle.testbed import AgentFactory, Connect, LoadState, Testbed, Up
    from testbed.ui.dryrun import Artifacts, NativeArgv

Progress = Callable[[str, str], None]  # (phase, message)
JsonDict = JsonObject  # status and cache listings: JSON for `--json` and the tables


class LoadTopology(Protocol):
    def __call__(self, path: Path, host: HostFacts | None = None, /) -> Topology: ...


class BuiltImage(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Path: ...


class BuiltKernel(Protocol):
    @property
    def release(self) -> str: ...
    @property
    def directory(self) -> Path: ...


class BuiltQemu(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def path(self) -> Path: ...


class Check(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def detail(self) -> str: ...
    @property
    def fix(self) -> str: ...


def _load_topology(path: Path, host: HostFacts | None = None, /) -> Topology:
    from testbed.config import topology

    return topology.load(path, host)


def _host_facts() -> HostFacts:
    from testbed.config import topology

    return topology.host_facts()


def _up(topo: Topology, progress: Progress) -> tuple[State, bool]:
    from testbed.lifecycle import provision

    return provision.up(topo, progress)


def _up_keeping(topo: Topology, progress: Progress) -> tuple[State, bool]:
    """`up --keep-on-failure`: a failed up leaves its nodes up to be looked at."""
    from testbed.lifecycle import provision

    return provision.up(topo, progress, keep_on_failure=True)


def _down(name: str) -> Sequence[str] | None:
    from testbed.lifecycle import provision

    return provision.down(name)


def _status(names: list[str]) -> list[JsonDict]:
    from testbed.ui import status as status_mod

    return status_mod.all_status(names)


def _load_state(layout: Layout) -> State | None:
    from testbed.lifecycle import state

    return state.load(layout)


def _known(root: Path) -> list[str]:
    from testbed.lifecycle import state

    return state.known_testbeds(root)


def _connect(name: str, endpoint: SshEndpoint) -> AbstractContextManager[ChannelNode]:
    from testbed.lifecycle import testbed

    return testbed.connect_guest(name, endpoint)


def _agent(node: ChannelNode, timeout: float) -> AbstractContextManager[Exchanger]:
    from testbed.lifecycle import testbed

    return testbed.agent_session(node, timeout)


def _doctor() -> Sequence[Check]:
    from testbed.ui import doctor as doctor_mod

    return doctor_mod.run_checks()


def _prove_sharing(tb: Testbed) -> Sequence[SharingResult]:
    from testbed.lifecycle import sharing

    return sharing.prove(tb)


def _build_image(name: str) -> BuiltImage:
    from testbed.artifacts import image

    return image.build(name)


def _build_kernel(source: Path | None, progress: Progress, jobs: int | None, debug: bool) -> BuiltKernel:
    from testbed.artifacts import kbuild

    return kbuild.build(source, progress, jobs, debug)


def _list_kernels() -> list[JsonDict]:
    from testbed.artifacts import kbuild

    return kbuild.cached()


def _build_qemu(progress: Progress, jobs: int | None) -> BuiltQemu:
    from testbed.artifacts import qemu

    return qemu.build(progress, jobs)


def _list_qemus() -> list[JsonDict]:
    from testbed.artifacts import qemu

    return qemu.cached()


def _cxl_paths(state: State) -> list[JsonDict]:
    """Each head's CXL path as QEMU reports it (for results' meta.json)."""
    from testbed.lifecycle import cxlpath

    return cxlpath.read_for_state(state)


def _native_argv(xml: str) -> tuple[str | None, str]:
    """QEMU's command line for a domain XML from a libvirtd that is already running (a dry run
    starts nothing); libvirt defines nothing to answer. Read-only connections may not ask."""
    import libvirt

    from testbed.lifecycle.daemons import URI

    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError:
        return None, f"libvirtd is not running ({URI})"
    try:
        return str(conn.domainXMLToNative("qemu-argv", xml, 0)), ""
    except libvirt.libvirtError as exc:
        return None, f"libvirt could not make it: {exc.get_error_message()}"
    finally:
        conn.close()


def _locate_artifacts(topo: Topology) -> Artifacts:
    from testbed.ui import dryrun

    return dryrun.locate_artifacts(topo)


def _read_stdin() -> bytes | None:
    """What is piped into the command, for `exec`; None when stdin is a terminal (or closed)."""
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return None
        return sys.stdin.buffer.read()
    except (OSError, ValueError):  # closed, or unreadable (as under pytest's capture)
        return None


@dataclass
class Ops:
    """The side-effecting operations the CLI calls; replaced by fakes in unit tests."""

    load_topology: LoadTopology = _load_topology
    host_facts: Callable[[], HostFacts] = _host_facts
    up: Up = _up
    up_keeping: Up = _up_keeping
    down: Callable[[str], Sequence[str] | None] = _down
    status: Callable[[list[str]], list[JsonDict]] = _status
    load_state: LoadState = _load_state
    known: Callable[[Path], list[str]] = _known
    connect: Connect = _connect
    agent: AgentFactory = _agent
    doctor: Callable[[], Sequence[Check]] = _doctor
    prove_sharing: Callable[[Testbed], Sequence[SharingResult]] = _prove_sharing
    build_image: Callable[[str], BuiltImage] = _build_image
    build_kernel: Callable[[Path | None, Progress, int | None, bool], BuiltKernel] = _build_kernel
    list_kernels: Callable[[], list[JsonDict]] = _list_kernels
    build_qemu: Callable[[Progress, int | None], BuiltQemu] = _build_qemu
    list_qemus: Callable[[], list[JsonDict]] = _list_qemus
    cxl_paths: Callable[[State], list[JsonDict]] = _cxl_paths
    execv: Callable[[str, list[str]], object] = os.execv
    read_stdin: Callable[[], bytes | None] = _read_stdin
    sleep: Callable[[float], None] = time.sleep  # console --follow's poll
    locate_artifacts: Callable[[Topology], Artifacts] = _locate_artifacts  # read-only, for --dry-run
    native_argv: NativeArgv = _native_argv  # libvirt's QEMU command line, for --dry-run

    def attach(self, name: str) -> Testbed:
        from testbed.lifecycle.testbed import Testbed

        return Testbed.attach(name, load_state=self.load_state, connect=self.connect, agent=self.agent)

    def open_testbed(self, topology: Topology, keep: bool, progress: Progress | None = None,
                     keep_on_failure: bool = False) -> AbstractContextManager[Testbed]:
        """The scenario executor's seam: the testbed up (or attached) for the body; torn down on
        leaving only if brought up here and keep is False. keep_on_failure: a failed up leaves
        its nodes up (up_keeping)."""
        from testbed.lifecycle.testbed import Testbed

        up = self.up_keeping if keep_on_failure else self.up
        return Testbed.up(topology, keep, progress=progress, up=up, down=self.down, connect=self.connect,
                          agent=self.agent)
