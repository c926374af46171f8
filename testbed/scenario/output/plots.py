"""Plots of a run (matplotlib, Agg backend: no display needed), each as PNG (linked from
report.md), PDF and SVG (for a paper). A mode has one colour in every figure (mode_colours: from
its name, not from the order it is drawn in); a statistic carries its bootstrap 95% interval as
an error bar; an x axis whose values grow geometrically (1, 4, 16, 32) is logarithmic.
`testbed report DIR --plots` draws them again from raw.jsonl (redraw).

    latency_cdf.png        latency CDF per mode, one panel per workload (always)
    e2e_cdf.png            the same for `e2e_ms`, when invocations carry it (a start measured on
                           the node: request received -> instance ready -> first answer)
    memory_instances.png   memory against number of instances, when invocations carry an
                           `instances` field (the memory is their `memory_kb`, else the unit's)
    startup_breakdown.png  stacked bars of the median of each phase, when invocations carry a
                           `phases` object of numbers (milliseconds), with the rest of the time
                           measured on the node ("other on node") and the transport on top
    ttft_cdf.png           the same CDF for `ttft_ms` (time to first token), when invocations carry it
    and figures.py's: a metric against a swept parameter, or per mode as bars
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from tbproto.jsontypes import Json, JsonObject

from testbed.scenario.output import figures, results, stats
from testbed.scenario.output.results import RecordData, unit_key

DPI = 110
FORMATS = ("png", "pdf", "svg")
# tab10 without its grey (kept for "other"): colours a mode can get
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
OTHER = "#7f7f7f"


def mode_colours(modes: Sequence[str]) -> dict[str, str]:
    """A colour per mode from a hash of its name, so a mode looks the same in every figure and
    every run whatever the order; two names on one slot: the one first by name keeps it, the
    other takes the next free one."""
    out: dict[str, str] = {}
    used: set[int] = set()
    for mode in sorted(set(modes)):
        slot = int.from_bytes(hashlib.sha256(mode.encode()).digest()[:4], "big") % len(PALETTE)
        for step in range(len(PALETTE)):
            if (slot + step) % len(PALETTE) not in used:
                slot = (slot + step) % len(PALETTE)
                break
        else:  # more modes than colours
            out[mode] = OTHER
            continue
        used.add(slot)
        out[mode] = PALETTE[slot]
    return out


def geometric(xs: Sequence[float]) -> bool:
    """True for a sweep whose values grow by factors (1, 4, 16, 32) rather than steps (10, 20,
    30): at least three distinct positive values spanning a factor of 4 or more, spaced more
    evenly on a log scale than on a linear one."""
    v = sorted(set(xs))
    if len(v) < 3 or v[0] <= 0 or v[-1] / v[0] < 4:
        return False

    def cv(d: Sequence[float]) -> float:
        return float(np.std(d) / np.mean(d))

    return cv(np.diff(np.log(v)).tolist()) < cv(np.diff(v).tolist())


def set_sweep_axis(ax: Axes, xs: Sequence[float]) -> None:
    if geometric(xs):
        ax.set_xscale("log", base=2)
        ticks = sorted(set(xs))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()


def save(fig: Figure, out: Path) -> None:
    """out names the PNG; the PDF and SVG go beside it."""
    for fmt in FORMATS:
        fig.savefig(out.with_suffix(f".{fmt}"), dpi=DPI)
    plt.close(fig)




def latency_cdf(data: RecordData, modes: Sequence[str], workloads: Sequence[str], out: Path,
                metric: str = "latency_ms", title: str = "Latency CDF per mode",
                colours: Mapping[str, str] | None = None) -> bool:
    colours = colours or mode_colours(modes)
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
                ax.step(xs, ys, where="post", label=f"{mode} (n={len(xs)})", color=colours.get(mode, OTHER))
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
    save(fig, out)
    return True


def memory_instances(data: RecordData, modes: Sequence[str], out: Path, colours: Mapping[str, str] | None = None) -> bool:
    colours = colours or mode_colours(modes)
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in data.all_invocations():
        m = r.get("metrics") or {}
        x = stats.number(m.get("instances"))
        if x is None:
            x = stats.number((r.get("params") or {}).get("instances"))
        if x is None or not r.get("ok"):
            continue
        y = stats.number(m.get("memory_kb"))
        if y is None:
            y = data.unit_memory.get(unit_key(r), (None, None))[0]
        if y is not None:
            series[f"{r['mode']} / {r.get('base', r['workload'])}"][x].append(y / 1024)
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "osD^v<>p*h"
    per_mode: dict[str, int] = defaultdict(int)  # workloads of one mode: one colour, other markers
    for label in sorted(series, key=lambda s: [modes.index(s.split(" / ")[0]) if s.split(" / ")[0] in modes else 99, s]):
        pts = sorted(series[label].items())
        mode = label.split(" / ")[0]
        xs = [x for x, _ in pts]
        meds = [stats.percentile(ys, 50) for _, ys in pts]
        errs = [stats.error_bar(ys, m) for (_, ys), m in zip(pts, meds, strict=True)]
        ax.errorbar(xs, meds, yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=3,
                    marker=markers[per_mode[mode] % len(markers)], label=label, color=colours.get(mode, OTHER))
        per_mode[mode] += 1
    set_sweep_axis(ax, [x for pts in series.values() for x in pts])
    ax.set_xlabel("instances")
    ax.set_ylabel("memory (MiB, median, 95% CI)")
    ax.set_title("Memory against number of instances")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, out)
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
    samples: list[dict[str, list[float]]] = []  # per bar, the values behind each median (error bars)
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
                    if (x := stats.number(v)) is not None:
                        per_phase[k].append(x)
                        total += x
                orders[tuple(k for k, v in phases.items() if stats.number(v) is not None)] = None
                m = r.get("metrics") or {}
                if (fn := stats.number(m.get("function_ms"))) is not None:
                    per_phase["other on node"].append(max(0.0, fn - total))
                if (tr := stats.number(m.get("transport_ms"))) is not None:
                    per_phase["transport"].append(max(0.0, tr))  # clocks apart: never below 0
            if per_phase:
                bars.append((f"{mode}\n{wl}", {k: stats.percentile(v, 50) for k, v in per_phase.items()}))
                samples.append(dict(per_phase))
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(bars) + 2), 4.4))
    bottoms = [0.0] * len(bars)
    parts = [p for p in (*merge_order(list(orders)), "other on node", "transport") if any(p in b[1] for b in bars)]
    cmap = plt.get_cmap("tab10" if len(parts) <= 10 else "tab20")  # a colour per part
    for i, phase in enumerate(parts):
        heights = [b[1].get(phase, 0.0) for b in bars]
        ax.bar(range(len(bars)), heights, bottom=bottoms, label=phase, color=cmap(i % cmap.N))
        # each segment's median with its interval, drawn at the segment's top
        errs = [stats.error_bar(smp.get(phase, []), h) for smp, h in zip(samples, heights, strict=True)]
        tops = [a + h if phase in smp else math.nan for a, h, smp in zip(bottoms, heights, samples, strict=True)]
        ax.errorbar(range(len(bars)), tops,  # NaN: no such part in that bar, no error bar
                    yerr=[[e[0] for e in errs], [e[1] for e in errs]], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        bottoms = [a + h for a, h in zip(bottoms, heights, strict=True)]
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("median time (ms), 95% CI of each part")
    ax.set_title("Startup breakdown")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, out)
    return True


def render(records: Sequence[JsonObject], modes: Sequence[str], workloads: Sequence[str], out_dir: Path) -> list[str]:
    """Write the plots the data supports (PNG, PDF and SVG); returns the PNGs' file names."""
    data = RecordData(records)
    colours = mode_colours(modes)
    made = []
    if latency_cdf(data, modes, workloads, out_dir / "latency_cdf.png", colours=colours):
        made.append("latency_cdf.png")
    if latency_cdf(data, modes, workloads, out_dir / "e2e_cdf.png", "e2e_ms", "Start to first answer (e2e_ms) CDF per mode",
                   colours):
        made.append("e2e_cdf.png")
    if memory_instances(data, modes, out_dir / "memory_instances.png", colours):
        made.append("memory_instances.png")
    if startup_breakdown(data, modes, workloads, out_dir / "startup_breakdown.png"):
        made.append("startup_breakdown.png")
    if latency_cdf(data, modes, workloads, out_dir / "ttft_cdf.png", "ttft_ms",
                   "Time to first token (load + first token) CDF per mode", colours):
        made.append("ttft_cdf.png")
    made += figures.render(records, modes, out_dir, colours, save, set_sweep_axis)
    return made


def redraw(folder: Path, summary: Mapping[str, Json]) -> list[str]:
    """The plots of a results folder drawn again from its raw.jsonl (modes and workloads in the
    order of its summary.json)."""
    modes = list(summary.get("modes", {}))
    workloads = list(dict.fromkeys(wl for m in summary.get("modes", {}).values() for wl in m.get("workloads", {})))
    return render(results.read_raw(folder / results.RAW), modes, workloads, folder)
