"""What emulation distorts in a run, stated in every results folder (meta.json, report.md).

The statements follow what was observed for the run (the accelerator and each head's path as
QEMU reported it), so a reader knows which figures mean what on real hardware."""

from __future__ import annotations

from collections.abc import Sequence

from tbproto.jsontypes import JsonObject

# Real CXL-attached DRAM: about 2x local DRAM load latency and less bandwidth per device
# (public measurements of CXL 1.1/2.0 expanders report roughly 170-250 ns against ~100 ns).
REAL_CXL_LATENCY_FACTOR = 2.0


def distortions(accelerator: str, heads: Sequence[JsonObject]) -> list[str]:
    out: list[str] = []
    observed = {str(h.get("observed")) for h in heads}
    if "direct" in observed or "partial" in observed:
        out.append("direct path: CXL loads and stores cost local DRAM latency and bandwidth here; real CXL memory "
                   f"costs about {REAL_CXL_LATENCY_FACTOR:g}x DRAM latency and has less bandwidth, so CXL-resident "
                   "work looks faster than it would on hardware")
    if "mmio" in observed or "partial" in observed:
        out.append("mmio path: every CXL access is a QEMU callback (a few MB/s, hundreds of ns per load under "
                   "TCG), far slower than real CXL; figures that touch CXL memory on this path measure QEMU")
    if "unknown" in observed:
        out.append("some heads' paths could not be read back from QEMU: their figures are of unknown fidelity")
    fell_back = [f"{h['node']}/{h['mhd']}" for h in heads if h.get("fell_back")]
    if fell_back:
        out.append(f"FELL BACK: {', '.join(fell_back)} configured direct but QEMU reports {'/'.join(sorted(observed))}")
    if accelerator == "tcg":
        out.append("TCG: guest instructions are translated, so absolute times are TCG's (often 5-50x slower than "
                   "hardware); compare modes within one run, not against published absolute numbers")
    elif accelerator == "kvm":
        out.append("KVM: guest CPU work runs at near-native speed; memory figures follow the CXL path above")
    return out
