"""The checkpoint layout, the safetensors reader/writer and the model store on a plain file."""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tbagent.llm import checkpoint, modelstore, safetensors
from tbagent.llm.checkpoint import HEADER, PAGE, CheckpointError
from tbagent.store import Store, StoreError

from tests.unit.llmdevice import cache_lib_fixture, device_fixture  # noqa: F401  (fixtures)

CONFIG = {"dim": 8, "layers": 1, "dtype": "float16"}


def sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"embed": rng.standard_normal((16, 8)).astype(np.float16),
            "norm": rng.standard_normal(8).astype(np.float32),
            "w": rng.standard_normal((5000,)).astype(np.float32),  # spans several pages
            "empty": np.zeros((0, 3), np.float32),
            "ids": np.arange(7, dtype=np.int64)}


def packed(tensors: dict[str, np.ndarray] | None = None) -> bytearray:
    return bytearray(b"".join(bytes(c) for c in checkpoint.pack(CONFIG, tensors or sample())))


def test_round_trip_page_aligned_and_zero_copy() -> None:
    t = sample()
    buf = packed(t)
    index = checkpoint.parse(buf)
    assert index.config == CONFIG and len(buf) == index.size
    assert [e.name for e in index.tensors] == sorted(t)
    assert all(e.offset % PAGE == 0 for e in index.tensors)
    views = checkpoint.views(buf, index)
    for name, arr in t.items():
        assert views[name].dtype == arr.dtype and views[name].shape == arr.shape
        np.testing.assert_array_equal(views[name], arr)
        assert np.shares_memory(views[name], np.frombuffer(buf, np.uint8)) or arr.size == 0
        assert not views[name].flags.writeable
    checkpoint.verify(buf, index)


def test_pack_does_not_copy_the_tensors() -> None:
    t = sample()
    chunks = checkpoint.pack(CONFIG, t)
    assert any(isinstance(c, memoryview) and np.shares_memory(np.frombuffer(c, np.uint8), t["w"]) for c in chunks)


def test_index_crc_matches_an_independent_reading() -> None:
    buf = packed()
    magic, version, page, n, crc = struct.unpack_from("<8sIIQI", buf)
    body = bytes(buf[PAGE : PAGE + n])
    assert (magic, version, page, zlib.crc32(body)) == (b"TBCKPT01", 1, PAGE, crc)
    w = next(e for e in json.loads(body)["tensors"] if e["name"] == "w")
    assert bytes(buf[w["offset"] : w["offset"] + w["length"]]) == sample()["w"].tobytes()


def _reindex(buf: bytearray, edit: Callable[[dict[str, object]], object]) -> bytearray:
    """Rewrite the index with `edit` applied and a valid crc: what a buggy head could write."""
    _, _, _, n, _ = HEADER.unpack_from(buf)
    data = json.loads(bytes(buf[PAGE : PAGE + n]))
    edit(data)
    body = json.dumps(data).encode()
    assert len(body) < PAGE
    out = bytearray(buf)
    HEADER.pack_into(out, 0, b"TBCKPT01", 1, PAGE, len(body), zlib.crc32(body))
    out[PAGE : PAGE + len(body)] = body
    return out


def _index_only(data: dict[str, object]) -> bytearray:
    body = json.dumps(data).encode()
    return bytearray(HEADER.pack(b"TBCKPT01", 1, PAGE, len(body), zlib.crc32(body)).ljust(PAGE, b"\0") + body)


def _tensor(name: str, **fields: object) -> Callable[[dict[str, object]], None]:
    def edit(data: dict[str, object]) -> None:
        tensors = data["tensors"]
        assert isinstance(tensors, list)
        next(e for e in tensors if e["name"] == name).update(fields)
    return edit


def _overlap(data: dict[str, object]) -> None:
    tensors = data["tensors"]
    assert isinstance(tensors, list)
    by = {e["name"]: e for e in tensors}
    by["norm"]["offset"] = by["ids"]["offset"]


def _dup(data: dict[str, object]) -> None:
    tensors = data["tensors"]
    assert isinstance(tensors, list)
    tensors.append(dict(tensors[0]))


CORRUPTIONS: dict[str, tuple[Callable[[bytearray], bytearray], str]] = {
    "magic": (lambda b: bytearray(b"X") + b[1:], "not a checkpoint"),
    "version": (lambda b: b[:8] + struct.pack("<I", 9) + b[12:], "unsupported checkpoint version 9"),
    "index-length": (lambda b: b[:16] + struct.pack("<Q", 1 << 40) + b[24:], "index length"),
    "index-byte": (lambda b: b[:PAGE + 5] + bytes([b[PAGE + 5] ^ 1]) + b[PAGE + 6 :], "index checksum mismatch"),
    "truncated": (lambda b: b[:100], "shorter than its header page"),
    "bad-dtype": (lambda b: _reindex(b, _tensor("w", dtype="object")), "dtype 'object'"),
    "length-vs-shape": (lambda b: _reindex(b, _tensor("w", shape=[5001])), "is not its shape"),
    "unaligned": (lambda b: _reindex(b, _tensor("norm", offset=PAGE * 2 + 8)), "unaligned or outside"),
    "out-of-bounds": (lambda b: _reindex(b, _tensor("w", offset=PAGE * 1000)), "unaligned or outside"),
    "into-index": (lambda b: _reindex(b, _tensor("norm", offset=0)), "unaligned or outside"),
    "negative-dim": (lambda b: _reindex(b, _tensor("w", shape=[-5000])), "bad shape|non-negative"),
    "bool-offset": (lambda b: _reindex(b, _tensor("w", offset=True)), "must be integers"),
    "overlap": (lambda b: _reindex(b, _overlap), "overlap"),
    "duplicate": (lambda b: _reindex(b, _dup), "names a tensor twice"),
    "no-config": (lambda b: _reindex(b, lambda d: d.pop("config")), "config object"),
    "too-many": (lambda b: _index_only({"config": {}, "tensors": [{}] * 70000}), "more than 65536"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_index_refused(case: str) -> None:
    corrupt, message = CORRUPTIONS[case]
    with pytest.raises(CheckpointError, match=message):
        checkpoint.parse(corrupt(packed()))


def test_flipped_data_byte_fails_its_crc() -> None:
    buf = packed()
    index = checkpoint.parse(buf)
    w = next(e for e in index.tensors if e.name == "w")
    buf[w.offset + 4097] ^= 0x40
    assert checkpoint.bad_tensors(buf, index.tensors) == ["w"]
    with pytest.raises(CheckpointError, match="fail their crc32: w"):
        checkpoint.verify(buf, index)


def test_unknown_dtype_refused_when_packing() -> None:
    with pytest.raises(CheckpointError, match="complex64"):
        checkpoint.pack(CONFIG, {"c": np.zeros(2, np.complex64)})


# --- safetensors

def test_safetensors_round_trip(tmp_path: Path) -> None:
    t = sample()
    path = str(tmp_path / "m.safetensors")
    size = safetensors.write(path, CONFIG, t)
    assert size == os.path.getsize(path)
    # The format as the reference describes it: u64 length, JSON header, packed data.
    raw = Path(path).read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    assert header["embed"] == {"dtype": "F16", "shape": [16, 8], "data_offsets": header["embed"]["data_offsets"]}
    b, e = header["w"]["data_offsets"]
    assert raw[8 + n + b : 8 + n + e] == t["w"].tobytes()
    config, back, nread = safetensors.read(path)
    assert config == CONFIG and nread == sum(a.nbytes for a in t.values())
    for name, arr in t.items():
        assert back[name].dtype == arr.dtype
        np.testing.assert_array_equal(back[name], arr)


def _st_edit(path: Path, edit: Callable[[dict[str, object]], None]) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])


@pytest.mark.parametrize(("edit", "message"), [
    (lambda h: h["w"].update(dtype="BOOL"), "has dtype 'BOOL'"),
    (lambda h: h["w"].update(shape=[4999]), "do not hold shape"),
    (lambda h: h["w"].update(data_offsets=[0, 1 << 40]), "outside"),
    (lambda h: h["norm"].update(data_offsets=h["embed"]["data_offsets"]), "gap or overlap|do not hold"),
    (lambda h: h.pop("ids"), "gap or overlap|cover"),
])
def test_safetensors_corruption_refused(tmp_path: Path, edit: Callable[[dict[str, object]], None], message: str) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.write(str(path), CONFIG, sample())
    _st_edit(path, edit)
    with pytest.raises(CheckpointError, match=message):
        safetensors.read(str(path))


def test_safetensors_bad_length_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 50) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        safetensors.read(str(path))


# --- the model store on a plain file standing in for the device

def test_put_by_one_head_found_and_mapped_by_another(device: str) -> None:
    t = sample()
    with Store(device, 0) as a, Store(device, 1) as b:
        a.publish("plain-template", [b"x"])
        rec = modelstore.put(a, "tiny", CONFIG, t)
        assert rec.name == "model/tiny" and rec.payload["meta"]["kind"] == "model"
        assert [r.name for r in modelstore.models(b)] == ["model/tiny"]  # the template is not a model
        assert modelstore.summary(modelstore.find(b, "tiny"))["config"] == CONFIG
        with modelstore.open_model(b, "tiny") as m:
            assert m.config == CONFIG and m.verify() == []
            mem = np.frombuffer(m.buf, np.uint8)
            for name, arr in t.items():
                np.testing.assert_array_equal(m.tensors[name], arr)
                assert arr.size == 0 or np.shares_memory(m.tensors[name], mem)
        assert modelstore.check(b) == {"models": [{"name": "tiny", "ok": True, "tensors": 5, "bad_tensors": []}], "ok": True}
        with pytest.raises(StoreError, match="already exists"):
            modelstore.put(b, "tiny", CONFIG, t)
        with pytest.raises(StoreError, match="no model named 'plain-template'"):
            modelstore.find(b, "plain-template")


def test_check_finds_a_flipped_tensor_byte(device: str) -> None:
    with Store(device, 0) as a:
        rec = modelstore.put(a, "tiny", CONFIG, sample())
        off = rec.extents[0]["off"]
    index = checkpoint.parse(packed())
    w = next(e for e in index.tensors if e.name == "w")
    with open(device, "r+b") as fh:
        fh.seek(off + w.offset + 10)
        byte = fh.read(1)
        fh.seek(off + w.offset + 10)
        fh.write(bytes([byte[0] ^ 1]))
    with Store(device, 1) as b:
        report = modelstore.check(b, "tiny")
    assert report == {"models": [{"name": "tiny", "ok": False, "tensors": 5, "bad_tensors": ["w"]}], "ok": False}


def test_corrupt_index_in_the_store_refused_on_open(device: str) -> None:
    with Store(device, 0) as a:
        off = modelstore.put(a, "tiny", CONFIG, sample()).extents[0]["off"]
    with open(device, "r+b") as fh:
        fh.seek(off + PAGE + 3)
        fh.write(b"#")
    with Store(device, 1) as b:
        with pytest.raises(CheckpointError, match="index checksum mismatch"):
            modelstore.open_model(b, "tiny")
        assert modelstore.check(b)["models"][0]["error"].startswith("index checksum mismatch")


def test_bad_model_records_refused(device: str) -> None:
    """Records another head could have written under the model naming convention."""
    with Store(device, 0) as a:
        a.publish("model/two", [packed(), b"x"], {"kind": "model"})
        a.publish("model/junk", [bytes(3 * PAGE)], {"kind": "model"})
        a.publish("model/notkind", [packed()], {"kind": "template"})
    with Store(device, 1) as b:
        assert sorted(r.name for r in modelstore.models(b)) == ["model/junk", "model/two"]
        with pytest.raises(StoreError, match="has 2 extents, expected 1"):
            modelstore.open_model(b, "two")
        with pytest.raises(CheckpointError, match="not a checkpoint"):
            modelstore.open_model(b, "junk")
        with pytest.raises(StoreError, match="no model named 'notkind'"):
            modelstore.open_model(b, "notkind")
        report = modelstore.check(b)
        assert not report["ok"] and {m["name"]: m["ok"] for m in report["models"]} == {"junk": False, "two": False}
        with pytest.raises(StoreError, match="without the 'model/' prefix"):
            modelstore.put(b, "model/x", CONFIG, sample())
