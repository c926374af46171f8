"""The three loaders on a plain file standing in for the MHD: same arrays from each, cxl-map
really zero-copy, cxl-copy's pipeline checks every crc and loses no error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tbagent.llm import checkpoint, loaders, modelstore, safetensors
from tbagent.llm.checkpoint import CheckpointError
from tbagent.llm.loaders import CacheDrop, Drop, Loader
from tbagent.store import Store

from tests.unit.llmdevice import cache_lib_fixture, device_fixture  # noqa: F401  (fixtures)

CONFIG = {"dim": 8, "note": "loader test"}


def sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"a": rng.standard_normal((64, 40)).astype(np.float16),
            "b": rng.standard_normal(3000).astype(np.float32),  # 12000 bytes: three 4 KiB chunks
            "c": rng.integers(0, 100, 5, dtype=np.int32)}


@pytest.fixture
def stored(device: str, tmp_path: Path) -> tuple[str, str]:
    """The sample put by head 0 into the store and written as a safetensors file."""
    with Store(device, 0) as st:
        modelstore.put(st, "m", CONFIG, sample())
    disk = str(tmp_path / "m.safetensors")
    safetensors.write(disk, CONFIG, sample())
    return device, disk


@pytest.mark.parametrize("loader", list(Loader))
def test_every_loader_gives_the_original_arrays(stored: tuple[str, str], loader: Loader) -> None:
    device, disk = stored
    weights, stats = loaders.load(loader, "m", device=device, head=1, disk=disk, drop=Drop.NONE, chunk=4096)
    try:
        assert weights.config == CONFIG
        orig = sample()
        assert set(weights.tensors) == set(orig)
        for name, arr in orig.items():
            assert weights.tensors[name].dtype == arr.dtype
            np.testing.assert_array_equal(weights.tensors[name], arr)
        data = sum(a.nbytes for a in orig.values())
        assert (stats.bytes_copied, stats.bytes_mapped) == ((0, data) if loader is Loader.CXL_MAP else (data, 0))
        assert stats.loader is loader and stats.seconds > 0
        assert stats.verified == (loader is Loader.CXL_COPY)
        assert stats.page_cache is (CacheDrop.SKIPPED if loader is Loader.DISK else CacheDrop.NOT_APPLICABLE)
    finally:
        weights.close()


def test_cxl_map_is_zero_copy_and_cxl_copy_is_not(stored: tuple[str, str]) -> None:
    device, _ = stored
    mapped, _ = loaders.load(Loader.CXL_MAP, "m", device=device, head=1)
    copied, _ = loaders.load(Loader.CXL_COPY, "m", device=device, head=1)
    try:
        assert mapped.mapping is not None
        window = np.frombuffer(mapped.mapping.buf, np.uint8)
        for name in sample():
            assert np.shares_memory(mapped.tensors[name], window)
            assert not mapped.tensors[name].flags.writeable
            assert not np.shares_memory(copied.tensors[name], window)
        # The views see the device itself: a write to the file shows through them.
        entry = next(e for e in mapped.mapping.index.tensors if e.name == "c")
        with Store(device, 1) as st:
            off = modelstore.extent_of(modelstore.find(st, "m")).off
        with open(device, "r+b") as fh:
            fh.seek(off + entry.offset)
            fh.write(np.int32(-7).tobytes())
        assert mapped.tensors["c"][0] == -7 and copied.tensors["c"][0] == sample()["c"][0]
    finally:
        mapped.close()
        copied.close()


def test_disk_loader_drops_the_file_from_the_page_cache(stored: tuple[str, str]) -> None:
    _, disk = stored
    weights, stats = loaders.load(Loader.DISK, "m", disk=disk, drop=Drop.FILE)
    assert stats.page_cache is CacheDrop.DROPPED_FILE and stats.bytes_copied == sum(a.nbytes for a in sample().values())
    np.testing.assert_array_equal(weights.tensors["b"], sample()["b"])


def _packed() -> tuple[bytearray, checkpoint.Index]:
    buf = bytearray(b"".join(bytes(c) for c in checkpoint.pack(CONFIG, sample())))
    return buf, checkpoint.parse(buf)


@pytest.mark.parametrize("pipeline", [True, False])
def test_cxl_copy_refuses_a_flipped_byte(pipeline: bool) -> None:
    buf, index = _packed()
    b = next(e for e in index.tensors if e.name == "b")
    buf[b.offset + 9000] ^= 0x01  # in the third 4 KiB chunk of b
    with pytest.raises(CheckpointError, match="fail their crc32 while copied from CXL: b"):
        loaders.copy_verified(memoryview(buf), index, chunk=4096, pipeline=pipeline)


@pytest.mark.parametrize("pipeline", [True, False])
def test_cxl_copy_chunking_gives_the_same_bytes(pipeline: bool) -> None:
    buf, index = _packed()
    local = loaders.copy_verified(memoryview(buf), index, chunk=4096, pipeline=pipeline)
    for e in index.tensors:
        assert bytes(local[e.offset : e.offset + e.length]) == bytes(buf[e.offset : e.offset + e.length])


def test_cxl_copy_reader_error_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    buf, index = _packed()
    calls: list[int] = []

    def failing(local: np.ndarray, source: np.ndarray, a: int, b: int) -> None:
        calls.append(a)
        if len(calls) == 3:
            raise OSError("device went away")
        local[a:b] = source[a:b]

    monkeypatch.setattr(loaders, "copy_piece", failing)
    with pytest.raises(OSError, match="device went away"):
        loaders.copy_verified(memoryview(buf), index, chunk=4096, pipeline=True)
    assert len(calls) == 3  # the reader stopped at the failure


def test_chunk_must_be_whole_pages() -> None:
    buf, index = _packed()
    with pytest.raises(ValueError, match="multiple of 4096"):
        loaders.copy_verified(memoryview(buf), index, chunk=1000)


def test_cxl_loader_needs_a_device() -> None:
    with pytest.raises(ValueError, match="needs the MHD device"):
        loaders.load(Loader.CXL_MAP, "m")
