"""Mooncake-format token traces: strict parsing, scaling that keeps the hash-id structure, token
synthesis and the infinite-cache reuse bound (against hand-worked answers and a plain recount)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.errors import ConfigError
from testbed.scenario.spec.tokentrace import (
    MAX_BLOCKS,
    Scale,
    TokenTrace,
    block_token_ids,
    load_mooncake,
    parse_mooncake,
    prompt_tokens,
    reuse_bound,
    scale,
)

SAMPLE = Path(__file__).resolve().parents[2] / "scenarios" / "traces" / "mooncake-sample.jsonl"


def _line(ts: int, inp: int, out: int, ids: list[int]) -> str:
    return json.dumps({"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": ids})


# A hand-made trace at 4 tokens a block. Request by request (ids seen in earlier requests):
#   r0 [1, 2, 3]     needs 3, seen 0, reusable prefix 0
#   r1 [1, 2, 4]     needs 3, seen 2 (1, 2), prefix 2 (8 tokens)
#   r2 [1, 5]        needs 2, seen 1 (1), prefix 1 (4 tokens)
#   r3 [1, 2, 4, 6]  needs 4, seen 3 (1, 2, 4), prefix 3 (12 tokens)
#   r4 [7, 2]        needs 2, seen 1 (2, not a prefix), prefix 0
# total needed 14, seen 7: hit rate 1/2; prefix blocks 6: prefix hit rate 3/7.
HAND = "\n".join([
    _line(0, 10, 5, [1, 2, 3]),
    _line(0, 12, 7, [1, 2, 4]),
    "",
    _line(1500, 5, 1, [1, 5]),
    _line(2000, 13, 9, [1, 2, 4, 6]),
    _line(4000, 8, 3, [7, 2]),
])


def _hand() -> TokenTrace:
    return parse_mooncake("hand.jsonl", HAND, block_tokens=4)


def test_parse_hand_trace() -> None:
    t = _hand()
    assert [r.line for r in t.requests] == [1, 2, 4, 5, 6]
    assert [r.arrival for r in t.requests] == [0.0, 0.0, 1.5, 2.0, 4.0]
    assert t.requests[3].hash_ids == (1, 2, 4, 6)
    assert [t.last_block_tokens(r) for r in t.requests] == [2, 4, 1, 1, 4]


def test_reuse_bound_by_hand() -> None:
    b = reuse_bound(_hand())
    assert (b.blocks_needed, b.blocks_seen) == (14, 7)
    assert b.hit_rate == 0.5
    assert b.prefix_blocks == (0, 2, 1, 3, 0)
    assert b.prefix_tokens == (0, 8, 4, 12, 0)
    assert b.prefix_hit_rate == pytest.approx(3 / 7)


def _recount(path: Path) -> tuple[int, int, int]:
    """A straightforward recount straight from the JSON: (needed, seen earlier, prefix blocks)."""
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    needed = seen_n = prefix_n = 0
    for i, row in enumerate(rows):
        earlier = {h for r in rows[:i] for h in r["hash_ids"]}
        needed += len(row["hash_ids"])
        seen_n += len([h for h in row["hash_ids"] if h in earlier])
        for h in row["hash_ids"]:
            if h not in earlier:
                break
            prefix_n += 1
    return needed, seen_n, prefix_n


def test_reuse_bound_on_the_sample_matches_a_recount() -> None:
    t = load_mooncake(SAMPLE)
    assert len(t.requests) == 300
    b = reuse_bound(t)
    needed, seen_n, prefix_n = _recount(SAMPLE)
    assert (b.blocks_needed, b.blocks_seen, sum(b.prefix_blocks)) == (needed, seen_n, prefix_n)
    assert b.hit_rate == seen_n / needed
    # Scaling changes tokens, never which blocks repeat.
    sb = reuse_bound(scale(t, Scale(block_tokens=16)))
    assert (sb.blocks_needed, sb.blocks_seen, sb.prefix_blocks) == (b.blocks_needed, b.blocks_seen, b.prefix_blocks)


def test_scaling_keeps_the_structure() -> None:
    t = load_mooncake(SAMPLE)
    s = scale(t, Scale(block_tokens=16, time_factor=0.1, max_output=8))
    assert s.block_tokens == 16 and len(s.requests) == len(t.requests)
    for a, b in zip(t.requests, s.requests, strict=True):
        assert b.line == a.line and b.hash_ids == a.hash_ids  # order kept, every block keeps its id
        assert b.arrival == pytest.approx(a.arrival * 0.1)
        assert -(-b.input_length // 16) == len(a.hash_ids)  # same number of blocks
        last_a, last_b = t.last_block_tokens(a), s.last_block_tokens(b)
        assert last_b == (16 if last_a == 512 else min(15, -(-last_a * 16 // 512)))  # its share, rounded up
        assert (last_a == 512) == (last_b == 16)  # partial stays partial, full stays full
        assert b.output_length == min(8, max(1, -(-a.output_length * 16 // 512)))
    assert [r.arrival for r in s.requests] == sorted(r.arrival for r in s.requests)


def test_scaling_by_hand_window_limit_and_cut() -> None:
    t = _hand()  # 4 tokens a block
    s = scale(t, Scale(block_tokens=2, start=1.0, limit=2, output_factor=1.0, max_blocks=3))
    # window from 1 s: r2 (1.5 s) and r3 (2 s); the limit stops before r4
    assert [r.line for r in s.requests] == [4, 5]
    assert [r.arrival for r in s.requests] == [0.5, 1.0]
    assert s.requests[0].hash_ids == (1, 5) and s.requests[0].input_length == 2 + 1  # last 1/4 -> 1 of 2
    assert s.requests[1].hash_ids == (1, 2, 4) and s.requests[1].input_length == 6  # cut: block 3 was full
    assert [r.output_length for r in s.requests] == [1, 9]
    with pytest.raises(ConfigError, match="no requests in the window"):
        scale(t, Scale(start=10.0))


@pytest.mark.parametrize("bad", [{"block_tokens": 0}, {"time_factor": 0.0}, {"time_factor": float("inf")},
                                 {"output_factor": -1.0}, {"start": 2.0, "end": 1.0}, {"limit": 0},
                                 {"max_output": 0}, {"max_blocks": 0}])
def test_bad_scale(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="scale: "):
        Scale(**bad)  # type: ignore[arg-type]


def test_tokens_equal_ids_equal_tokens() -> None:
    t = scale(load_mooncake(SAMPLE), Scale(block_tokens=16))
    by_id: dict[int, tuple[int, ...]] = {}
    for req in t.requests:
        toks = prompt_tokens(t, req, seed=7)
        assert len(toks) == req.input_length
        assert all(0 <= x <= 255 for x in toks)
        for i, h in enumerate(req.hash_ids):
            chunk = tuple(toks[i * 16:(i + 1) * 16])
            full = by_id.setdefault(h, block_token_ids(h, 7, 16))
            assert chunk == full[: len(chunk)]
    # Different ids give different blocks (16 random bytes: a clash has probability ~n^2 / 2^129).
    every_id = {h for line in SAMPLE.read_text().splitlines() for h in json.loads(line)["hash_ids"]}
    assert by_id.keys() == every_id and len(every_id) == 7814
    assert len(set(by_id.values())) == len(by_id)
    # Requests sharing a hash-id prefix share exactly that token prefix.
    r0, r1 = t.requests[0], t.requests[1]
    shared = 0
    while r0.hash_ids[shared] == r1.hash_ids[shared]:
        shared += 1
    a, b = prompt_tokens(t, r0, 7), prompt_tokens(t, r1, 7)
    assert shared >= 1 and a[: 16 * shared] == b[: 16 * shared] and a[16 * shared:][:16] != b[16 * shared:][:16]


def test_tokens_depend_on_seed_and_are_stable() -> None:
    assert block_token_ids(5, 0, 16) == block_token_ids(5, 0, 16)
    assert block_token_ids(5, 0, 16) != block_token_ids(5, 1, 16)
    assert block_token_ids(5, 0, 8) == block_token_ids(5, 0, 16)[:8]
    # Pinned: the synthesis must not drift between versions (replays compare answers).
    assert bytes(block_token_ids(0, 0, 4)).hex() == "4c52df33"


GOOD = {"timestamp": 5, "input_length": 600, "output_length": 3, "hash_ids": [1, 2]}


def _with(**changes: object) -> str:
    obj: dict[str, object] = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not _DROP})


_DROP = object()


@pytest.mark.parametrize(("line", "field", "message"), [
    (_with(timestamp=_DROP), "timestamp", "missing"),
    (_with(input_length=_DROP), "input_length", "missing"),
    (_with(output_length=_DROP), "output_length", "missing"),
    (_with(hash_ids=_DROP), "hash_ids", "missing"),
    (_with(timestamp=-1), "timestamp", "must be in 0"),
    (_with(input_length=0), "input_length", "must be in 1"),
    (_with(output_length=-3), "output_length", "must be in 1"),
    (_with(timestamp=1.5), "timestamp", "must be an integer"),
    (_with(input_length="600"), "input_length", "must be an integer"),
    (_with(output_length=True), "output_length", "must be an integer"),
    (_with(hash_ids="1,2"), "hash_ids", "must be a list"),
    (_with(hash_ids=[1, -2]), "hash_ids[1]", "must be an integer in 0"),
    (_with(hash_ids=[1, 2.0]), "hash_ids[1]", "must be an integer"),
    (_with(hash_ids=[1, 1 << 64]), "hash_ids[1]", "must be an integer in 0"),
    (_with(hash_ids=[1, 2, 3]), "hash_ids", "3 blocks, but input_length 600 needs 2"),
    (_with(input_length=(MAX_BLOCKS + 1) * 512, hash_ids=list(range(MAX_BLOCKS + 1))), "hash_ids", "more than"),
    ('{"timestamp": 5, "input_length": 600,', "", "not a JSON object"),
    ('{"timestamp": NaN, "input_length": 600, "output_length": 3, "hash_ids": [1, 2]}', "", "not a JSON object"),
    ("[1, 2]", "", "must be a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "", "not a JSON object"),
    ('{"timestamp": 1' + "0" * 5000 + "}", "", "not a JSON object"),
])
def test_bad_line_names_file_line_and_field(line: str, field: str, message: str) -> None:
    text = _with() + "\n\n" + line + "\n"
    with pytest.raises(ConfigError, match=message) as err:
        parse_mooncake("t.jsonl", text)
    assert (err.value.path, err.value.line, err.value.field) == ("t.jsonl", 3, field)


def test_line_numbers_count_newlines_only() -> None:
    odd = json.dumps({**GOOD, "note": "a\u2028b\x1cc\x85d"}, ensure_ascii=False)
    assert "\u2028" in odd  # raw, where str.splitlines() would break the line
    text = _with() + "\r\n" + odd + "\n" + _with(timestamp=-1)
    with pytest.raises(ConfigError) as err:
        parse_mooncake("t.jsonl", text)
    assert (err.value.line, err.value.field) == (3, "timestamp")
    assert len(parse_mooncake("t.jsonl", text.rsplit("\n", 1)[0]).requests) == 2


def test_timestamps_must_not_decrease() -> None:
    text = _with(timestamp=5) + "\n" + _with(timestamp=5) + "\n" + _with(timestamp=4)
    with pytest.raises(ConfigError, match="must not decrease") as err:
        parse_mooncake("t.jsonl", text)
    assert (err.value.line, err.value.field) == (3, "timestamp")


def test_bounds_on_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty trace"):
        parse_mooncake("t.jsonl", "\n\n")
    with pytest.raises(ConfigError, match="more than 2 requests") as err:
        parse_mooncake("t.jsonl", "\n".join([_with()] * 3), max_requests=2)
    assert err.value.line == 3
    with pytest.raises(ConfigError, match="longer than"):
        parse_mooncake("t.jsonl", _with(junk="x" * (2 << 20)))
    big = tmp_path / "big.jsonl"
    big.write_text(_with() + "\n" + _with() + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_mooncake(big, limit=100)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_mooncake(tmp_path)
    # Other keys are ignored, so later traces with more fields still load.
    assert parse_mooncake("t.jsonl", _with(extra=[1])).requests[0].hash_ids == (1, 2)
