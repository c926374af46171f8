"""Proof that the heads of an MHD see the same bytes: one node writes a random token through
its dax device, every other head reads it back, and the host's backing file holds it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from testbed.lifecycle import names
from testbed.lifecycle.testbed import Testbed


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


def prove(tb: Testbed, offset: int | None = None) -> list[SharingResult]:
    results = []
    for mhd in tb.topology.mhds:
        token = secrets.token_hex(16)
        off = offset if offset is not None else secrets.randbelow(mhd.size // 4096) * 4096
        writer = mhd.heads[0]
        tb.node(writer).run(["tbagent", "dax", "write", mhd.name, str(off), token])
        readers = {}
        for head in mhd.heads:
            readers[head] = tb.node(head).run(["tbagent", "dax", "read", mhd.name, str(off),
                                               str(len(token) // 2)]).stdout.strip()
        with open(names.shm_file(tb.name, mhd), "rb") as fh:
            fh.seek(off)
            host = fh.read(len(token) // 2).hex()
        results.append(SharingResult(mhd.name, writer, off, token, readers, host))
    return results
