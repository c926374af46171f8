"""Per-instance memory and fault figures, from /proc.

Local DRAM against CXL: a template VMA is a private mapping of the device-dax device. Its pages
are either the device's own (read-only devmap PTEs: CXL memory, not counted in smaps' Rss) or
copies made on write (anonymous pages: local DRAM). /proc/PID/pagemap tells which by the frame
number: inside the CXL region's physical range or not."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from tbproto import meminfo as proc_meminfo

PAGE = 4096
PM_PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    with open("/proc/meminfo") as fh:
        return proc_meminfo.parse(fh.read())


def node_memory() -> dict[str, int]:
    m = meminfo()
    return {"used_kib": m["MemTotal"] - m["MemAvailable"], "available_kib": m["MemAvailable"],
            "anon_kib": m["AnonPages"], "free_kib": m["MemFree"]}


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    path: str
    fields: dict[str, int]


def smaps(pid: int) -> list[Vma]:
    vmas: list[Vma] = []
    with open(f"/proc/{pid}/smaps") as fh:
        cur: Vma | None = None
        for line in fh:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split(None, 5)
                lo, hi = first.split("-")
                cur = Vma(int(lo, 16), int(hi, 16), parts[5].strip() if len(parts) > 5 else "", {})
                vmas.append(cur)
            elif cur is not None and first.endswith(":") and line.rstrip().endswith("kB"):
                cur.fields[first[:-1]] = int(line.split()[1])
    return vmas


def is_cxl(v: Vma) -> bool:
    return v.path.startswith("/dev/dax")


def pagemap(pid: int, start: int, end: int) -> list[int]:
    """/proc/PID/pagemap entries of the pages in [start, end)."""
    with open(f"/proc/{pid}/pagemap", "rb") as fh:
        fh.seek(start // PAGE * 8)
        raw = fh.read((end - start) // PAGE * 8)
    return [e for (e,) in struct.iter_unpack("<Q", raw)]


def frame_map(pid: int, start: int, end: int) -> dict[int, int]:
    """{virtual address: frame} of the present pages in [start, end)."""
    return {start + i * PAGE: e & PFN_MASK for i, e in enumerate(pagemap(pid, start, end)) if e & PM_PRESENT}


def frames(pid: int, start: int, end: int) -> list[int]:
    """Frame numbers of the present pages in [start, end)."""
    return list(frame_map(pid, start, end).values())


PM_FILE = 1 << 61
SPECIAL = ("[vsyscall]", "[vvar]", "[vdso]")


def private_pages(pid: int, cxl: tuple[int, int] | None) -> tuple[dict[int, bytes], set[int]]:
    """The instance's private memory by physical page: ({local frame: its content}, {CXL frames}).
    Page-cache pages (file or shared) are left out: they are shared by the kernel already."""
    local: dict[int, bytes] = {}
    shared: set[int] = set()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for v in smaps(pid):
            if v.path in SPECIAL:
                continue
            on_cxl = is_cxl(v)
            for i, e in enumerate(pagemap(pid, v.start, v.end)):
                if not e & PM_PRESENT:
                    continue
                pfn = e & PFN_MASK
                if on_cxl and cxl is not None and cxl[0] <= pfn * PAGE < cxl[1]:
                    shared.add(pfn)
                elif not e & PM_FILE and pfn not in local:
                    mem.seek(v.start + i * PAGE)
                    local[pfn] = mem.read(PAGE)
    return local, shared


def faults(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return {"minflt": int(fields[7]), "majflt": int(fields[9])}


def instance_memory(pid: int, cxl_range: tuple[int, int] | None) -> dict[str, int]:
    """RSS and PSS split into local DRAM and CXL-mapped, plus copy-on-write pages, in KiB."""
    rss_local = pss_local = cxl_pages = cow_pages = 0
    for v in smaps(pid):
        if not is_cxl(v):
            rss_local += v.fields.get("Rss", 0)
            pss_local += v.fields.get("Pss", 0)
            continue
        pss_local += v.fields.get("Pss_Anon", v.fields.get("Anonymous", 0))
        for pfn in frames(pid, v.start, v.end):
            if cxl_range is not None and cxl_range[0] <= pfn * PAGE < cxl_range[1]:
                cxl_pages += 1
            else:
                cow_pages += 1
    rss_local += cow_pages * PAGE // 1024
    return {"rss_local_kib": rss_local, "pss_local_kib": pss_local, "rss_cxl_kib": cxl_pages * PAGE // 1024,
            "cow_pages": cow_pages}


def cxl_frames(pid: int, cxl: tuple[int, int] | None) -> set[int]:
    """The CXL frames an instance maps (in its template VMAs)."""
    if cxl is None:
        return set()
    return {pfn for v in smaps(pid) if is_cxl(v) for pfn in frames(pid, v.start, v.end)
            if cxl[0] <= pfn * PAGE < cxl[1]}


def pss_cxl_kib(frame_sets: list[set[int]]) -> list[float]:
    """Each instance's proportional share of the CXL pages it maps: a page mapped by k of the
    instances counts 1/k to each (like smaps' Pss, over the instances given)."""
    users: dict[int, int] = {}
    for fs in frame_sets:
        for f in fs:
            users[f] = users.get(f, 0) + 1
    return [round(sum(PAGE / 1024 / users[f] for f in fs), 1) for fs in frame_sets]


def cxl_range(resource: str | int, size: str | int) -> tuple[int, int]:
    base = int(resource, 0) if isinstance(resource, str) else resource
    return base, base + (int(size, 0) if isinstance(size, str) else size)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
