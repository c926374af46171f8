"""Figures a run gets when its invocations carry the figures they plot: one statistic of a metric
against a swept parameter, or per mode as bars. Each is drawn only when the data is there, so a
scenario that measures something else gets none of them. The ServerlessLLM scenarios use them:

    ttft_cdf.png            time to first token (load + first token) CDF per mode (ttft_ms)
    load_instances.png      median load_ms against instances started at once, per mode
    downtime_context.png    median downtime_ms of a live migration against context length
    load_modes.png          median load_ms per mode (placement: locality against random)
    hit_rate_time.png       the KV pool's cumulative hit rate (blocks reused / blocks needed) over
                            the run, per mode, from invocations that carry blocks_hit and blocks
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from tbproto.jsontypes import JsonObject

from testbed.scenario.output import stats
from testbed.scenario.output.results import RecordData


@dataclass(frozen=True)
class SweepFigure:
    file: str
    metric: str
    param: str  # the swept parameter on the x axis (an invocation's params)
    xlabel: str
    ylabel: str
    title: str
    log_y: bool = False


@dataclass(frozen=True)
class BarFigure:
    file: str
    metric: str
    ylabel: str
    title: str


SWEEPS = (
    SweepFigure("load_instances.png", "load_ms", "instances", "instances started at once",
                "load (ms, median, 95% CI)", "Checkpoint load time against concurrent instances"),
    SweepFigure("downtime_context.png", "downtime_ms", "context", "context at the hand-over (tokens)",
                "downtime (ms, median, 95% CI)", "Live migration downtime against context length", log_y=True),
)
BARS = (BarFigure("load_modes.png", "load_ms", "load (ms, median, 95% CI)", "Checkpoint load time per mode"),)
BAR_WHEN_NO_SWEEP = "instances"  # load_modes: only for runs that do not sweep instances (placement)




def sweep_series(data: RecordData, metric: str, param: str) -> dict[str, dict[float, list[float]]]:
    """series -> x -> the metric's values of the invocations that succeeded. A series is a mode,
    and within it each value of any other parameter that varies in that mode (a second sweep,
    e.g. the model size): "cxl-map · model=small". A parameter with one value in a mode (the
    mode's own) does not split it."""
    rows = []
    values: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in data.all_invocations():
        params = r.get("params") or {}
        x = stats.number(params.get(param))
        y = stats.number((r.get("metrics") or {}).get(metric))
        if r.get("ok") and not r.get("warmup") and x is not None and y is not None:
            mode = str(r["mode"])
            rows.append((mode, params, x, y))
            for k, v in params.items():
                values[(mode, k)].add(str(v))
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for mode, params, x, y in rows:
        split = [f"{k}={params[k]}" for k in sorted(params) if k != param and len(values[(mode, k)]) > 1]
        series[" · ".join([mode, *split])][x].append(y)
    return series


def sweep_figure(data: RecordData, modes: Sequence[str], fig_spec: SweepFigure, out: Path,
                 colours: Mapping[str, str], save: Callable[[Figure, Path], None],
                 axis: Callable[[Axes, Sequence[float]], None]) -> bool:
    series = sweep_series(data, fig_spec.metric, fig_spec.param)
    if not any(len(pts) > 1 for pts in series.values()):
        return False  # not swept: nothing to draw a line through
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers, styles = "osD^v", ("-", "--", ":", "-.")
    for mode in modes:
        for i, label in enumerate(sorted(s for s in series if s == mode or s.startswith(f"{mode} · "))):
            pts = sorted(series[label].items())
            xs = [x for x, _ in pts]
            meds = [stats.percentile(ys, 50) for _, ys in pts]
            errs = [stats.error_bar(ys, m) for (_, ys), m in zip(pts, meds, strict=True)]
            ax.errorbar(xs, meds, yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=3,
                        marker=markers[i % len(markers)], linestyle=styles[i % len(styles)], label=label,
                        color=colours.get(mode))
    axis(ax, [x for pts in series.values() for x in pts])
    if fig_spec.log_y:
        ax.set_yscale("log")
    ax.set_xlabel(fig_spec.xlabel)
    ax.set_ylabel(fig_spec.ylabel)
    ax.set_title(fig_spec.title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, out / fig_spec.file)
    return True


def bar_figure(data: RecordData, modes: Sequence[str], fig_spec: BarFigure, out: Path,
               colours: Mapping[str, str], save: Callable[[Figure, Path], None]) -> bool:
    per_mode: dict[str, list[float]] = defaultdict(list)
    for r in data.all_invocations():
        if (r.get("params") or {}).get(BAR_WHEN_NO_SWEEP) is not None:
            return False
        y = stats.number((r.get("metrics") or {}).get(fig_spec.metric))
        if r.get("ok") and not r.get("warmup") and y is not None:
            per_mode[str(r["mode"])].append(y)
    shown = [m for m in modes if per_mode.get(m)]
    if len(shown) < 2:
        return False
    meds = [stats.percentile(per_mode[m], 50) for m in shown]
    errs = [stats.error_bar(per_mode[m], c) for m, c in zip(shown, meds, strict=True)]
    fig, ax = plt.subplots(figsize=(1.4 * len(shown) + 2.4, 4.0))
    ax.bar(shown, meds, yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=4,
           color=[colours.get(m) for m in shown])
    ax.set_ylabel(fig_spec.ylabel)
    ax.set_title(fig_spec.title)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, out / fig_spec.file)
    return True


def hit_rate_figure(data: RecordData, modes: Sequence[str], out: Path, colours: Mapping[str, str],
                    save: Callable[[Figure, Path], None]) -> bool:
    per_mode: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # (start, hit, blocks)
    for r in data.all_invocations():
        m = r.get("metrics") or {}
        start, hit, blocks = stats.number(r.get("start_s")), stats.number(m.get("blocks_hit")), stats.number(m.get("blocks"))
        if r.get("ok") and not r.get("warmup") and start is not None and hit is not None and blocks:
            per_mode[str(r["mode"])].append((start, hit, blocks))
    if not per_mode:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode in [m for m in modes if m in per_mode]:
        pts = sorted(per_mode[mode])
        hits, needed, xs, ys = 0.0, 0.0, [], []
        for start, hit, blocks in pts:
            hits, needed = hits + hit, needed + blocks
            xs.append(start)
            ys.append(hits / needed)
        ax.step(xs, ys, where="post", label=f"{mode} ({hits:.0f}/{needed:.0f})", color=colours.get(mode))
    ax.set_xlabel("request start (s from the unit's start)")
    ax.set_ylabel("cumulative hit rate (blocks reused / needed)")
    ax.set_ylim(0, 1.02)
    ax.set_title("KV pool hit rate over the run")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, out / "hit_rate_time.png")
    return True


def render(records: Sequence[JsonObject], modes: Sequence[str], out: Path, colours: Mapping[str, str],
           save: Callable[[Figure, Path], None], axis: Callable[[Axes, Sequence[float]], None]) -> list[str]:
    data = RecordData(records)
    made = [f.file for f in SWEEPS if sweep_figure(data, modes, f, out, colours, save, axis)]
    made += [f.file for f in BARS if bar_figure(data, modes, f, out, colours, save)]
    if hit_rate_figure(data, modes, out, colours, save):
        made.append("hit_rate_time.png")
    return made
