"""Every op of `tbagent serve`: its request type (the args object) and its reply type (the
result). Field names are the agent handlers' keyword arguments. A field that is None is "not
given" (left out on the wire); the agent's default applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tbproto.jsontypes import Json, JsonObject
from tbproto.llmops import (
    KvDecode as KvDecode,
)
from tbproto.llmops import (
    KvDecodeReply as KvDecodeReply,
)
from tbproto.llmops import (
    KvDesign as KvDesign,
)
from tbproto.llmops import (
    KvFormat as KvFormat,
)
from tbproto.llmops import (
    KvPrefill as KvPrefill,
)
from tbproto.llmops import (
    KvPrefillReply as KvPrefillReply,
)
from tbproto.llmops import (
    LlmInstance as LlmInstance,
)
from tbproto.llmops import (
    LlmMigrateIn as LlmMigrateIn,
)
from tbproto.llmops import (
    LlmMigrateInReply as LlmMigrateInReply,
)
from tbproto.llmops import (
    LlmMigrateOut as LlmMigrateOut,
)
from tbproto.llmops import (
    LlmMigrateStatus as LlmMigrateStatus,
)
from tbproto.llmops import (
    LlmRun as LlmRun,
)
from tbproto.llmops import (
    LlmRunReply as LlmRunReply,
)
from tbproto.llmops import (
    Loader as Loader,
)
from tbproto.llmops import (
    MigrateDowntime as MigrateDowntime,
)
from tbproto.llmops import (
    MigrateMethod as MigrateMethod,
)
from tbproto.llmops import (
    ModelDisk as ModelDisk,
)
from tbproto.llmops import (
    ModelDiskReply as ModelDiskReply,
)
from tbproto.llmops import (
    ModelEntry as ModelEntry,
)
from tbproto.llmops import (
    ModelList as ModelList,
)
from tbproto.llmops import (
    ModelPut as ModelPut,
)
from tbproto.llmops import (
    ModelPutReply as ModelPutReply,
)
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
    Op("kv.format", KvFormat, JsonObject),
    Op("kv.prefill", KvPrefill, KvPrefillReply),
    Op("kv.decode", KvDecode, KvDecodeReply),
)}
