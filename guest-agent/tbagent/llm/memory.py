"""An instance's memory, split into local DRAM and what it maps from the CXL device, from
/proc/self/smaps: the device's (or, in tests, its backing file's) VMAs against the rest.

Pages of a device-dax mapping are not counted in smaps' Rss (they are device memory, not page
cache), so the bytes resident from the mapping are counted from /proc/self/pagemap's present
bits instead, which needs no root; for a plain file both agree."""

from __future__ import annotations

import os

from tbagent.snap import metrics


def split(device: str | None) -> dict[str, int]:
    """{local_pss, local_rss, cxl_mapped, cxl_resident, cxl_rss}: bytes. `device` is the path of
    the MHD device (or file); None counts everything as local."""
    real = os.path.realpath(device) if device else None
    pid = os.getpid()
    out = dict.fromkeys(("local_pss", "local_rss", "cxl_mapped", "cxl_resident", "cxl_rss"), 0)
    for v in metrics.smaps(pid):
        if real is not None and v.path == real:
            out["cxl_mapped"] += v.end - v.start
            out["cxl_rss"] += v.fields.get("Rss", 0) * 1024
            out["cxl_resident"] += len(metrics.frames(pid, v.start, v.end)) * metrics.PAGE
            # A private copy made on write would be local memory inside this VMA.
            out["local_pss"] += v.fields.get("Anonymous", 0) * 1024
            out["local_rss"] += v.fields.get("Anonymous", 0) * 1024
        else:
            out["local_pss"] += v.fields.get("Pss", 0) * 1024
            out["local_rss"] += v.fields.get("Rss", 0) * 1024
    return out
