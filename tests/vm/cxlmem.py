"""Helpers for the CXL memory-path VM tests: the in-guest cxlmem tool, QEMU's own report of each
head's path, and a concurrent two-writer sharing check verified on every head and on the host."""

from __future__ import annotations

import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from testbed.lifecycle import cxlpath, daemons, names
from testbed.lifecycle.testbed import Testbed

MiB = 1 << 20
CXL = "/dev/mhd/mhd0"


def cxlmem(tb: Testbed, node: str, *args: str) -> list[dict[str, Any]]:
    out = tb.exec(node, "cxlmem", *args).stdout
    return [json.loads(ln) for ln in out.splitlines() if ln.strip()]


def read_mbps(tb: Testbed, node: str, target: str, nbytes: int, reps: int) -> float:
    """Median read bandwidth; pass 0 faults the mapping in and is dropped."""
    recs = cxlmem(tb, node, "read", target, str(nbytes), str(reps + 1))[1:]
    return float(statistics.median(r["mbps"] for r in recs))


def head_paths(tb: Testbed) -> list[cxlpath.HeadPath]:
    with daemons.connection() as conn:
        return cxlpath.for_state(conn, tb.state)


def pattern(seed: int, offset: int, nbytes: int) -> np.ndarray:
    """cxlmem's fill pattern (splitmix64 of seed ^ byte offset), computed on the host."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed) ^ (np.uint64(offset) + np.arange(nbytes // 8, dtype=np.uint64) * np.uint64(8))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def concurrent_writers(tb: Testbed, nbytes: int, base: int) -> None:
    """node0 and node1 fill disjoint ranges at the same time; each then verifies the other's
    range, its own, and the host's backing file holds both."""
    ranges = {"node0": (base, 0xA11CE), "node1": (base + nbytes, 0xB0B)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futs = {n: pool.submit(cxlmem, tb, n, "fill", CXL, str(off), str(nbytes), str(seed))
                for n, (off, seed) in ranges.items()}
        fills = {n: f.result() for n, f in futs.items()}  # re-raises a node's failure here
    assert all(r[0]["bad_words"] == 0 for r in fills.values()), fills
    for reader in ranges:
        for writer, (off, seed) in ranges.items():
            (v,) = cxlmem(tb, reader, "verify", CXL, str(off), str(nbytes), str(seed))
            assert v["bad_words"] == 0, f"{reader} reading {writer}'s range: {v}"
    shm = names.shm_file(tb.name, tb.topology.mhds[0])
    for writer, (off, seed) in ranges.items():
        with open(shm, "rb") as fh:
            fh.seek(off)
            got = np.frombuffer(fh.read(nbytes), dtype=np.uint64)
        bad = int(np.count_nonzero(got != pattern(seed, off, nbytes)))
        assert bad == 0, f"host file: {bad} words of {writer}'s range differ"


def cxl_list(tb: Testbed, node: str) -> dict[str, Any]:
    """What cxl-cli reports: memdevs, the region, and the decoders that route it."""
    memdevs = json.loads(tb.exec(node, "cxl", "list", "-M").stdout or "[]")
    regions = json.loads(tb.exec(node, "cxl", "list", "-R").stdout or "[]")
    decoders = json.loads(tb.exec(node, "cxl", "list", "-D").stdout or "[]")
    return {"memdevs": memdevs, "regions": regions, "decoders": decoders}
