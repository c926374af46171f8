"""Every op of `tbagent serve`: its request type (the args object) and its reply type (the
result). Field names are the agent handlers' keyword arguments. A field that is None is "not
given" (left out on the wire); the agent's default applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tbproto.jsontypes import Json, JsonObject
from tbproto.records import SandboxRun


class Mode(StrEnum):
    COLD = "cold"
    CRIU = "criu"
    LAZY = "lazy"
    TEMPLATE = "template"


class Placement(StrEnum):
    POOL = "pool"
    FRESH = "fresh"


class Policy(StrEnum):
    QUEUE = "queue"
    FALLBACK = "fallback"


# --- session ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pong:
    agent: str
    protocol: int


@dataclass(frozen=True)
class Info:
    pass


@dataclass(frozen=True)
class NodeInfo:
    agent: str
    hostname: str
    kernel: str
    ready_s: float | None = None
    cxl: list[JsonObject] = field(default_factory=list)  # the boot-time CXL set-up, as the node wrote it


@dataclass(frozen=True)
class Catalog:
    pass


@dataclass(frozen=True)
class CatalogReply:
    protocol: int
    functions: tuple[str, ...]


# --- store --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Extent:
    off: int
    len: int
    crc: int


@dataclass(frozen=True)
class StoreFormat:
    mhd: str
    slots: int | None = None
    heads: int | None = None
    head: int | None = None


@dataclass(frozen=True)
class StoreFormatted:
    heads: int
    slots: int
    section_size: int
    data_off: int


@dataclass(frozen=True)
class StorePut:
    mhd: str
    name: str
    files: tuple[str, ...]
    meta: JsonObject | None = None


@dataclass(frozen=True)
class StorePutReply:
    name: str
    head: int
    seq: int
    extents: tuple[Extent, ...]


@dataclass(frozen=True)
class StoreList:
    mhd: str


@dataclass(frozen=True)
class StoreEntry:
    name: str
    head: int
    seq: int
    bytes: int
    extents: tuple[Extent, ...]
    meta: JsonObject = field(default_factory=dict)


@dataclass(frozen=True)
class StoreGet:
    mhd: str
    name: str
    out: str | None = None


@dataclass(frozen=True)
class StoreGetReply:
    name: str
    head: int
    seq: int
    extents: tuple[Extent, ...]
    crc_ok: bool
    bytes: int


@dataclass(frozen=True)
class StoreDelete:
    mhd: str
    name: str


@dataclass(frozen=True)
class StoreDeleted:
    deleted: str
    record_seq: int


@dataclass(frozen=True)
class StoreCheck:
    mhd: str


@dataclass(frozen=True)
class StoreCheckReply:
    ok: bool
    templates: int
    records: int
    heads: int
    problems: list[JsonObject]


@dataclass(frozen=True)
class StoreGc:
    mhd: str


@dataclass(frozen=True)
class StoreGcReply:
    reclaimed_records: int
    freed_bytes: int
    abandoned_slots: int


# --- snapshots ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SnapTake:
    name: str
    function: str
    mhd: str | None = None
    warm: JsonObject | None = None
    env: dict[str, str] | None = None


@dataclass(frozen=True)
class SnapTaken:
    name: str
    head: int
    seq: int
    function: str
    mmt: str
    areas: int
    template_bytes: int
    criu_bytes: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    warm_result: Json = None  # the function's answer to the warm-up request


@dataclass(frozen=True)
class SnapPrepare:
    name: str
    mhd: str | None = None
    full: bool | None = None


@dataclass(frozen=True)
class SnapPrepared:
    name: str
    dir: str
    mmt: str
    function: str
    areas: int
    full: bool


@dataclass(frozen=True)
class SnapRun:
    name: str
    mode: Mode
    count: int | None = None
    event: JsonObject | None = None
    requests: int | None = None
    populate: bool | None = None
    mhd: str | None = None
    replay_warm: bool | None = None
    sandbox: Placement | None = None


@dataclass(frozen=True)
class SnapDedup:
    name: str
    mode: Mode
    count: int | None = None
    event: JsonObject | None = None
    mhd: str | None = None


@dataclass(frozen=True)
class SnapDedupReply:
    snapshot: str
    mode: str
    instances: int
    local_pages: int
    unique_local: int
    cxl_pages: int
    pages: int
    hashes: tuple[str, ...]


# --- sandboxes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SandboxPool:
    """Start the node's pool daemon with `size` sandboxes, or resize the running one."""

    size: int
    max: int | None = None
    on_exhausted: Policy | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class SandboxStop:
    timeout: float | None = None


@dataclass(frozen=True)
class SandboxStopped:
    stopped: bool  # False: no daemon was running


@dataclass(frozen=True)
class SandboxRunPool:
    """Run `function` once in a repurposed sandbox of the pool (`tbagent sandbox run`)."""

    function: str
    event: JsonObject | None = None
    env: dict[str, str] | None = None
    on_exhausted: Policy | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class SandboxRunFresh:
    """Run `function` once in a sandbox crun makes from scratch (`tbagent sandbox oci`)."""

    function: str
    event: JsonObject | None = None


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


@dataclass(frozen=True)
class Op:
    name: str
    request: type
    reply: object  # a type expression: a dataclass, list[...] or JsonObject


OPS: dict[str, Op] = {o.name: o for o in (
    Op("ping", Ping, Pong),
    Op("info", Info, NodeInfo),
    Op("catalog", Catalog, CatalogReply),
    Op("store.format", StoreFormat, StoreFormatted),
    Op("store.put", StorePut, StorePutReply),
    Op("store.list", StoreList, list[StoreEntry]),
    Op("store.get", StoreGet, StoreGetReply),
    Op("store.delete", StoreDelete, StoreDeleted),
    Op("store.check", StoreCheck, StoreCheckReply),
    Op("store.gc", StoreGc, StoreGcReply),
    Op("snap.take", SnapTake, SnapTaken),
    Op("snap.prepare", SnapPrepare, SnapPrepared),
    Op("snap.run", SnapRun, list[JsonObject]),  # records.run_records types them
    Op("snap.dedup", SnapDedup, SnapDedupReply),
    Op("sandbox.pool", SandboxPool, JsonObject),  # the daemon's status object
    Op("sandbox.stop", SandboxStop, SandboxStopped),
    Op("sandbox.run", SandboxRunPool, SandboxRun),
    Op("sandbox.fresh", SandboxRunFresh, SandboxRun),
    Op("model.put", ModelPut, ModelPutReply),
    Op("model.list", ModelList, list[ModelEntry]),
    Op("model.disk", ModelDisk, ModelDiskReply),
    Op("llm.run", LlmRun, LlmRunReply),
    Op("llm.migrate_out", LlmMigrateOut, JsonObject),  # the handle: opaque to the host, passed to B
    Op("llm.migrate_in", LlmMigrateIn, LlmMigrateInReply),
    Op("llm.migrate_status", LlmMigrateStatus, JsonObject),
)}
