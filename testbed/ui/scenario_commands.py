"""The scenario verbs of the CLI: `testbed run`, `testbed report`, `testbed compare`, `testbed export`.
testbed/ui/cli.py parses the arguments and calls these with its (fakeable) Ops. The engine is
imported when a verb runs, so building the parser stays cheap for every other verb."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from testbed.config.topology import Topology
from testbed.errors import UserError
from testbed.ui.ops import Ops, Progress

if TYPE_CHECKING:
    from rich.console import Console

    from testbed.lifecycle.testbed import Testbed
    from testbed.scenario.run.seam import OpenTestbed

log = logging.getLogger("testbed")
NODES_DIR = "nodes"  # in a results folder: NODE/console.log and NODE/dmesg.txt, taken at the end of the run
DMESG_TIMEOUT = 30.0


def capture_nodes(tb: Testbed, out: Path) -> list[str]:
    """Each node's console log and dmesg into out/nodes/NODE/; what could not be taken is
    written in place of it (a dead node must not cost the run's results)."""
    problems = []
    for name in tb.state.nodes:
        folder = out / NODES_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(tb.layout.console(name), folder / "console.log")
        except OSError as exc:
            problems.append(f"{name} console: {exc}")
            (folder / "console.log").write_text(f"(not captured: {exc})\n")
        try:
            r = tb.node(name).run(["dmesg"], check=False, timeout=DMESG_TIMEOUT)
            (folder / "dmesg.txt").write_text(r.stdout if r.ok else f"(dmesg exited {r.exit_code}: {r.stderr})\n")
        except Exception as exc:  # diagnostics taken after the run must never fail the run
            problems.append(f"{name} dmesg: {exc}")
            (folder / "dmesg.txt").write_text(f"(not captured: {exc})\n")
    for p in problems:
        log.warning("results: %s", p)
    return problems


def capturing(ops: Ops, out: Path, keep_on_failure: bool = False) -> OpenTestbed:
    """ops.open_testbed, which also captures the nodes' console logs and dmesg into out before
    leaving (and so before a teardown). keep_on_failure: a failed up leaves its nodes up."""
    @contextlib.contextmanager
    def open_testbed(topology: Topology, keep: bool, progress: Progress | None = None) -> Iterator[Testbed]:
        with ops.open_testbed(topology, keep, progress, keep_on_failure) as tb:
            try:
                yield tb
            finally:
                if out.is_dir():  # a run that failed before making its folder has nothing to add to
                    capture_nodes(tb, out)
    return open_testbed



def _console() -> Console:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", type=Path, help="scenario YAML (e.g. scenarios/smoke.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value: a dotted path, the value read as YAML (repeatable)")
    p.add_argument("--keep", action="store_true", help="leave the testbed up (if the run brought it up)")
    p.add_argument("--keep-on-failure", action="store_true",
                   help="if the up or the run fails, leave the testbed up to look at (Ctrl-C still rolls back)")
    p.add_argument("--out", type=Path, help="results folder (default: results/NAME-TIME)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run in DIR")
    p.add_argument("--dry-run", action="store_true",
                   help="print the testbed's XML, QEMU arguments and plan, and the schedule; run nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (instead of the tables)")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path)
    p.add_argument("--plots", action="store_true", help="re-draw the plots (PNG, PDF, SVG) from raw.jsonl into DIR")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="results folder of `testbed run`")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv", help="file format (default csv)")
    p.add_argument("--out", type=Path, help="file to write (default DIR/invocations.FORMAT)")


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("old", type=Path, help="results folder of the baseline")
    p.add_argument("new", type=Path, help="results folder to check")
    p.add_argument("--threshold", type=float, default=0.10,
                   help="a regression is worse by more than this fraction (default 0.10)")
    p.add_argument("--stat", dest="stats", action="append", choices=["median", "mean", "p50", "p90", "p99", "min", "max"],
                   help="statistics to compare (default: median and p99)")
    p.add_argument("--higher-is-better", dest="higher_better", action="append", default=[], metavar="METRIC",
                   help="a metric for which larger is better (repeatable)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level of the Mann-Whitney U test on raw values (default 0.05)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def cmd_run(args: argparse.Namespace, ops: Ops) -> int:
    from testbed.scenario.output import report
    from testbed.scenario.run.executor import Options, run
    from testbed.scenario.run.seam import Backend
    from testbed.scenario.spec import schema
    from testbed.ui.progress import PhaseProgress

    scn = schema.load(args.scenario, args.overrides)
    if args.dry_run:
        from testbed.ui import dryrun

        sys.stdout.write(dryrun.topology_text(scn.topology, ops.locate_artifacts(scn.topology), ops.native_argv))
        print("\n" + "\n".join(dryrun.schedule_lines(scn)))
        return 0
    if args.resume is not None and args.out is not None and args.out.resolve() != args.resume.resolve():
        raise UserError("--out and --resume name different folders; --resume DIR continues the run in DIR")
    out = args.resume or args.out or Path("results") / f"{scn.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    backend = Backend(open_testbed=capturing(ops, out, args.keep_on_failure), host_facts=ops.host_facts,
                      progress=PhaseProgress, cxl_paths=ops.cxl_paths)
    outcome = run(scn, Options(out, args.keep, args.resume is not None, tuple(args.overrides),
                               keep_on_failure=args.keep_on_failure), backend)
    if args.json:
        import json

        print(json.dumps({"scenario": scn.name, "ok": outcome.ok, "results": str(outcome.out),
                          "summary": outcome.summary, "failures": outcome.failures}, indent=2, default=str))
        return 0 if outcome.ok else 1
    con = _console()
    for table in report.tables(outcome.summary):
        con.print(table)
    for f in outcome.failures:
        if not f.get("after_stop"):
            con.print(f"[red]failed[/] ({f['phase']} {escape(f['where'])}): {escape(f['error'])}")
    s = outcome.summary
    con.print(f"scenario {scn.name}: {'[green]ok[/]' if outcome.ok else '[red]FAILED[/]'}; units {s['units']['done']}/"
              f"{s['units']['total']}; wall {s['wall_s']:.1f}s; results in {outcome.out}")
    return 0 if outcome.ok else 1


def cmd_report(args: argparse.Namespace, ops: Ops) -> int:
    from testbed.scenario.output import report, results

    summary = results.read_json(args.dir / results.SUMMARY)
    con = _console()
    meta_path = args.dir / results.META
    if meta_path.exists():
        meta = results.read_json(meta_path)
        con.print(f"scenario {meta.get('scenario', {}).get('name', '?')} on {meta.get('testbed', {}).get('name', '?')} "
                  f"({meta.get('accelerator', '?')}), {meta.get('started', '?')} to {meta.get('ended', '?')}")
    for table in report.tables(summary):
        con.print(table)
    failures = results.read_json(args.dir / results.FAILURES) if (args.dir / results.FAILURES).exists() else []
    for f in failures:
        con.print(f"[red]failed[/] ({f.get('phase')} {escape(str(f.get('where')))}): {escape(str(f.get('error')))}")
    if getattr(args, "plots", False):
        from testbed.scenario.output import plots

        made = plots.redraw(args.dir, summary)
        con.print(f"plots in {args.dir}: {', '.join(made) if made else 'none (no data a plot can show)'}")
    return 0


def cmd_export(args: argparse.Namespace, ops: Ops) -> int:
    from testbed.scenario.output import export

    path, n = export.export(args.dir, export.Format(args.format), args.out)
    _console().print(f"{n} invocations -> {path}")
    return 0


def cmd_compare(args: argparse.Namespace, ops: Ops) -> int:
    import json

    from testbed.scenario.output import compare, results

    if args.threshold < 0:
        raise UserError(f"--threshold {args.threshold}: must not be negative")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha {args.alpha}: must be between 0 and 1")
    old = results.read_json(args.old / results.SUMMARY)
    new = results.read_json(args.new / results.SUMMARY)
    # The significance test needs the per-invocation values: both folders' raw.jsonl.
    raws = [results.RecordData(results.read_raw(d / results.RAW)) if (d / results.RAW).exists() else None
            for d in (args.old, args.new)]
    diffs = compare.compare(old, new, args.threshold, tuple(args.stats or ("median", "p99")), tuple(args.higher_better),
                            raws[0], raws[1], args.alpha)
    if args.json:
        print(json.dumps(compare.as_json(diffs, str(args.old), str(args.new), args.threshold, args.alpha), indent=2))
        return 1 if any(d.regression for d in diffs) else 0
    con = _console()
    if not diffs:
        con.print("nothing in common to compare (no shared mode and workload)")
        return 0
    con.print(compare.compare_table(diffs, str(args.old), str(args.new)))
    bad = [d for d in diffs if d.regression]
    tested = any(d.p_value is not None for d in diffs)
    sig = f" and significant at alpha {args.alpha:g} (Mann-Whitney U; * = significant)" if tested else \
        " (no raw.jsonl in both folders: no significance test)"
    con.print(f"{len(bad)} regression(s) beyond {args.threshold * 100:.0f}%{sig}" if bad else
              f"no regressions beyond {args.threshold * 100:.0f}%{sig}")
    if noise := sum(1 for d in diffs if d.beyond_threshold and d.significant is False):
        con.print(f"{noise} row(s) worse beyond {args.threshold * 100:.0f}% but not significant: within the runs' noise")
    return 1 if bad else 0
