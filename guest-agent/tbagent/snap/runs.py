"""Start instances of a snapshot in a mode, invoke them, measure them (one JSON line each)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tbproto.ops import Mode, Placement

from tbagent import info
from tbagent.snap import metrics, mmt
from tbagent.snap.instance import Instance, InstanceError, start_cold, start_restore
from tbagent.snap.sandboxed import SandboxedInstance, start_in_sandbox
from tbagent.snap.snapshot import Local, prepare

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject


def cxl_range(mhd: str) -> tuple[int, int] | None:
    for dev in info.info().get("cxl", []):
        if dev.get("mhd") == mhd and dev.get("resource"):
            return metrics.cxl_range(dev["resource"], dev["size"])
    return None


def start(local: Local, mode: Mode, populate: bool = False, sandbox: str | None = None) -> Instance | SandboxedInstance:
    if sandbox is not None:
        imgdir = local.stripped if mode is Mode.TEMPLATE else local.full
        return start_in_sandbox(mode, Placement(sandbox), local.function, imgdir, local.pipes, populate)
    if mode is Mode.COLD:
        return start_cold(local.function, local.layout.get("env") or None)
    imgdir = local.stripped if mode is Mode.TEMPLATE else local.full
    return start_restore(mode, imgdir, local.pipes, populate=populate)


def _ms(s: float) -> float:
    return round(s * 1000, 3)


def run(snapshot: str, mode: Mode, count: int = 1, event: JsonObject | None = None, requests: int = 1,
        populate: bool = False, mhd: str = "mhd0", replay_warm: bool = False,
        sandbox: str | None = None) -> Iterator[JsonObject]:
    """Start `count` instances one after the other and keep them all alive; yield one record per
    instance (after its first `requests` requests), then a summary with every instance alive.
    `replay_warm`: a cold instance first answers the snapshot's warm-up request (not measured), so
    its state is the snapshot's: what a restored instance's answers are checked against.
    `sandbox`: restore inside a sandbox of the pool daemon, "pool" (repurposed) or "fresh"."""
    local = prepare(snapshot, mhd, full=mode in (Mode.CRIU, Mode.LAZY))
    event = event if event is not None else dict(local.layout["warm"]["event"])
    rng = cxl_range(mhd)
    live: list[Instance | SandboxedInstance] = []
    node0 = metrics.node_memory()
    tinfo0 = mmt.info(local.mmt_name) if mode is Mode.TEMPLATE and local.layout["areas"] else None
    with contextlib.ExitStack() as stack:
        for i in range(count):
            before = metrics.node_memory()
            inst = start(local, mode, populate, sandbox)
            stack.callback(inst.stop)
            live.append(inst)
            startup = inst.marks["ready"] - inst.marks["start"]
            if replay_warm and mode is Mode.COLD:
                inst.invoke(dict(local.layout["warm"]["event"]))
            reply, first = inst.invoke(event)
            lat = [first]
            for _ in range(requests - 1):
                r, t = inst.invoke(event)
                lat.append(t)
                reply = r if not r.get("ok") else reply
            rec: JsonObject = {
                "snapshot": snapshot, "function": local.function, "mode": str(mode), "instance": i,
                "ok": bool(reply.get("ok")), "result": reply.get("result"), "error": reply.get("error"),
                "startup_ms": _ms(startup), "first_request_ms": _ms(first), "e2e_ms": _ms(startup + first),
                "request_ms": [_ms(t) for t in lat], "run_ms": _ms(float(reply.get("run_s", 0.0))),
                "faults": metrics.faults(inst.pid), "memory": metrics.instance_memory(inst.pid, rng),
                "node_before": before, "node_after": metrics.node_memory(),
            }
            if sandbox is not None:
                rec["sandbox"] = sandbox
            for k in ("restore_s", "init_s", "sandbox_create_s"):
                if k in inst.marks:
                    rec[k.replace("_s", "_ms")] = _ms(inst.marks[k])
            yield rec
        alive = [metrics.instance_memory(x.pid, rng) for x in live]
        pss_cxl = metrics.pss_cxl_kib([metrics.cxl_frames(x.pid, rng) for x in live])
        node1 = metrics.node_memory()
        summary: JsonObject = {
            "summary": True, "snapshot": snapshot, "function": local.function, "mode": str(mode), "instances": count,
            "sandbox": sandbox,
            "node_before": node0, "node_after": node1,
            "node_used_delta_kib": node1["used_kib"] - node0["used_kib"],
            "local_kib_per_instance": round((node1["used_kib"] - node0["used_kib"]) / max(count, 1), 1),
            "rss_local_kib": sum(m["rss_local_kib"] for m in alive), "pss_local_kib": sum(m["pss_local_kib"] for m in alive),
            "rss_cxl_kib": sum(m["rss_cxl_kib"] for m in alive), "cow_pages": sum(m["cow_pages"] for m in alive),
            "pss_cxl_kib": round(sum(pss_cxl), 1), "pss_cxl_kib_per_instance": pss_cxl,
        }
        if tinfo0 is not None:
            t1 = mmt.info(local.mmt_name)
            summary["template"] = {"nr_vmas": t1.nr_vmas, "shared_maps": t1.shared_maps - tinfo0.shared_maps,
                                   "cow_copies": t1.cow_copies - tinfo0.cow_copies}
        yield summary


def dedup(snapshot: str, mode: Mode, count: int, event: JsonObject | None = None,
          mhd: str = "mhd0") -> JsonObject:
    """Identical pages: `count` instances alive in `mode`, each after one request; their private
    pages counted by physical frame (a frame shared by the kernel counts once), and the local ones
    by content. `hashes` (one per local frame) lets pages on several nodes be counted together."""
    local = prepare(snapshot, mhd, full=mode in (Mode.CRIU, Mode.LAZY))
    rng = cxl_range(mhd)
    event = event if event is not None else dict(local.layout["warm"]["event"])
    pages: dict[int, bytes] = {}
    cxl: set[int] = set()
    with contextlib.ExitStack() as stack:
        live: list[Instance | SandboxedInstance] = []
        for _ in range(count):
            live.append(start(local, mode))
            stack.callback(live[-1].stop)
        for inst in live:
            reply, _t = inst.invoke(event)
            if not reply.get("ok"):
                raise InstanceError(f"{snapshot} {mode}: {reply.get('error')}")
        for inst in live:
            got, shared = metrics.private_pages(inst.pid, rng)
            pages.update(got)
            cxl |= shared
    digests = sorted(hashlib.blake2b(p, digest_size=8).hexdigest() for p in pages.values())
    return {"snapshot": snapshot, "mode": str(mode), "instances": count, "local_pages": len(pages),
            "unique_local": len(set(digests)), "cxl_pages": len(cxl),
            "pages": len(pages) + len(cxl), "hashes": digests}


def frames(snapshot: str, mhd: str = "mhd0") -> JsonObject:
    """Restore one template instance (populated) and say which CXL pages back its template areas,
    as offsets into the device: equal on every node if the nodes share the pages."""
    local = prepare(snapshot, mhd)
    rng = cxl_range(mhd)
    if rng is None:
        raise ValueError(f"this node has no CXL region for {mhd}")
    with start(local, Mode.TEMPLATE, populate=True) as inst:
        pairs = []
        for v in metrics.smaps(inst.pid):
            if metrics.is_cxl(v):
                for va, pfn in metrics.frame_map(inst.pid, v.start, v.end).items():
                    if rng[0] <= pfn * metrics.PAGE < rng[1]:
                        pairs.append((va, pfn * metrics.PAGE - rng[0]))
    expected = {}
    for a in local.layout["areas"]:
        for k in range(0, a["len"], metrics.PAGE):
            expected[a["addr"] + k] = local.mem_off + a["off"] + k
    pairs.sort()
    return {"pages": len(pairs), "template_pages": len(expected),
            "matches_store": sum(1 for va, off in pairs if expected.get(va) == off),
            "digest": hashlib.sha256(repr(pairs).encode()).hexdigest()[:32]}
