"""The ServerlessLLM and Mooncake ops' request and reply types (tbproto.ops lists them in OPS and
re-exports them): model checkpoints in the MHD, inference instances, live migration, and the
KV block pool's prefill/decode disaggregation."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tbproto.jsontypes import JsonObject

# --- models and inference (ServerlessLLM) ------------------------------------------------------

class Loader(StrEnum):
    """How an inference instance gets its weights: ServerlessLLM's baseline and two CXL ways."""

    DISK = "disk"  # a safetensors file on the node's own disk, page cache dropped first
    CXL_COPY = "cxl-copy"  # a chunked, pipelined copy from the MHD into local memory
    CXL_MAP = "cxl-map"  # the tensors mapped straight from the MHD: nothing copied


@dataclass(frozen=True)
class ModelPut:
    """Publish the checkpoint of an `llm` preset into the MHD once (skipped when it is there)."""

    mhd: str
    name: str
    preset: str
    dtype: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class ModelPutReply:
    name: str
    bytes: int
    tensors: int
    params: int
    put_s: float
    existed: bool  # already in the store: nothing written


@dataclass(frozen=True)
class ModelList:
    mhd: str


@dataclass(frozen=True)
class ModelEntry:
    name: str
    bytes: int
    tensors: int
    params: int
    config: JsonObject


@dataclass(frozen=True)
class ModelDisk:
    """Write the node's local-disk copy (safetensors) of a model of the store: `disk`'s source."""

    mhd: str
    name: str


@dataclass(frozen=True)
class ModelDiskReply:
    path: str
    bytes: int
    write_s: float
    existed: bool


@dataclass(frozen=True)
class LlmRun:
    """Start `instances` inference instances at once, each its own process: load the model with
    `loader`, then generate `max_tokens` tokens greedily from `prompt`."""

    model: str
    mhd: str
    loader: Loader
    prompt: str
    max_tokens: int
    instances: int | None = None
    # disk: what leaves the page cache first: all (default: a cold disk), file (only this model's
    # pages: it is not in this node's DRAM tier), none (it is: ServerlessLLM's locality)
    drop: str | None = None


@dataclass(frozen=True)
class LlmInstance:
    ok: bool
    loader: str
    error: str | None = None
    load_s: float | None = None  # weights ready (for cxl-map: mapped, not yet touched)
    ttft_s: float | None = None  # the request's start (after loading) to its first token
    tokens_per_s: float | None = None  # after the first token
    total_s: float | None = None  # load + generation
    tokens: tuple[int, ...] = ()
    text: str | None = None
    bytes_copied: int | None = None
    bytes_mapped: int | None = None
    pss_local_kib: float | None = None  # the instance's PSS outside the CXL mapping
    rss_cxl_kib: float | None = None  # resident from the CXL mapping


@dataclass(frozen=True)
class LlmRunReply:
    instances: tuple[LlmInstance, ...]
    wall_s: float


class MigrateMethod(StrEnum):
    """How a live generation moves from node A to node B."""

    TOKENS = "tokens"  # ServerlessLLM's way: the token ids; B recomputes the KV cache (prefill)
    KV_NET = "kv-net"  # the KV cache over TCP on the node network
    KV_CXL = "kv-cxl"  # the KV cache left in the MHD; B maps it


@dataclass(frozen=True)
class LlmMigrateOut:
    """Node A: prefill a prompt made up to `context` tokens, generate `generated`, pause, hand over."""

    method: MigrateMethod
    preset: str
    prompt: str
    context: int
    generated: int
    mhd: str | None = None  # kv-cxl
    bind: str | None = None  # kv-net: an address of A that B reaches
    dtype: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class LlmMigrateIn:
    """Node B: import what A handed over (the handle, passed through as A gave it) and go on."""

    method: MigrateMethod
    handle: JsonObject
    preset: str
    tokens: int
    mhd: str | None = None
    dtype: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class MigrateDowntime:
    export_s: float  # A: from the pause to the handle ready
    import_s: float  # B: prefill, or receive and check, or map and check
    first_token_s: float  # B: from the import to the first new token
    total_s: float


@dataclass(frozen=True)
class LlmMigrateInReply:
    id: str
    method: str
    tokens: tuple[int, ...]  # B's continuation
    import_s: float
    first_token_s: float
    downtime: MigrateDowntime
    bytes: dict[str, int]  # handle, net (over the node network), kv, header, cxl_read
    token_gap_s: float | None = None  # B's median time between tokens after the import
    downtime_tokens: float | None = None  # the downtime in token times: the extra delay in tokens


@dataclass(frozen=True)
class LlmMigrateStatus:
    """A: the outcome of a kv-net hand-over (pending, sent, failed, timeout)."""

    id: str
    wait_s: float | None = None


# --- Mooncake: KV blocks in the MHD, prefill/decode disaggregation ---------------------------

class KvDesign(StrEnum):
    COLOCATED = "colocated"  # prefill and decode on one node; nothing reused or moved
    KV_NET = "kv-net"  # the prefill node sends its KV cache over TCP to the decode node
    KV_CXL = "kv-cxl"  # blocks in the MHD's shared pool: reused by prefix, read in place


@dataclass(frozen=True)
class KvFormat:
    """This head's arena of the KV block pool, for one model and block size."""

    mhd: str
    preset: str
    block_tokens: int
    slots: int | None = None
    dtype: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class KvPrefill:
    design: KvDesign
    mhd: str
    preset: str
    tokens: tuple[int, ...]
    block_tokens: int
    decode: int | None = None  # colocated: tokens decoded here after the first
    bind: str | None = None  # kv-net: where the sender listens (an address the decode node reaches)
    dtype: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class KvPrefillReply:
    design: str
    first: int
    blocks: int  # full blocks of the prompt
    blocks_hit: int  # reused from the pool
    blocks_put: int  # new to the pool
    tokens_computed: int
    past_bytes_copied: int
    prefill_s: float
    kv_bytes: int
    keys: tuple[str, ...] = ()  # kv-cxl: the prompt's block keys, for the decode node
    handle: JsonObject | None = None  # kv-net: where to fetch the cache
    decoded: tuple[int, ...] = ()  # colocated
    tbt_s: float | None = None  # colocated


@dataclass(frozen=True)
class KvDecode:
    design: KvDesign
    mhd: str
    preset: str
    tokens: tuple[int, ...]  # the prompt and its first token
    n: int
    block_tokens: int
    keys: tuple[str, ...] | None = None
    handle: JsonObject | None = None
    dtype: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class KvDecodeReply:
    tokens: tuple[int, ...]
    decode_s: float
    bytes_net: int
    bytes_cxl_read: int
    tbt_s: float | None = None
    restore_s: float | None = None
