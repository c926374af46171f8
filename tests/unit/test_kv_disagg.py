"""The agent's kv.* ops (Mooncake's disaggregated serving) on a plain file standing in for the MHD,
two heads: every design answers the tokens the model gives without any of it; kv-cxl reuses a
shared prefix's blocks that another head put; kv-net moves the cache over loopback TCP."""

from __future__ import annotations

from pathlib import Path

import pytest
from tbagent.functions.llm import PRESETS, Config, Model, tensors
from tbagent.kv import disagg
from tbagent.store import Store

from tests.unit.llmdevice import cache_lib_fixture, device_fixture  # noqa: F401  (fixtures)

BT = 8


@pytest.fixture(name="heads")
def heads_fixture(device: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """mhd names "h0"/"h1" are heads 0 and 1 of the one device."""
    heads = {"h0": 0, "h1": 1}
    monkeypatch.setattr(disagg, "open_store", lambda mhd: Store(device, heads[mhd]))
    monkeypatch.setattr("tbagent.kv.cli.open_store", lambda mhd, head=None: Store(device, heads[mhd]))
    for mhd in heads:
        disagg.op_format(mhd, "tiny", BT, slots=32)
    return heads


def reference(tokens: list[int], n: int) -> list[int]:
    cfg = Config.from_json({**PRESETS["tiny"].to_json(), "seed": 0})
    return Model(cfg, tensors(cfg)).generate(tokens, n + 1)


PROMPT = [256, *range(10, 40)]  # 31 tokens: 3 full blocks of 8
OTHER = [*PROMPT[:17], *range(60, 70)]  # shares the first 2 blocks (16 tokens)


def test_colocated_decodes_where_it_prefilled(heads: dict[str, int]) -> None:
    out = disagg.op_prefill("colocated", "h0", "tiny", PROMPT, BT, decode=5)
    assert [out["first"], *out["decoded"]] == reference(PROMPT, 5)
    assert out["blocks_hit"] == 0 and out["handle"] is None and out["tbt_s"] is not None


def test_kv_cxl_reuses_another_heads_blocks_and_decodes_in_place(heads: dict[str, int]) -> None:
    a = disagg.op_prefill("kv-cxl", "h0", "tiny", PROMPT, BT)
    assert a["blocks"] == 3 and a["blocks_hit"] == 0 and a["blocks_put"] == 3 and a["tokens_computed"] == 31
    b = disagg.op_prefill("kv-cxl", "h1", "tiny", OTHER, BT)  # the other head: its prefix is in the pool
    assert b["blocks_hit"] == 2 and b["tokens_computed"] == len(OTHER) - 16
    assert b["first"] == reference(OTHER, 0)[0]
    d = disagg.op_decode("kv-cxl", "h1", "tiny", [*PROMPT, a["first"]], 5, BT, keys=a["keys"])
    assert [a["first"], *d["tokens"]] == reference(PROMPT, 5) and d["bytes_net"] == 0
    with pytest.raises(ValueError, match="hex block keys"):
        disagg.op_decode("kv-cxl", "h1", "tiny", [*PROMPT, a["first"]], 2, BT, keys=["zz"])


def test_kv_net_sends_the_cache_to_the_decode_node(heads: dict[str, int]) -> None:
    a = disagg.op_prefill("kv-net", "h0", "tiny", PROMPT, BT, bind="127.0.0.1")
    assert a["handle"] is not None and a["blocks_hit"] == 0
    d = disagg.op_decode("kv-net", "h1", "tiny", [*PROMPT, a["first"]], 5, BT, handle=a["handle"])
    assert [a["first"], *d["tokens"]] == reference(PROMPT, 5)
    cfg = PRESETS["tiny"]
    assert d["bytes_net"] > 2 * cfg.layers * cfg.dim * 4 * len(PROMPT)  # the whole cache crossed the network


def test_bad_requests_are_refused(heads: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="design 'rdma'"):
        disagg.op_prefill("rdma", "h0", "tiny", PROMPT, BT)
    with pytest.raises(ValueError, match=r"token ids in 0\.\.256"):
        disagg.op_prefill("colocated", "h0", "tiny", [1, 999], BT)
    with pytest.raises(ValueError, match="exceed the model's context"):
        disagg.op_prefill("colocated", "h0", "tiny", PROMPT, BT, decode=60)
    with pytest.raises(ValueError, match="kv-cxl keys or a kv-net handle"):
        disagg.op_decode("kv-net", "h1", "tiny", PROMPT, 2, BT, handle=None)


def test_a_model_is_built_once(heads: dict[str, int], tmp_path: Path) -> None:
    assert disagg.model("tiny", "float32", 0) is disagg.model("tiny", "float32", 0)
