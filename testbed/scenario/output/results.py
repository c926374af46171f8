"""The results folder of a run.

    raw.jsonl      one JSON object per line, appended and flushed as the run goes (type: setup,
                   prepare, invocation, memory, unit); a `unit` line marks a (mode, workload,
                   repetition) as complete, which is what --resume skips
    summary.json   per mode and workload: count, errors, the kept metrics' statistics (count,
                   mean, median, P50/P90/P99, min, max), memory; the executor's overhead; assertions
    meta.json      the scenario as resolved, topology, git commit, kernel and patch hashes, QEMU
                   and libvirt versions, accelerator, host CPU, seed, start and end times
    failures.json  what failed (empty list when nothing did)
    report.md      the tables in markdown; *.png plots (testbed.scenario.output.plots)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from tbproto.jsontypes import Json, JsonObject

from testbed import __version__, paths
from testbed.errors import TestbedError, UserError
from testbed.scenario.output import stats

RAW = "raw.jsonl"
SUMMARY = "summary.json"
META = "meta.json"
FAILURES = "failures.json"
REPORT = "report.md"
UnitKey = tuple[str, str, int]  # (mode, workload, repetition)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def unit_key(rec: JsonObject) -> UnitKey:
    return (str(rec["mode"]), str(rec["workload"]), int(rec["rep"]))


class RawLog:
    """raw.jsonl, appended from many threads; every line is flushed as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh: TextIO = open(path, "a", encoding="utf-8")

    def write(self, record: JsonObject) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def read_raw(path: Path) -> list[JsonObject]:
    """The records of raw.jsonl; a torn last line (the run was killed mid-write) is dropped."""
    out: list[JsonObject] = []
    if not path.exists():
        return out
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                break
            raise UserError(f"{path}:{i + 1}: not a JSON line") from None
        if isinstance(rec, dict):
            out.append(rec)
    return out


def completed_units(records: Iterable[JsonObject]) -> set[UnitKey]:
    return {unit_key(r) for r in records if r.get("type") == "unit" and r.get("status") == "done"}


def keep_completed(path: Path) -> tuple[set[UnitKey], int]:
    """For --resume: keep the records of completed units only (and earlier set-up records),
    rewrite raw.jsonl atomically; returns (completed units, records dropped)."""
    records = read_raw(path)
    done = completed_units(records)
    kept = [r for r in records if r.get("type") == "setup" or ("mode" in r and "rep" in r and unit_key(r) in done)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)
    return done, len(records) - len(kept)


def write_json(path: Path, data: Json) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Json:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; is {path.parent} a results folder of `testbed run`?") from None
    except ValueError as exc:
        raise UserError(f"{path}: not JSON: {exc}") from None


# --- summary --------------------------------------------------------------------------------

class RecordData:
    """Measurements read from raw records (warm-up excluded): what summaries and assertions use."""

    def __init__(self, records: Sequence[JsonObject]) -> None:
        self.invocations: dict[tuple[str, str], list[JsonObject]] = defaultdict(list)
        self.warmups: dict[tuple[str, str], int] = defaultdict(int)
        mem: dict[UnitKey, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        for r in records:
            if r.get("type") == "invocation":
                if r.get("warmup"):
                    self.warmups[(r["mode"], r["workload"])] += 1
                else:
                    self.invocations[(r["mode"], r["workload"])].append(r)
            elif r.get("type") == "memory" and isinstance(r.get("used_kb"), int | float):
                mem[unit_key(r)][r["node"]][r.get("at", "after")].append(float(r["used_kb"]))
        # Per unit: sum over its nodes of the highest use seen during or after the unit, and of
        # that minus the use before it.
        self.unit_memory: dict[UnitKey, tuple[float, float | None]] = {}
        for key, per_node in mem.items():
            peak = 0.0
            delta: float | None = 0.0
            for samples in per_node.values():
                seen = samples.get("during", []) + samples.get("after", [])
                if not seen:
                    continue
                peak += max(seen)
                if samples.get("before") and delta is not None:
                    delta += max(seen) - samples["before"][0]
                else:
                    delta = None
            self.unit_memory[key] = (peak, delta)

    def values(self, mode: str, workload: str, metric: str) -> list[float]:
        out = []
        for r in self.invocations.get((mode, workload), []):
            v = (r.get("metrics") or {}).get(metric)
            if r.get("ok") and isinstance(v, int | float) and not isinstance(v, bool):
                out.append(float(v))
        return out

    def values_by_rep(self, mode: str, workload: str, metric: str) -> dict[int, list[float]]:
        out: dict[int, list[float]] = defaultdict(list)
        for r in self.invocations.get((mode, workload), []):
            v = (r.get("metrics") or {}).get(metric)
            if r.get("ok") and isinstance(v, int | float) and not isinstance(v, bool):
                out[int(r.get("rep", 0))].append(float(v))
        return dict(out)

    def counts(self, mode: str, workload: str) -> tuple[int, int]:
        recs = self.invocations.get((mode, workload), [])
        return len(recs), sum(1 for r in recs if not r.get("ok"))

    def memory(self, mode: str, workload: str, delta: bool) -> float | None:
        vals = [d if delta else p for (m, w, _), (p, d) in self.unit_memory.items()
                if m == mode and w == workload and (d is not None or not delta)]
        return stats.median_or_none([float(v) for v in vals if v is not None])

    def mode_memory(self, mode: str, delta: bool) -> float | None:
        vals = [d if delta else p for (m, _, _), (p, d) in self.unit_memory.items() if m == mode]
        return stats.median_or_none([float(v) for v in vals if v is not None])

    def all_invocations(self) -> list[JsonObject]:
        return [r for recs in self.invocations.values() for r in recs]


def _round(value: Json) -> Json:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def summarize(records: Sequence[JsonObject], modes: Sequence[str], workloads: Sequence[str],
              metrics: Sequence[str]) -> JsonObject:
    data = RecordData(records)
    out: JsonObject = {"modes": {}}
    for mode in modes:
        entry: JsonObject = {"memory_kb": data.mode_memory(mode, False),
                                 "memory_delta_kb": data.mode_memory(mode, True), "workloads": {}}
        for wl in workloads:
            n, errors = data.counts(mode, wl)
            if n == 0 and (mode, wl) not in data.warmups:
                continue
            entry["workloads"][wl] = {
                "count": n, "errors": errors, "error_rate": errors / n if n else None,
                "warmup": data.warmups.get((mode, wl), 0),
                "memory_kb": data.memory(mode, wl, False), "memory_delta_kb": data.memory(mode, wl, True),
                "metrics": {m: stats.describe(data.values(mode, wl, m)) for m in metrics},
                # bootstrap 95% intervals of median and P99 over all invocations, and each
                # repetition on its own with the spread across repetitions (stats.py)
                "ci": {m: stats.intervals(data.values(mode, wl, m)) for m in metrics},
                "repetitions": {m: stats.by_repetition(data.values_by_rep(mode, wl, m)) for m in metrics},
                # what a report leads with: across repetitions when there are several (stats.headline)
                "headline": {m: stats.headline(data.values_by_rep(mode, wl, m)) for m in metrics}}
        out["modes"][mode] = entry
    invs = [r for r in records if r.get("type") == "invocation"]

    def number(m: JsonObject, key: str) -> bool:
        return isinstance(m.get(key), int | float) and not isinstance(m.get(key), bool)

    def values(*keys: str, timed: bool = False) -> list[float]:
        """Per invocation, the first of keys its metrics hold as a number; timed: only the
        invocations the node timed itself (those with a transport figure)."""
        out = []
        for r in invs:
            m = r.get("metrics") or {}
            if timed and not number(m, "transport_ms"):
                continue
            v = next((m[k] for k in keys if number(m, k)), None)
            if v is not None:
                out.append(float(v))
        return out

    def med(*keys: str, timed: bool = False) -> float | None:
        return stats.median_or_none(values(*keys, timed=timed))

    def p99(*keys: str) -> float | None:
        return stats.percentile(v, 99) if (v := values(*keys)) else None

    out["executor"] = {
        "invocations": len(invs),
        "dispatch_ms_median": med("dispatch_ms"),  # host-side executor time, outside the remote call
        # the remote call minus the node's own time (the agent's op time, else the timer's)
        "transport_ms_median": med("transport_ms"),
        "lateness_ms_median": med("lateness_ms"),  # open loop: start minus scheduled time
        "lateness_ms_p99": p99("lateness_ms"),
        "transport_ms_p99": p99("transport_ms"),
        # Over the invocations with a transport figure, so the three describe the same calls:
        "latency_ms_median": med("latency_ms", timed=True),  # the remote call's wall time seen from the host
        "node_ms_median": med("guest_ms", "function_ms", timed=True),  # the node's own time
    }
    rounded: JsonObject = _round(out)
    return rounded


# --- meta -----------------------------------------------------------------------------------

def _cmd(argv: list[str]) -> str | None:
    from testbed.hostcmd import run

    try:
        p = run(argv, check=False, timeout=20)
    except (TestbedError, OSError):
        return None
    text = (p.stdout or "").strip()
    return text if p.returncode == 0 and text else None


def host_cpu() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return platform.processor() or None


def git_info() -> JsonObject:
    commit = _cmd(["git", "-C", str(paths.REPO), "rev-parse", "HEAD"])
    status = _cmd(["git", "-C", str(paths.REPO), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": bool(status) if commit else None}


def kernel_info(state_kernel: dict[str, str]) -> JsonObject:
    info: JsonObject = dict(state_kernel)
    kdir = state_kernel.get("dir")
    if kdir and (Path(kdir) / "meta.json").exists():
        try:
            meta: JsonObject = json.loads((Path(kdir) / "meta.json").read_text())
            for key in ("key", "package", "source_version", "patches", "config_hash", "config_sha"):
                if key in meta:
                    info[key] = meta[key]
        except (OSError, ValueError):
            pass
    return info


def qemu_info(state_qemu: dict[str, str]) -> JsonObject:
    """The emulator the testbed's domains run, with the patch hashes of a patched build."""
    info: JsonObject = dict(state_qemu)
    exe = state_qemu.get("path")
    meta_file = Path(exe).parent.parent / "meta.json" if exe else None
    if meta_file is not None and meta_file.exists():
        try:
            meta: JsonObject = json.loads(meta_file.read_text())
            for key in ("patches", "configure", "tarball_sha256", "recipe"):
                if key in meta:
                    info[key] = meta[key]
        except (OSError, ValueError):
            pass
    return info


def host_meta() -> JsonObject:
    return {
        "git": git_info(),
        "libvirt": _cmd(["virsh", "--version"]),
        "libvirtd": _cmd(["libvirtd", "--version"]),
        "host": {"cpu": host_cpu(), "cpus": os.cpu_count(), "kernel": platform.release(),
                 "python": platform.python_version()},
        "toolkit": __version__,
    }
