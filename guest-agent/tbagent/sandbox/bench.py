"""In-guest measurements behind bench/sandbox.py (`tbagent sandbox bench`, JSON out).

Time to a ready sandbox = from the request to the function's process running inside a sandbox
with its namespaces, cgroup, rootfs and network (its "started" message); the function's own
initialisation (importing its module) is reported apart, as it is the same work on both paths.
Repurposed and crun runs are interleaved so background load hits both alike, with a pause after
each teardown: the kernel finishes some of it asynchronously (a network namespace is dismantled by
a worker, an IPC namespace is freed after an RCU grace period), and on a one-CPU node that work
would otherwise land in the next measured run.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import TYPE_CHECKING

from tbproto import meminfo as proc_meminfo

from tbagent.functions import spec as function_spec
from tbagent.sandbox import cgroup, layers, oci, server
from tbagent.sandbox.cgroup import Group
from tbagent.sandbox.pool import Pool, PoolConfig
from tbagent.sandbox.sandbox import DEFAULT_LIMITS, limits_for

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

MEMINFO = ("MemFree", "MemAvailable", "Slab", "SReclaimable", "SUnreclaim", "KernelStack", "PageTables", "Shmem")
OCI_SLOTS = 8
SETTLE_S = 0.3


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "p99": percentile(xs, 99), "min": min(xs),
            "max": max(xs), "mean": statistics.fmean(xs)}


def _phases(rows: list[JsonObject], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {k: summary([float(r[k]) for r in rows if k in r]) for k in keys}


def _meminfo() -> dict[str, int]:
    """The MEMINFO fields, in bytes."""
    with open("/proc/meminfo") as fh:
        return {k: v * 1024 for k, v in proc_meminfo.parse(fh.read()).items() if k in MEMINFO}


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3")


def _smaps(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB" and parts[0].rstrip(":") in ("Rss", "Pss", "Private_Dirty", "Private_Clean"):
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def idle_memory(pool: Pool, n: int) -> JsonObject:
    """Memory per idle pooled sandbox: node-wide deltas over n new sandboxes, and per sandbox its
    init's cgroup (memory.current: what it wrote since the fork, plus the kernel objects charged
    there: namespaces, page tables, its stage tmpfs) and the init's RSS/PSS."""
    size = pool.cfg.size
    pool.resize(0)
    time.sleep(0.5)
    _drop_caches()
    before = _meminfo()
    pool.resize(n)
    time.sleep(1.0)
    _drop_caches()
    after = _meminfo()
    idle = pool.status()["idle"]
    per = {k: (before[k] - after[k] if k in ("MemFree", "MemAvailable") else after[k] - before[k]) / n for k in MEMINFO}
    cg = [float(s["init_memory_current"]) for s in idle]
    spare = [float(s["fn_memory_current"]) for s in idle]
    smaps = [_smaps(int(s["init_pid"])) for s in idle]
    pool.resize(size)
    return {"sandboxes": n, "per_sandbox_meminfo_delta": per, "init_cgroup_memory_current": summary(cg),
            "spare_cgroup_memory_current": summary(spare),
            "init_rss": summary([float(m.get("Rss", 0)) for m in smaps]),
            "init_pss": summary([float(m.get("Pss", 0)) for m in smaps]),
            "init_private": summary([float(m.get("Private_Dirty", 0) + m.get("Private_Clean", 0)) for m in smaps])}


def cgroup_reset(repeats: int = 20) -> JsonObject:
    """memory.peak reset by writing to it (per file descriptor since 6.12) against recreating the leaf."""
    g = Group("bench-peak")
    g.destroy()
    g.create(DEFAULT_LIMITS)
    try:
        pid = os.fork()
        if pid == 0:
            g.add(os.getpid())
            hog = bytearray(32 << 20)
            for i in range(0, len(hog), 4096):
                hog[i] = 1
            os._exit(0)
        os.waitpid(pid, 0)
        peak_before = int(g.read("memory.peak"))
        fd = os.open(g.path / "memory.peak", os.O_RDWR)
        os.write(fd, b"reset")
        os.lseek(fd, 0, os.SEEK_SET)
        same_fd = int(os.read(fd, 64))
        os.close(fd)
        new_fd = int(g.read("memory.peak"))
        writes, recreates = [], []
        for _ in range(repeats):
            t0 = time.monotonic()
            fd = os.open(g.path / "memory.peak", os.O_RDWR)
            os.write(fd, b"reset")
            os.close(fd)
            t1 = time.monotonic()
            g.recreate(DEFAULT_LIMITS)
            t2 = time.monotonic()
            writes.append(t1 - t0)
            recreates.append(t2 - t1)
    finally:
        g.destroy()
    return {"peak_before": peak_before, "after_write_same_fd": same_fd, "after_write_new_fd": new_fd,
            "write_reset_s": summary(writes), "recreate_s": summary(recreates)}


def run(function: str = "hello", runs: int = 200, oci_runs: int = 50, variant_runs: int = 15,
        memory_sandboxes: int = 8) -> JsonObject:
    if server.running():
        raise RuntimeError("a pool daemon is running; stop it (tbagent sandbox stop) before benchmarking")
    spec = function_spec(function)
    cgroup.ensure_tree()
    layers.build_base()
    oci.sweep()
    lowers = [layers.function_layer(spec), layers.base_dir()]
    limits = limits_for(spec)
    pool = Pool(PoolConfig(size=1, max_size=max(16, memory_sandboxes + 2))).start()
    rep: list[JsonObject] = []
    rel: list[JsonObject] = []
    box_rows: list[JsonObject] = []
    destroys: list[float] = []
    fresh: list[JsonObject] = []
    out: JsonObject = {"function": function}
    try:
        for i in range(3):  # warm-up: layers, page cache, first use of the sandbox, crun's first runs
            lease = pool.acquire(function)
            pool.release(lease.id)
            box = oci.OciSandbox(i)
            try:
                box.create(spec, lowers, limits)
            finally:
                box.destroy()
        n = max(runs, oci_runs)
        for i in range(n):  # both kinds spread over the same time window
            if i * runs // n != (i + 1) * runs // n:
                t0 = time.monotonic()
                lease = pool.acquire(function)
                acquire_wall = time.monotonic() - t0
                assert pool.invoke(lease.id, {})["ok"]
                t1 = time.monotonic()
                report = pool.release(lease.id)
                rel.append({"release": time.monotonic() - t1, **report["timings"]})
                time.sleep(SETTLE_S)
                rep.append({**lease.timings, "pick": lease.waited_s, "acquire_wall": acquire_wall,
                            "ready": lease.waited_s + lease.timings["ready_sandbox"]})
            if i * oci_runs // n != (i + 1) * oci_runs // n:
                box = oci.OciSandbox(i % OCI_SLOTS)
                try:
                    box_rows.append(box.create(spec, lowers, limits))
                    assert box.invoke({})["ok"]
                finally:
                    destroys.append(box.destroy())
                time.sleep(SETTLE_S)
        out["init_memory_after_use"] = pool.status()["idle"][0]["init_memory_current"]
        for _ in range(max(3, runs // 10)):  # the pool's own from-scratch path (exhaustion fallback)
            hold = pool.acquire(function)
            lease = pool.acquire(function, on_exhausted="fallback")
            created = lease.timings["created"]
            fresh.append({**{f"create_{k}": v for k, v in created.items()},
                          "ready": created["total"] + lease.timings["ready_sandbox"], **lease.timings})
            pool.release(lease.id)
            pool.release(hold.id)
            time.sleep(SETTLE_S)
        out["memory"] = idle_memory(pool, memory_sandboxes)
    finally:
        pool.close()
    variants: dict[str, list[float]] = {v: [] for v in oci.VARIANTS}  # create only, interleaved with "full"
    for i in range(variant_runs):
        for v in variants:
            box = oci.OciSandbox(i % OCI_SLOTS, v)
            try:
                variants[v].append(box.create(spec, lowers, limits, start=False)["create"])
            finally:
                box.destroy()
            time.sleep(SETTLE_S)
    out["cgroup_reset"] = cgroup_reset()
    phase_keys = ("pick", "namespaces", "cgroup", "rootfs", "network", "process", "ready", "function_init", "ready_function",
                  *sorted({k for r in rep for k in r if k.startswith("process.")}))
    out["repurposed"] = {"phases": _phases(rep, phase_keys),
                         "release": _phases(rel, ("release", "kill", "mounts", "upper", "hostname", "env", "ipc", "network",
                                                  "cgroup", "spare")),
                         "ready_samples": [r["ready"] for r in rep]}
    oci_keys = ("rootfs_outer", "bundle", "create", "network", "process", "ready_sandbox", "function_init", "ready_function")
    out["oci"] = {"phases": _phases(box_rows, oci_keys), "destroy": summary(destroys),
                  "ready_samples": [r["ready_sandbox"] for r in box_rows],
                  "create_variants": {v: summary(xs) for v, xs in variants.items()}}
    out["fresh_pool"] = {"phases": _phases(fresh, ("create_cgroup", "create_namespaces", "create_network", "create_rootfs",
                                                   "create_spare", "create_total", "cgroup", "rootfs", "process", "ready",
                                                   "function_init"))}
    med = {v: s["median"] for v, s in out["oci"]["create_variants"].items() if s.get("n")}
    if len(med) == len(oci.VARIANTS):
        create = med["full"]
        ns, cg, mounts = create - med["no-ns"], create - med["no-cgroup"], create - med["no-mounts"]
        out["oci"]["breakdown"] = {
            "namespaces": ns, "cgroup": cg,
            "rootfs": out["oci"]["phases"]["rootfs_outer"]["median"] + out["oci"]["phases"]["bundle"]["median"] + mounts,
            "runtime_rest": create - ns - cg - mounts,
            "network": out["oci"]["phases"]["network"]["median"], "process": out["oci"]["phases"]["process"]["median"]}
    r, o = out["repurposed"]["phases"]["ready"], out["oci"]["phases"]["ready_sandbox"]
    out["ratio"] = {"median": o["median"] / r["median"], "p99": o["p99"] / r["p99"]}
    return out
