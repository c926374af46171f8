"""Proof that the heads of an MHD see the same bytes: one node writes a random token through
its dax device, every other head reads it back, and the host's backing file holds it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from testbed.access import node as remote
from testbed.config.topology import Topology
from testbed.lifecycle import names
from testbed.lifecycle import state as st
from testbed.lifecycle.provision import endpoint


@dataclass(frozen=True)
class SharingResult:
    mhd: str
    writer: str
    offset: int
    token: str
    readers: dict[str, str]  # node -> hex it read
    host_file: str  # hex the host backing file holds

    @property
    def ok(self) -> bool:
        return all(v == self.token for v in self.readers.values()) and self.host_file == self.token


def prove(topo: Topology, state: st.State, offset: int | None = None) -> list[SharingResult]:
    layout = names.Layout(topo.name)
    results = []
    for mhd in topo.mhds:
        token = secrets.token_hex(16)
        off = offset if offset is not None else secrets.randbelow(mhd.size // 4096) * 4096
        writer = mhd.heads[0]
        with remote.guest(writer, endpoint(layout, state.nodes[writer])) as g:
            g.run(["tbagent", "dax", "write", mhd.name, str(off), token])
        readers = {}
        for head in mhd.heads:
            with remote.guest(head, endpoint(layout, state.nodes[head])) as g:
                readers[head] = g.run(["tbagent", "dax", "read", mhd.name, str(off), str(len(token) // 2)]).stdout.strip()
        with open(names.shm_file(topo.name, mhd), "rb") as fh:
            fh.seek(off)
            host = fh.read(len(token) // 2).hex()
        results.append(SharingResult(mhd.name, writer, off, token, readers, host))
    return results
