"""The records the agent's measuring ops answer with: `snap.run` (one record per instance, then a
summary) and the sandbox runs. The agent builds them from these types and the host decodes
them into these types, so neither side mirrors the other's dictionary keys by hand.

Figures are optional: an instance that failed early has few of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from tbproto.codec import ProtocolError, decode
from tbproto.jsontypes import Json, JsonObject


@dataclass(frozen=True)
class Faults:
    minflt: int | None = None
    majflt: int | None = None


@dataclass(frozen=True)
class Memory:
    rss_local_kib: float | None = None
    pss_local_kib: float | None = None
    rss_cxl_kib: float | None = None
    cow_pages: float | None = None


@dataclass(frozen=True)
class InstanceRecord:
    """One instance of `snap.run`, measured after its first `requests` requests (ms)."""

    ok: bool = False
    instance: int | None = None
    snapshot: str | None = None
    function: str | None = None
    mode: str | None = None
    sandbox: str | None = None
    result: Json = None  # the function's answer (JSON)
    error: str | None = None
    startup_ms: float | None = None
    first_request_ms: float | None = None
    e2e_ms: float | None = None
    request_ms: tuple[float, ...] = ()
    run_ms: float | None = None
    restore_ms: float | None = None
    init_ms: float | None = None
    sandbox_create_ms: float | None = None
    faults: Faults | None = None
    memory: Memory | None = None
    node_before: dict[str, int] | None = None
    node_after: dict[str, int] | None = None


@dataclass(frozen=True)
class TemplateCounters:
    nr_vmas: float | None = None
    shared_maps: float | None = None
    cow_copies: float | None = None


@dataclass(frozen=True)
class RunSummary:
    """The last record of `snap.run`: memory with every instance alive (KiB)."""

    summary: bool = True
    snapshot: str | None = None
    function: str | None = None
    mode: str | None = None
    sandbox: str | None = None
    instances: int | None = None
    node_before: dict[str, int] | None = None
    node_after: dict[str, int] | None = None
    node_used_delta_kib: float | None = None
    local_kib_per_instance: float | None = None
    rss_local_kib: float | None = None
    pss_local_kib: float | None = None
    rss_cxl_kib: float | None = None
    cow_pages: float | None = None
    pss_cxl_kib: float | None = None
    pss_cxl_kib_per_instance: tuple[float, ...] = ()
    template: TemplateCounters | None = None


def run_records(items: object, op: str = "snap.run") -> tuple[list[InstanceRecord], RunSummary | None]:
    """snap.run's answer split into the instance records and the summary (ProtocolError if an
    item is not a record of either kind)."""
    if not isinstance(items, list):
        raise ProtocolError(op, "result", f"expected a list of records, got {type(items).__name__}")
    inst: list[InstanceRecord] = []
    summary: RunSummary | None = None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("summary"):
            summary = summary or decode(RunSummary, item, op, f"result[{i}]", strict=False)
        else:
            inst.append(decode(InstanceRecord, item, op, f"result[{i}]", strict=False))
    return inst, summary


@dataclass(frozen=True)
class FunctionReply:
    """The function's own answer inside a sandbox (seconds)."""

    ok: bool = False
    result: Json = None
    error: str | None = None
    run_s: float | None = None
    invoke_s: float | None = None


@dataclass(frozen=True)
class Release:
    clean: bool = True
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxRun:
    """`sandbox.run` (a repurposed pool sandbox) or `sandbox.fresh` (crun from scratch): step
    timings in seconds; `reply` is the function's answer."""

    ok: bool = False
    error: str | None = None
    lease: str | None = None
    sandbox: int | None = None  # the pool sandbox's id (a fresh sandbox has none)
    fresh: bool | None = None
    waited_s: float | None = None
    timings: JsonObject = field(default_factory=dict)  # step -> seconds; `created` is a nested object
    reply: FunctionReply = field(default_factory=FunctionReply)
    release: Release | None = None
    destroy_s: float | None = None
