"""Token traces in Mooncake's format: requests with prefix-block hashes, scaled down for TCG.

One JSON object a line (Mooncake's FAST'25 trace release):
  {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2, ...]}
`timestamp` is the arrival in ms from the trace's zero, `hash_ids` names the prompt's blocks of
`block_tokens` (512) tokens, the last one possibly partial; equal ids mean a reusable prefix
block. Everything read is untrusted: sizes are bounded and a bad line is one ConfigError naming
file, line and field. Other keys on a line are ignored (a later trace may add some).

Scaling keeps the prefix-sharing structure: every block keeps its id and the number of blocks is
unchanged; only the tokens per block (the last partial block stays partial), the output and
the time shrink. Tokens are synthesised per hash id from a seed, so equal ids give equal tokens."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from testbed.config.yamlfile import read_regular
from testbed.errors import ConfigError

MOONCAKE_BLOCK_TOKENS = 512
MAX_TRACE_BYTES = 64 << 20  # the real trace is 3 MiB
MAX_LINE_BYTES = 1 << 20
MAX_REQUESTS = 1_000_000
MAX_BLOCKS = 1 << 16  # per request: 32 Mi tokens at 512 a block
MAX_HASH_ID = (1 << 63) - 1
MAX_TIMESTAMP_MS = 10**12  # ~30 years
MAX_LENGTH = 1 << 30  # tokens
VOCAB = 256  # byte tokens 0..255, as the llm workload's
FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


@dataclass(frozen=True)
class TraceRequest:
    line: int  # in the source file, for errors and provenance
    arrival: float  # seconds from the trace's zero (after scaling)
    input_length: int  # prompt tokens; ceil(input_length / block_tokens) == len(hash_ids)
    output_length: int  # tokens to generate, >= 1
    hash_ids: tuple[int, ...]


@dataclass(frozen=True)
class TokenTrace:
    source: str
    block_tokens: int
    requests: tuple[TraceRequest, ...]  # arrivals never decrease

    def last_block_tokens(self, req: TraceRequest) -> int:
        """Tokens in the request's last (possibly partial) block."""
        return req.input_length - self.block_tokens * (len(req.hash_ids) - 1)


def _int_field(name: str, lineno: int, obj: dict[str, object], field: str, low: int, high: int) -> int:
    if field not in obj:
        raise ConfigError(name, lineno, field, "missing")
    value = obj[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, lineno, field, f"must be an integer, got {type(value).__name__} {value!r:.40}")
    if not low <= value <= high:
        raise ConfigError(name, lineno, field, f"must be in {low}..{high}, got {value}")
    return value


def _no_constant(text: str) -> object:
    raise ValueError(f"{text} is not a number JSON allows")


def _parse_line(name: str, lineno: int, raw: str, block_tokens: int) -> TraceRequest:
    if len(raw) > MAX_LINE_BYTES:
        raise ConfigError(name, lineno, "", f"line longer than {MAX_LINE_BYTES} characters")
    try:
        obj = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so are huge ints
        raise ConfigError(name, lineno, "", f"not a JSON object: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError(name, lineno, "", f"must be a JSON object, got {type(obj).__name__}")
    ts = _int_field(name, lineno, obj, "timestamp", 0, MAX_TIMESTAMP_MS)
    inp = _int_field(name, lineno, obj, "input_length", 1, MAX_LENGTH)
    out = _int_field(name, lineno, obj, "output_length", 1, MAX_LENGTH)
    if "hash_ids" not in obj:
        raise ConfigError(name, lineno, "hash_ids", "missing")
    ids = obj["hash_ids"]
    if not isinstance(ids, list):
        raise ConfigError(name, lineno, "hash_ids", f"must be a list of integers, got {type(ids).__name__}")
    if len(ids) > MAX_BLOCKS:
        raise ConfigError(name, lineno, "hash_ids", f"more than {MAX_BLOCKS} blocks ({len(ids)})")
    for i, h in enumerate(ids):
        if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= MAX_HASH_ID:
            raise ConfigError(name, lineno, f"hash_ids[{i}]", f"must be an integer in 0..{MAX_HASH_ID}, got {h!r:.40}")
    blocks = -(-inp // block_tokens)
    if blocks != len(ids):
        raise ConfigError(name, lineno, "hash_ids", f"{len(ids)} blocks, but input_length {inp} needs "
                          f"{blocks} of {block_tokens} tokens")
    return TraceRequest(lineno, ts / 1000.0, inp, out, tuple(ids))


def parse_mooncake(name: str, text: str, *, block_tokens: int = MOONCAKE_BLOCK_TOKENS,
                   max_requests: int = MAX_REQUESTS) -> TokenTrace:
    """The requests of a Mooncake-format text (blank lines skipped); timestamps must not decrease."""
    if not 1 <= block_tokens <= MAX_LENGTH:
        raise ValueError(f"block_tokens must be in 1..{MAX_LENGTH}, got {block_tokens}")
    out: list[TraceRequest] = []
    last = 0.0
    # split("\n"), not splitlines(): that also splits at \x1c, \u2028, ... and would miscount lines.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        if len(out) >= max_requests:
            raise ConfigError(name, lineno, "", f"more than {max_requests} requests")
        req = _parse_line(name, lineno, raw, block_tokens)
        if req.arrival < last:
            raise ConfigError(name, lineno, "timestamp", f"timestamps must not decrease ({round(req.arrival * 1000)} "
                              f"after {round(last * 1000)})")
        last = req.arrival
        out.append(req)
    if not out:
        raise ConfigError(name, None, "", "empty trace (expected one JSON object a line)")
    return TokenTrace(name, block_tokens, tuple(out))


def load_mooncake(path: Path | str, *, block_tokens: int = MOONCAKE_BLOCK_TOKENS, limit: int = MAX_TRACE_BYTES,
                  max_requests: int = MAX_REQUESTS) -> TokenTrace:
    """A Mooncake-format trace file (regular file of at most `limit` bytes)."""
    text = read_regular(path, limit, "token trace")
    return parse_mooncake(str(path), text, block_tokens=block_tokens, max_requests=max_requests)


@dataclass(frozen=True)
class Scale:
    """How to shrink a trace for TCG. Token counts go from the trace's block size to
    `block_tokens` a block; outputs by `output_factor` (default: the same ratio), at least 1 and
    at most `max_output`; arrivals by `time_factor` (0.1 = ten times faster). `start`/`end`
    (seconds of the original trace) pick a window, rebased to its start; `limit` keeps the first
    N requests of it; `max_blocks` cuts longer prompts to their first blocks (a prefix of a
    shared prefix is still shared, so the structure survives)."""

    block_tokens: int = 16
    time_factor: float = 1.0
    output_factor: float | None = None
    max_output: int | None = None
    start: float = 0.0
    end: float | None = None
    limit: int | None = None
    max_blocks: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.block_tokens <= MAX_LENGTH:
            raise ValueError(f"scale: block_tokens must be in 1..{MAX_LENGTH}, got {self.block_tokens}")
        for field, value in (("time_factor", self.time_factor), ("output_factor", self.output_factor)):
            if value is not None and not (0 < value < math.inf):
                raise ValueError(f"scale: {field} must be positive and finite, got {value}")
        if not (0 <= self.start < math.inf) or (self.end is not None and not self.start < self.end):
            raise ValueError(f"scale: need 0 <= start < end, got start {self.start}, end {self.end}")
        for field, n in (("max_output", self.max_output), ("limit", self.limit), ("max_blocks", self.max_blocks)):
            if n is not None and n < 1:
                raise ValueError(f"scale: {field} must be at least 1, got {n}")


def scale(trace: TokenTrace, s: Scale) -> TokenTrace:
    """The trace shrunk by s: same requests in the same order with the same hash ids (cut to
    max_blocks), each full block of s.block_tokens tokens and the last block's share of its
    block kept (rounded up; a partial block stays partial, 1..block_tokens-1, a full one full)."""
    ratio = s.block_tokens / trace.block_tokens
    out_factor = ratio if s.output_factor is None else s.output_factor
    rows: list[TraceRequest] = []
    for req in trace.requests:
        if req.arrival < s.start or (s.end is not None and req.arrival >= s.end):
            continue
        if s.limit is not None and len(rows) >= s.limit:
            break
        ids = req.hash_ids
        last = trace.last_block_tokens(req)
        if s.max_blocks is not None and len(ids) > s.max_blocks:
            ids, last = ids[: s.max_blocks], trace.block_tokens  # the cut-off block was a full one
        last_scaled = min(s.block_tokens, max(1, math.ceil(last * ratio)))
        if last < trace.block_tokens and s.block_tokens > 1:  # a partial block stays partial
            last_scaled = min(last_scaled, s.block_tokens - 1)
        out = max(1, math.ceil(req.output_length * out_factor))
        if s.max_output is not None:
            out = min(out, s.max_output)
        rows.append(replace(req, arrival=(req.arrival - s.start) * s.time_factor,
                            input_length=s.block_tokens * (len(ids) - 1) + last_scaled, output_length=out, hash_ids=ids))
    if not rows:
        raise ConfigError(trace.source, None, "", f"no requests in the window {s.start}..{s.end} s")
    return TokenTrace(trace.source, s.block_tokens, tuple(rows))


def block_token_ids(hash_id: int, seed: int, n: int) -> tuple[int, ...]:
    """n byte tokens (0..255) for one block, a function of (seed, hash id) only: equal ids give
    equal tokens, different ids different ones but with probability 256**-n."""
    if not 0 <= n <= MAX_LENGTH:
        raise ValueError(f"block of {n} tokens")
    return tuple(hashlib.shake_256(f"mooncake-block/{seed}/{hash_id}".encode()).digest(n))


def prompt_tokens(trace: TokenTrace, req: TraceRequest, seed: int = 0) -> list[int]:
    """The request's prompt: its blocks' tokens in order, the last block cut to its length."""
    toks: list[int] = []
    for h in req.hash_ids:
        toks.extend(block_token_ids(h, seed, trace.block_tokens))
    return toks[: req.input_length]


@dataclass(frozen=True)
class ReuseBound:
    """What an infinite prefix cache would reuse on a trace, in order of arrival."""

    blocks_needed: int
    blocks_seen: int  # blocks whose hash id appeared in an earlier request
    prefix_blocks: tuple[int, ...]  # per request: leading blocks all seen earlier (reusable prefix)
    prefix_tokens: tuple[int, ...]  # per request: those blocks' tokens (capped by the prompt)

    @property
    def hit_rate(self) -> float:
        """blocks seen earlier / blocks needed: the hit rate an infinite cache reaches."""
        return self.blocks_seen / self.blocks_needed if self.blocks_needed else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        """Reusable-prefix blocks / blocks needed (equal to hit_rate when ids are prefix hashes)."""
        return sum(self.prefix_blocks) / self.blocks_needed if self.blocks_needed else 0.0


def reuse_bound(trace: TokenTrace) -> ReuseBound:
    seen: set[int] = set()
    needed = hits = 0
    prefix: list[int] = []
    tokens: list[int] = []
    for req in trace.requests:
        needed += len(req.hash_ids)
        hits += sum(1 for h in req.hash_ids if h in seen)
        k = 0
        while k < len(req.hash_ids) and req.hash_ids[k] in seen:
            k += 1
        prefix.append(k)
        tokens.append(min(k * trace.block_tokens, req.input_length))
        seen.update(req.hash_ids)
    return ReuseBound(needed, hits, tuple(prefix), tuple(tokens))
