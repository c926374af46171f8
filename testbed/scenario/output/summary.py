"""The end of a run: summary.json with the assertions checked, the plots, failures.json, the
final meta.json and report.md, from what raw.jsonl holds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tbproto.jsontypes import JsonObject

from testbed.scenario.output import plots, report, results
from testbed.scenario.spec.assertions import check
from testbed.scenario.spec.schema import Scenario

Record = JsonObject  # a JSON record of raw.jsonl, summary.json, failures.json


def assertions(scn: Scenario, records: Sequence[Record]) -> list[Record]:
    modes = [m.name for m in scn.modes]
    data = results.RecordData(records)
    out = []
    for a in scn.assertions:
        checks = check(a, data, modes, [(w.name, w.base) for w in scn.workloads])
        failed = [f"{c.mode + ' ' if c.mode else ''}{c.workload}: {c.detail}" for c in checks if not c.ok]
        out.append({"text": a.text, "ok": not failed, "failed": failed,
                    "detail": "; ".join(f"{c.mode + ' ' if c.mode else ''}{c.workload}: {c.detail}"
                                        for c in checks)[:2000]})
    return out


def summarize(scn: Scenario, records: Sequence[Record], failures: Sequence[Record], timings: dict[str, float],
              wall: float) -> Record:
    modes = [m.name for m in scn.modes]
    workloads = [w.name for w in scn.workloads]
    metrics = list(dict.fromkeys([*scn.metrics, *(m for a in scn.assertions for m in sorted(a.metrics()))]))
    summary = results.summarize(records, modes, workloads, metrics)
    total = scn.repetitions * len(modes) * len(workloads)
    n_done = len(results.completed_units(records))
    summary["scenario"] = scn.name
    summary["units"] = {"done": n_done, "total": total}
    summary["complete"] = n_done == total
    summary["wall_s"] = round(wall, 3)
    summary["timings"] = dict(timings)
    summary["assertions"] = assertions(scn, records)
    summary["ok"] = summary["complete"] and not failures and all(a["ok"] for a in summary["assertions"])
    return summary


def write(out: Path, scn: Scenario, meta: Record, failures: list[Record], timings: dict[str, float],
          wall: float) -> Record:
    """Write summary.json, the plots, failures.json (a plot that fails is one more failure),
    meta.json and report.md; returns the summary."""
    records = results.read_raw(out / results.RAW)
    summary = summarize(scn, records, failures, timings, wall)
    results.write_json(out / results.SUMMARY, summary)
    try:
        made = plots.render(records, [m.name for m in scn.modes], [w.name for w in scn.workloads], out)
    except (ValueError, OSError) as exc:
        made = []
        failures.append({"time": results.now(), "phase": "plots", "where": "", "type": type(exc).__name__,
                         "error": str(exc)})
    results.write_json(out / results.FAILURES, failures)
    meta["ended"] = results.now()
    meta["wall_s"] = round(wall, 3)
    meta["timings"] = dict(timings)
    meta.setdefault("scenario", {"name": scn.name, "hash": scn.hash()})
    results.write_json(out / results.META, meta)
    (out / results.REPORT).write_text(report.markdown(summary, meta, failures, made), encoding="utf-8")
    return summary
