"""PNG plots of a run (matplotlib, Agg backend: no display needed).

    latency_cdf.png        latency CDF per mode, one panel per workload (always)
    e2e_cdf.png            the same for `e2e_ms`, when invocations carry it (a start measured on
                           the node: request received -> instance ready -> first answer)
    memory_instances.png   memory against number of instances, when invocations carry an
                           `instances` field (the memory is their `memory_kb`, else the unit's)
    startup_breakdown.png  stacked bars of the median of each phase, when invocations carry a
                           `phases` object of numbers (milliseconds), with the rest of the time
                           measured on the node ("other on node") and the transport on top
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from testbed.scenario.output import stats
from testbed.scenario.output.results import RecordData, unit_key

DPI = 110


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def latency_cdf(data: RecordData, modes: Sequence[str], workloads: Sequence[str], out: Path,
                metric: str = "latency_ms", title: str = "Latency CDF per mode") -> bool:
    panels = [w for w in workloads if any(data.values(m, w, metric) for m in modes)]
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for i, wl in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for mode in modes:
            xs = sorted(data.values(mode, wl, metric))
            if xs:
                ys = [(j + 1) / len(xs) for j in range(len(xs))]
                ax.step(xs, ys, where="post", label=f"{mode} (n={len(xs)})")
        ax.set_title(wl, fontsize=10)
        ax.set_xlabel(f"{metric.removesuffix('_ms')} (ms)")
        ax.set_ylabel("fraction of invocations")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return True


def memory_instances(data: RecordData, modes: Sequence[str], out: Path) -> bool:
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in data.all_invocations():
        m = r.get("metrics") or {}
        x = _number(m.get("instances"))
        if x is None:
            x = _number((r.get("params") or {}).get("instances"))
        if x is None or not r.get("ok"):
            continue
        y = _number(m.get("memory_kb"))
        if y is None:
            y = data.unit_memory.get(unit_key(r), (None, None))[0]
        if y is not None:
            series[f"{r['mode']} / {r.get('base', r['workload'])}"][x].append(y / 1024)
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in sorted(series, key=lambda s: [modes.index(s.split(" / ")[0]) if s.split(" / ")[0] in modes else 99, s]):
        pts = sorted(series[label].items())
        ax.plot([x for x, _ in pts], [stats.percentile(ys, 50) for _, ys in pts], marker="o", label=label)
    ax.set_xlabel("instances")
    ax.set_ylabel("memory (MiB, median)")
    ax.set_title("Memory against number of instances")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return True


def merge_order(orders: Sequence[Sequence[str]]) -> list[str]:
    """One order of phase names that keeps each record's own order where they agree: a name not
    seen yet goes before the next known name that follows it in its record (cold: spawn, init,
    request and restore: restore, ready, request give spawn, init, restore, ready, request)."""
    out: list[str] = []
    for order in orders:
        for i, name in enumerate(order):
            if name in out:
                continue
            after = next((n for n in order[i + 1:] if n in out), None)
            out.insert(out.index(after) if after is not None else len(out), name)
    return out


def startup_breakdown(data: RecordData, modes: Sequence[str], workloads: Sequence[str], out: Path) -> bool:
    bars: list[tuple[str, dict[str, float]]] = []
    orders: dict[tuple[str, ...], None] = {}
    for mode in modes:
        for wl in workloads:
            per_phase: dict[str, list[float]] = defaultdict(list)
            for r in data.invocations.get((mode, wl), []):
                phases = r.get("phases")
                if not r.get("ok") or not isinstance(phases, dict):
                    continue
                total = 0.0
                for k, v in phases.items():
                    if (x := _number(v)) is not None:
                        per_phase[k].append(x)
                        total += x
                orders[tuple(k for k, v in phases.items() if _number(v) is not None)] = None
                m = r.get("metrics") or {}
                if (fn := _number(m.get("function_ms"))) is not None:
                    per_phase["other on node"].append(max(0.0, fn - total))
                if (tr := _number(m.get("transport_ms"))) is not None:
                    per_phase["transport"].append(max(0.0, tr))  # clocks apart: never below 0
            if per_phase:
                bars.append((f"{mode}\n{wl}", {k: stats.percentile(v, 50) for k, v in per_phase.items()}))
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(bars) + 2), 4.4))
    bottoms = [0.0] * len(bars)
    parts = [p for p in (*merge_order(list(orders)), "other on node", "transport") if any(p in b[1] for b in bars)]
    cmap = plt.get_cmap("tab10" if len(parts) <= 10 else "tab20")  # a colour per part
    for i, phase in enumerate(parts):
        heights = [b[1].get(phase, 0.0) for b in bars]
        ax.bar(range(len(bars)), heights, bottom=bottoms, label=phase, color=cmap(i % cmap.N))
        bottoms = [a + h for a, h in zip(bottoms, heights, strict=True)]
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("median time (ms)")
    ax.set_title("Startup breakdown")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return True


def render(records: Sequence[dict[str, Any]], modes: Sequence[str], workloads: Sequence[str], out_dir: Path) -> list[str]:
    """Write the plots the data supports; returns their file names."""
    data = RecordData(records)
    made = []
    if latency_cdf(data, modes, workloads, out_dir / "latency_cdf.png"):
        made.append("latency_cdf.png")
    if latency_cdf(data, modes, workloads, out_dir / "e2e_cdf.png", "e2e_ms", "Start to first answer (e2e_ms) CDF per mode"):
        made.append("e2e_cdf.png")
    if memory_instances(data, modes, out_dir / "memory_instances.png"):
        made.append("memory_instances.png")
    if startup_breakdown(data, modes, workloads, out_dir / "startup_breakdown.png"):
        made.append("startup_breakdown.png")
    return made
