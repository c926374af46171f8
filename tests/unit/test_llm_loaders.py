"""The three loaders on a plain file standing in for the MHD: same arrays from each, cxl-map
really zero-copy, cxl-copy's pipeline checks every crc and loses no error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tbagent import cli
from tbagent.llm import checkpoint, instance, loaders, modelstore, safetensors
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


# --- the instance runner and the CLI, with the llm function's tiny preset

PROMPT = "CXL: load once"


@pytest.fixture
def tiny(device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny preset (float16) put by head 0 through the CLI, and written to a local disk folder."""
    for mod in ("tbagent.llm.cli", "tbagent.store.cli"):
        monkeypatch.setattr(f"{mod}.head_of", lambda mhd: (0, 2))
    assert cli.main(["model", "put", device, "tiny", "--preset", "tiny", "--seed", "5", "--dtype", "float16"]) == 0
    assert cli.main(["model", "disk", "tiny", "--preset", "tiny", "--seed", "5", "--dtype", "float16",
                     "--dir", str(tmp_path / "disk")]) == 0
    return device


def test_model_cli_put_list_check(tiny: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    capsys.readouterr()
    assert cli.main(["model", "list", tiny]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["params"], row["config"]["seed"], row["config"]["dtype"]) == ("tiny", 28864, 5, "float16")
    assert cli.main(["model", "check", tiny, "tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert cli.main(["model", "put", tiny, "tiny", "--preset", "tiny"]) != 0
    assert "already exists" in capsys.readouterr().err


def test_same_tokens_with_every_loader(tiny: str, tmp_path: Path) -> None:
    llm = instance.llm()
    cfg = llm.Config.from_json({**llm.PRESETS["tiny"].to_json(), "seed": 5, "dtype": "float16"})
    # The reference: the function's own model on weights made in memory, no loader involved.
    expected = llm.Model(cfg, llm.tensors(cfg)).generate(llm.encode(PROMPT), 12)
    results = {}
    for loader in Loader:
        results[loader] = instance.run(loader, "tiny", PROMPT, 12, device=tiny, head=1,
                                       disk=str(tmp_path / "disk" / "tiny.safetensors"), drop=Drop.NONE)
    for loader, r in results.items():
        assert r["tokens"] == expected, loader
        assert r["load_s"] > 0 and r["ttft_s"] > 0 and r["tokens_per_s"] > 0
    weights = 28864 * 2
    assert results[Loader.CXL_MAP]["load"]["bytes_copied"] == 0
    assert results[Loader.CXL_MAP]["load"]["bytes_mapped"] == weights
    # The mapped instance reads its weights from the device mapping: at least every page the
    # weights lie on (the 2 MiB window is mapped, only touched pages are resident).
    mem = results[Loader.CXL_MAP]["memory"]
    assert mem["cxl_mapped"] >= 2 << 20 and weights <= mem["cxl_resident"] <= mem["cxl_mapped"]
    for loader in (Loader.CXL_COPY, Loader.DISK):
        assert results[loader]["load"]["bytes_copied"] == weights
        assert results[loader]["memory"]["cxl_resident"] == 0  # the copy's mapping is gone


def test_llm_run_cli_prints_one_json_object(tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert cli.main(["llm", "run", "--loader", "cxl-map", "--model", "tiny", "--mhd", tiny, "--prompt", PROMPT,
                     "--max-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["loader"] == "cxl-map" and len(out["tokens"]) == 4
    assert cli.main(["llm", "run", "--loader", "cxl-copy", "--model", "tiny", "--mhd", tiny, "--prompt", PROMPT,
                     "--max-tokens", "4", "--chunk-mib", "1", "--no-pipeline"]) == 0
    copied = json.loads(capsys.readouterr().out)
    assert copied["tokens"] == out["tokens"] and copied["load"]["verified"] is True
    assert cli.main(["llm", "run", "--loader", "disk", "--model", "nope", "--disk-dir", str(tmp_path / "disk"),
                     "--prompt", PROMPT, "--drop", "none"]) != 0
    assert "nope.safetensors" in capsys.readouterr().err


def test_put_from_safetensors_refuses_a_file_that_is_not_a_model(device: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("tbagent.store.cli.head_of", lambda mhd: (0, 2))
    path = str(tmp_path / "x.safetensors")
    safetensors.write(path, {"dim": 8}, sample())
    assert cli.main(["model", "put", device, "x", "--safetensors", path]) != 0
    assert "llm config" in capsys.readouterr().err
