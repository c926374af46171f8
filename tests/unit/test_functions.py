"""The FunctionBench-style function workloads, loaded as the runner loads them (no root, no VM)."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from tbagent.functions import CATALOG, spec
from tbagent.sandbox import runner
from tbagent.sandbox.cgroup import Limits

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit

NEW = ("imgresize", "inference", "compress", "heap")
Loader = Callable[..., ModuleType]


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Loader:
    """A fresh instance of a function: its module executed anew (its initialisation), with its env."""
    monkeypatch.setitem(sys.modules, "handler", ModuleType("handler"))  # runner.load's entry, undone after

    def fresh(name: str, **env: str) -> ModuleType:
        for key, value in {**spec(name).env, "HEAP_MIB": "8", **env}.items():
            monkeypatch.setenv(key, value)
        return runner.load(str(spec(name).source))

    return fresh


def test_new_functions_are_registered_with_limits_and_docs() -> None:
    for name in NEW:
        s = CATALOG[name]
        assert s.source.exists() and set(s.limits) <= {"memory", "cpu", "pids"}
        Limits.from_dict(s.limits)
        text = s.source.read_text()
        assert text.startswith(f'"""{name}: ') and "Initialisation" in text and "Per request" in text
        if "import numpy" in text:
            assert s.env.get("OPENBLAS_NUM_THREADS") == "1"
    assert Limits.from_dict(CATALOG["heap"].limits).memory_max == 1280 << 20  # room for HEAP_MIB=1024


SEQUENCES: dict[str, list[dict[str, Any]]] = {
    "imgresize": [{}, {"w": 100, "h": 50}, {}],
    "inference": [{}, {"batch": 5, "seed": 3}, {}],
    "compress": [{}, {"algo": "lzma", "kib": 64, "level": 1}, {"kib": 16, "level": 9}],
    "heap": [{}, {"touch_pct": 50, "write_ratio": 0.5, "seed": 1}, {}, {"write_ratio": 1.0}, {}],
}


@pytest.mark.parametrize("name", NEW)
def test_same_events_give_the_same_results_in_fresh_instances(name: str, load: Loader) -> None:
    a, b = load(name), load(name)
    assert a is not b
    results = [a.handle(dict(e)) for e in SEQUENCES[name]]
    assert [b.handle(dict(e)) for e in SEQUENCES[name]] == results
    assert all(len(repr(r)) < 2000 for r in results)  # small results


def test_imgresize_sizes_and_digests(load: Loader) -> None:
    m = load("imgresize")
    assert m.IMAGE.size == (1024, 768) and m.IMAGE.mode == "RGB"
    r = m.handle({})
    assert (r["w"], r["h"], r["mode"]) == (320, 240, "RGB") and len(r["sha256"]) == 16
    small = m.handle({"w": 64, "h": 48})
    assert (small["w"], small["h"]) == (64, 48) and small["sha256"] != r["sha256"]
    assert m.handle({"w": 2000, "h": 10})["w"] == 2000
    with pytest.raises(ValueError):
        m.handle({"w": 0})


def test_inference_shapes_and_probabilities(load: Loader) -> None:
    m = load("inference")
    assert [w.shape for w, _ in m.MODEL] == [(784, 256), (256, 64), (64, 10)]
    assert 0.8e6 < sum(w.nbytes + b.nbytes for w, b in m.MODEL) < 1.2e6 and m.MODEL[0][0].dtype == np.float32
    probs = m.forward(m.batch(7, 0))
    assert probs.shape == (7, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    r = m.handle({"batch": 7})
    assert r["batch"] == 7 and r["classes"] == [int(c) for c in probs.argmax(axis=1)]
    assert all(0 <= c < 10 for c in r["classes"]) and 7 <= r["checksum"] <= 70
    assert len(m.handle({})["classes"]) == 32
    assert m.handle({"batch": 7, "seed": 1}) != r
    with pytest.raises(ValueError):
        m.handle({"batch": 10_000})


def test_compress_round_trips_and_reports(load: Loader) -> None:
    m = load("compress")
    assert len(m.CORPUS) == 4 << 20
    events: list[dict[str, Any]] = [{}, {"algo": "lzma", "kib": 256}, {"algo": "zlib", "level": 1, "kib": 4096}]
    for event in events:
        r = m.handle(event)
        n = event.get("kib", 1024) << 10
        assert r["round_trip"] and r["in_bytes"] == n and r["out_bytes"] < n
        assert r["crc32"] == f"{zlib.crc32(m.CORPUS[:n]):08x}" and r["ratio"] == round(n / r["out_bytes"], 3) > 2
    assert m.handle({"level": 9, "kib": 8})["out_bytes"] <= m.handle({"level": 1, "kib": 8})["out_bytes"]
    for bad in ({"algo": "lzma", "level": 9}, {"algo": "bz2"}, {"kib": 5000}, {"level": 10}):
        with pytest.raises(ValueError):
            m.handle(bad)


def test_heap_content_is_non_zero_and_page_distinct(load: Loader) -> None:
    m = load("heap")
    heap = m.HEAP
    assert m.HEAP_MIB == 8 and heap.nbytes == 8 << 20 and heap.shape == (2048, 512)
    assert np.all(heap != 0)
    assert np.array_equal(heap[:, 0] & np.uint64(0xFFFF_FFFF), np.arange(2048, dtype=np.uint64))
    assert len(np.unique(heap[:, 0])) == 2048 and np.array_equal(heap[0, 1:], heap[-1, 1:])  # a repeating pattern
    assert not np.array_equal(load("heap", HEAP_SEED="2").HEAP[0, 1:], heap[0, 1:])


@pytest.mark.parametrize(("pct", "ratio", "touched", "written"),
                         [(100, 0.0, 2048, 0), (50, 0.25, 1024, 256), (10, 1.0, 205, 205), (0, 1.0, 0, 0), (100, 0.5, 2048, 1024)])
def test_heap_touches_and_writes_the_requested_share(load: Loader, pct: float, ratio: float, touched: int, written: int) -> None:
    m = load("heap")
    before = m.HEAP.copy()
    r = m.handle({"touch_pct": pct, "write_ratio": ratio, "seed": 5})
    assert (r["pages"], r["touched"], r["written"]) == (2048, touched, written)
    changed = np.flatnonzero(np.any(m.HEAP != before, axis=1))
    assert len(changed) == written
    assert np.all(m.HEAP[changed, 1] - before[changed, 1] == np.uint64(m.WRITE_DELTA))


def test_heap_checksum_is_taken_before_writes_and_later_ones_see_them(load: Loader) -> None:
    m = load("heap")
    full = m.handle({})
    assert full["checksum"] == f"{int(m.HEAP.sum(dtype=np.uint64)):016x}"
    assert m.handle({"write_ratio": 1.0})["checksum"] == full["checksum"]  # read before written
    after = (int(full["checksum"], 16) + 2048 * m.WRITE_DELTA) % (1 << 64)
    assert m.handle({})["checksum"] == f"{after:016x}"
    assert m.handle({"touch_pct": 10, "seed": 1})["checksum"] != m.handle({"touch_pct": 10, "seed": 2})["checksum"]
    for bad in ({"touch_pct": 101}, {"write_ratio": -0.1}, {"write_ratio": 2}):
        with pytest.raises(ValueError):
            m.handle(bad)


@pytest.mark.parametrize("mib", ["2048", "1025", "0", "-1"])
def test_heap_rejects_sizes_out_of_range(load: Loader, mib: str) -> None:
    with pytest.raises(ValueError, match="HEAP_MIB"):
        load("heap", HEAP_MIB=mib)


def test_matmul_runs_outside_a_sandbox(load: Loader, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m = load("matmul")
    if not Path("/function/meta.json").exists():
        r = m.handle({"n": 16})
        assert r["layer"] is None and r["check"] and r["n"] == 16
    meta = tmp_path / "meta.json"
    meta.write_text('{"name": "matmul", "env": {}}')
    real_open = open
    monkeypatch.setattr(m, "open", lambda path, *a, **kw: real_open(meta if path == "/function/meta.json" else path, *a, **kw),
                        raising=False)
    assert m.handle({"n": 16})["layer"] == "matmul"  # inside a sandbox: its layer, as before
