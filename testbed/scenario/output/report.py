"""Tables from a results folder: report.md, `testbed report` (rich) and `testbed compare`."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table

# compare lives in compare.py; these names stay reachable as report.compare etc.
from tbproto.jsontypes import Json, JsonObject

from testbed.scenario.output.compare import Difference as Difference
from testbed.scenario.output.compare import compare as compare
from testbed.scenario.output.compare import compare_table as compare_table

STAT_COLUMNS = ("median", "mean", "p50", "p90", "p99", "min", "max")


def _fmt(v: object, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.4g}"
    return str(v)


def _mib(kb: Json) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def _workloads(summary: JsonObject) -> list[str]:
    seen: dict[str, None] = {}
    for mode in summary.get("modes", {}).values():
        for wl in mode.get("workloads", {}):
            seen[wl] = None
    return list(seen)


def metric_rows(summary: JsonObject, workload: str) -> list[list[str]]:
    rows = []
    for mode, entry in summary.get("modes", {}).items():
        w = entry.get("workloads", {}).get(workload)
        if w is None:
            continue
        for metric, st in w.get("metrics", {}).items():
            if not st.get("count"):
                continue
            ci = (w.get("ci") or {}).get(metric) or {}
            head = (w.get("headline") or {}).get(metric) or {}
            cells = []
            for c in STAT_COLUMNS:
                if c in ("median", "p99") and head.get("basis") == "repetitions":
                    # several repetitions: the mean of their own figures, t interval (stats.headline)
                    cells.append(_with_ci(head.get(c), head.get(f"{c}_ci")))
                else:
                    cells.append(_with_ci(st.get(c), ci.get(c)))
            basis = f"{head['n']} reps" if head.get("basis") == "repetitions" else "pooled"
            rows.append([mode, str(w["count"]), str(w["errors"]), metric, *cells, basis])
    return rows


# The executor's overhead; the columns added later go last, so older reports read the same.
EXECUTOR_HEADER = ("invocations", "dispatch median", "transport median", "lateness median", "lateness P99",
                   "transport P99", "host latency median", "node median")
EXECUTOR_KEYS = ("dispatch_ms_median", "transport_ms_median", "lateness_ms_median", "lateness_ms_p99",
                 "transport_ms_p99", "latency_ms_median", "node_ms_median")


def executor_row(ex: JsonObject) -> list[str]:
    return [str(ex.get("invocations", 0)), *(_fmt(ex.get(k), 3) for k in EXECUTOR_KEYS)]


def _with_ci(value: Json, ci: Json) -> str:
    """"median [lo, hi]" when summary.json has the bootstrap interval of that statistic."""
    if isinstance(ci, list) and len(ci) == 2 and value is not None:
        return f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    return _fmt(value)


def repetition_rows(summary: JsonObject, workload: str) -> list[list[str]]:
    """Per mode and metric with more than one repetition: each repetition's median, and the
    spread of the repetitions' medians and P99s (mean +- sd, min to max)."""
    rows = []
    for mode, entry in summary.get("modes", {}).items():
        w = entry.get("workloads", {}).get(workload) or {}
        for metric, r in (w.get("repetitions") or {}).items():
            reps = r.get("reps") or []
            if len(reps) < 2:
                continue
            cells = [mode, metric, str(len(reps)), " / ".join(_fmt(x.get("median")) for x in reps)]
            for name in ("median", "p99"):
                sp = r.get(name) or {}
                cells.append(f"{_fmt(sp.get('mean'))} +- {_fmt(sp.get('sd'))} ({_fmt(sp.get('min'))} to {_fmt(sp.get('max'))})")
            rows.append(cells)
    return rows


REPETITION_HEADER = ("mode", "metric", "repetitions", "median per repetition", "median across repetitions",
                     "p99 across repetitions")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


METRIC_HEADER = ("mode", "n", "errors", "metric", *STAT_COLUMNS, "median/p99 basis")


def _qemu(info: Json) -> str:
    if isinstance(info, dict):
        return f"{info.get('kind', '?')} {info.get('version', '?')}" + (f" (key {info['key']})" if info.get("key") else "")
    return str(info or "?")


def markdown(summary: JsonObject, meta: JsonObject, failures: Sequence[JsonObject],
             plots: Sequence[str]) -> str:
    scn = meta.get("scenario", {})
    tb = meta.get("testbed", {})
    git = meta.get("git", {}) or {}
    out = [f"# Scenario {scn.get('name', '?')}\n"]
    if scn.get("description"):
        out.append(f"{scn['description'].strip()}\n")
    out.append(f"- run: {meta.get('started', '?')} to {meta.get('ended', '?')} "
               f"({_fmt(summary.get('wall_s'), 1)} s), complete: {_fmt(summary.get('complete'))}")
    out.append(f"- testbed: {tb.get('name', '?')}, {len(tb.get('nodes', []))} nodes, accelerator "
               f"{tb.get('accelerator', '?')}, guest kernel {tb.get('kernel', {}).get('release', '?')}")
    out.append(f"- seed {scn.get('seed', '?')}, repetitions {scn.get('repetitions', '?')}, warm-up {scn.get('warmup', '?')}; "
               f"git {str(git.get('commit') or '?')[:12]}{' (dirty)' if git.get('dirty') else ''}; "
               f"QEMU {_qemu(meta.get('qemu'))}; host CPU {(meta.get('host') or {}).get('cpu') or '?'}\n")
    heads = meta.get("cxl_paths") or []
    if heads:
        out.append("- CXL path per head, as QEMU reported it at the start: " + ", ".join(
            f"{h['node']}/{h['mhd']} {h['observed']}{' (FELL BACK from ' + h['configured'] + ')' if h.get('fell_back') else ''}"
            for h in heads) + "\n")
    notes = (meta.get("emulation") or {}).get("distortions") or []
    if notes:
        out.append("## What emulation distorts\n")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    out.append("## Metrics per workload\n")
    out.append("Times in ms; statistics over measured invocations that succeeded (warm-up excluded); "
               "percentiles interpolate linearly between ranks; [lo, hi]: bootstrap 95% confidence interval "
               "(percentile method, 2,000 resamples, fixed seed). With several repetitions (basis \"N reps\"), "
               "median and p99 are the mean of each repetition's own median and P99, with a Student t 95% "
               "interval over repetitions; the other columns pool every invocation.\n")
    for wl in _workloads(summary):
        out.append(f"### {wl}\n")
        out.append(_md_table(METRIC_HEADER, metric_rows(summary, wl)))
        if reps := repetition_rows(summary, wl):
            out.append("Each repetition on its own (the run-to-run spread):\n")
            out.append(_md_table(REPETITION_HEADER, reps))
    out.append("## Memory per mode\n")
    out.append("Used memory (MemTotal - MemAvailable) on the unit's nodes, highest seen during the unit, "
               "summed over nodes; median over units.\n")
    mem_rows = [[mode, _mib(e.get("memory_kb")), _mib(e.get("memory_delta_kb"))]
                for mode, e in summary.get("modes", {}).items()]
    out.append(_md_table(("mode", "memory (MiB)", "increase during unit (MiB)"), mem_rows))
    ex = summary.get("executor", {})
    out.append("## Executor overhead\n")
    out.append(_md_table([f"{c} (ms)" if c != "invocations" else c for c in EXECUTOR_HEADER], [executor_row(ex)]))
    out.append("dispatch: host-side time per invocation outside the remote call; transport: the remote call's "
               "wall time minus the time the node measured itself (the agent's own time for the op when its "
               "reply carries it, else the timer around the function): SSH, process start, the agent's "
               "framing; host latency: the remote call's wall time seen from the host (latency_ms) and node: "
               "the node's own time, both over the invocations with a transport figure.\n")
    if summary.get("assertions"):
        out.append("## Assertions\n")
        out.append(_md_table(("assertion", "result", "detail"),
                             [[a["text"], "pass" if a["ok"] else "FAIL", "; ".join(a.get("failed", [])) or a.get("detail", "")]
                              for a in summary["assertions"]]))
    if failures:
        out.append("## Failures\n")
        out.append(_md_table(("phase", "where", "error"),
                             [[f.get("phase", "?"), f.get("where", ""), str(f.get("error", "")).splitlines()[0][:200]]
                              for f in failures]))
    if plots:
        out.append("## Plots\n")
        out += [f"![{p}]({p})\n" for p in plots]
    return "\n".join(out)


def tables(summary: JsonObject, title: str = "") -> list[Table]:
    out = []
    for wl in _workloads(summary):
        t = Table(title=escape(f"{title}{wl} (ms)"))
        for col in METRIC_HEADER:
            t.add_column(col, justify="left" if col in ("mode", "metric") else "right")
        for row in metric_rows(summary, wl):
            t.add_row(*(escape(c) for c in row))
        out.append(t)
    mem = Table(title=f"{title}memory per mode (MiB)")
    for col in ("mode", "memory", "increase"):
        mem.add_column(col)
    for mode, e in summary.get("modes", {}).items():
        mem.add_row(escape(mode), _mib(e.get("memory_kb")), _mib(e.get("memory_delta_kb")))
    out.append(mem)
    ex = summary.get("executor", {})
    t = Table(title=f"{title}executor overhead per invocation (ms)")
    for col in EXECUTOR_HEADER:
        t.add_column(col, justify="right")
    t.add_row(*executor_row(ex))
    out.append(t)
    if summary.get("assertions"):
        t = Table(title=f"{title}assertions")
        for col in ("assertion", "result", "detail"):
            t.add_column(col)
        for a in summary["assertions"]:
            t.add_row(escape(a["text"]), "[green]pass[/]" if a["ok"] else "[red]FAIL[/]",
                      escape("; ".join(a.get("failed", [])) or a.get("detail", "")))
        out.append(t)
    return out
