"""Every object a testbed creates is named after it. '_' never occurs in a validated name,
so 'cxltb-<testbed>_' is an unambiguous prefix for sweeping up after a crash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from testbed import paths
from testbed.config.topology import Backing, Mhd

PREFIX = "cxltb-"


def domain(testbed: str, node: str) -> str:
    return f"{PREFIX}{testbed}_{node}"


def domain_prefix(testbed: str) -> str:
    return f"{PREFIX}{testbed}_"


def network(testbed: str) -> str:
    return f"{PREFIX}{testbed}"


def bridge(testbed: str) -> str:
    # Linux interface names are at most 15 characters.
    return "cxltb" + hashlib.sha256(testbed.encode()).hexdigest()[:8]


def shm_file(testbed: str, mhd: Mhd) -> Path:
    base = paths.shm_root() if mhd.backing is Backing.SHM else Path(mhd.hugetlbfs)
    return base / f"{PREFIX}{testbed}_{mhd.name}"


def mac(testbed: str, node: str, role: str) -> str:
    h = hashlib.sha256(f"{testbed}/{node}/{role}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


def serial(mhd_index: int, head_index: int) -> int:
    """CXL device serial of one head: unique per (MHD, head), recognisable in the guest."""
    return 0xC1000000 | (mhd_index << 8) | head_index


@dataclass(frozen=True)
class Layout:
    """Paths of one testbed's runtime state."""

    testbed: str

    @property
    def root(self) -> Path:
        return paths.testbed_dir(self.testbed)

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def overlay(self, node: str) -> Path:
        return self.node_dir(node) / "root.qcow2"

    def console(self, node: str) -> Path:
        return self.root / "console" / f"{node}.log"

    def seed(self, node: str, name: str) -> Path:
        return self.node_dir(node) / name
