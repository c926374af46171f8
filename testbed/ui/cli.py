"""The `testbed` command line. Verbs are an enum with a dispatch table; the operations are
injected (main(argv, ops=...)) so unit tests need neither root nor libvirt."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from enum import StrEnum
from pathlib import Path
from re import Pattern
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from testbed import __version__
from testbed.config.topology import NAME_RE
from testbed.errors import Interrupted, TestbedError, UserError, printable, shorten
from testbed.lifecycle import hostsetup, owner
from testbed.lifecycle import state as st
from testbed.ui import node_commands as node_cmds
from testbed.ui.ops import Ops as Ops
from testbed.ui.progress import ERR, PhaseProgress

if TYPE_CHECKING:
    from testbed.lifecycle.testbed import Testbed

log = logging.getLogger("testbed")
out = Console(width=None if sys.stdout.isatty() else 160)
err = ERR


class Verb(StrEnum):
    UP = "up"
    DOWN = "down"
    STATUS = "status"
    EXEC = "exec"
    SSH = "ssh"
    SSH_CONFIG = "ssh-config"
    CP = "cp"
    CONSOLE = "console"
    DOCTOR = "doctor"
    SETUP = "setup"
    DEMO = "demo"
    IMAGE = "image"
    KERNEL = "kernel"
    QEMU = "qemu"
    RUN = "run"
    REPORT = "report"
    COMPARE = "compare"
    VALIDATE = "validate"
    EXPORT = "export"
    COMPLETION = "completion"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="testbed", description="QEMU/libvirt testbeds sharing an emulated CXL multi-headed device")
    p.add_argument("--debug", action="store_true", help="log every host command and show tracebacks")
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    up = sub.add_parser(Verb.UP, help="bring a testbed up (idempotent)")
    up.add_argument("-f", "--file", required=True, type=Path, help="topology YAML")
    up.add_argument("--force", action="store_true", help="as root: act on a testbed another user owns")
    up.add_argument("--keep-on-failure", action="store_true",
                    help="if the up fails, leave the nodes up to look at (logs are kept either way)")
    up.add_argument("--dry-run", action="store_true",
                    help="print the domain XML, QEMU arguments and plan; create nothing")
    comp = sub.add_parser(Verb.COMPLETION, help="print a shell completion script (e.g. >> ~/.bashrc)")
    comp.add_argument("shell", choices=("bash", "zsh"))
    val = sub.add_parser(Verb.VALIDATE, help="check a topology or scenario file (told apart by content)")
    val.add_argument("file", type=Path)
    down = sub.add_parser(Verb.DOWN, help="remove every object of a testbed")
    down.add_argument("name", nargs="?", help="testbed name")
    down.add_argument("-f", "--file", type=Path, help="topology YAML (instead of a name)")
    down.add_argument("--force", action="store_true", help="as root: remove a testbed another user owns")
    status = sub.add_parser(Verb.STATUS, help="testbeds, nodes, CXL devices")
    status.add_argument("name", nargs="?")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    node_cmds.add_arguments(sub)
    con = sub.add_parser(Verb.CONSOLE, help="print a node's serial console log")
    con.add_argument("-t", "--testbed")
    con.add_argument("node")
    con.add_argument("--follow", action="store_true")
    sub.add_parser(Verb.DOCTOR, help="check the host and say how to fix what is missing").add_argument(
        "--json", action="store_true", help="machine-readable output")
    sub.add_parser(Verb.SETUP, help="make the host changes doctor reports (/dev/kvm permissions), saying each")
    demo = sub.add_parser(Verb.DEMO, help="up, prove cross-head sharing, print a summary, down")
    demo.add_argument("-f", "--file", type=Path, help="topology YAML (default: the bundled two-node testbed)")
    demo.add_argument("--keep", action="store_true", help="leave the testbed up")
    img = sub.add_parser(Verb.IMAGE, help="build the guest image (cached by recipe hash)")
    img.add_argument("name", nargs="?", default="bookworm")
    kern = sub.add_parser(Verb.KERNEL, help="build or list guest kernels").add_subparsers(dest="op", required=True)
    kb = kern.add_parser("build", help="build the mm-template kernel (patched, cached by content hash)")
    kb.add_argument("--source", type=Path, help="a local Linux 6.12 tree instead of Debian's linux-source-6.12")
    kb.add_argument("-j", "--jobs", type=int, help="parallel make jobs (default: all CPUs)")
    kb.add_argument("--variant", choices=("default", "debug"), default="default",
                    help="debug: DEBUG_VM and lockdep, for the slow tier (default: default)")
    kern.add_parser("list", help="cached kernels").add_argument("--json", action="store_true", help="machine-readable")
    qemu = sub.add_parser(Verb.QEMU, help="build or list the patched QEMU").add_subparsers(dest="op", required=True)
    qb = qemu.add_parser("build", help="build QEMU with qemu-patches/ (direct-mapped CXL memory; cached by content hash)")
    qb.add_argument("-j", "--jobs", type=int, help="parallel build jobs (default: all CPUs)")
    qemu.add_parser("list", help="cached QEMU builds").add_argument("--json", action="store_true", help="machine-readable")
    from testbed.ui import scenario_commands as scn_cmds

    scn_cmds.add_run_arguments(sub.add_parser(Verb.RUN, help="run a scenario; results, report and plots in a folder"))
    scn_cmds.add_report_arguments(sub.add_parser(Verb.REPORT, help="print the tables of a results folder"))
    scn_cmds.add_compare_arguments(sub.add_parser(Verb.COMPARE, help="compare two results folders, flag regressions"))
    scn_cmds.add_export_arguments(sub.add_parser(Verb.EXPORT, help="a results folder as CSV or Parquet, a row per invocation"))
    return p


def _check_name(name: str, what: str, regex: Pattern[str] = NAME_RE) -> str:
    if not regex.match(name):
        raise UserError(f"invalid {what} name {name!r}: use [a-z][a-z0-9-]*")
    return name


def cmd_up(args: argparse.Namespace, ops: Ops) -> int:
    topo = ops.load_topology(args.file, ops.host_facts())
    if args.dry_run:
        from testbed.ui import dryrun

        sys.stdout.write(dryrun.topology_text(topo, ops.locate_artifacts(topo), ops.native_argv))
        return 0
    t0 = time.monotonic()
    with owner.forcing(args.force), PhaseProgress(topo.name, len(topo.nodes)) as progress, \
            ops.open_testbed(topo, True, progress, args.keep_on_failure) as tb:
        pass  # up, and left up
    if not tb.created:
        out.print(f"testbed {topo.name} is already up")
    else:
        out.print(f"testbed {topo.name} up in {time.monotonic() - t0:.1f}s ({tb.state.accel}, "
                  f"{len(tb.state.nodes)} nodes)")
    for ns in tb.state.nodes.values():
        if ns.gdb_port:
            print(st.gdb_line(ns.name, ns.gdb_port))
    return 0


def cmd_down(args: argparse.Namespace, ops: Ops) -> int:
    if args.file:
        name = ops.load_topology(args.file).name
    elif args.name:
        name = _check_name(args.name, "testbed")
    else:
        raise UserError("testbed down: give a testbed name or -f TOPOLOGY")
    t0 = time.monotonic()
    with owner.forcing(args.force):
        removed = ops.down(name) or []
    out.print(f"testbed {name} down in {time.monotonic() - t0:.1f}s ({len(removed)} objects removed)")
    return 0


def cmd_status(args: argparse.Namespace, ops: Ops) -> int:
    from testbed import paths

    names = [_check_name(args.name, "testbed")] if args.name else ops.known(paths.state_root())
    data = ops.status(names) if names else []
    failed = 1 if any("error" in tb for tb in data) else 0
    if args.json:
        print(json.dumps(data, indent=2))
        return failed
    if not data:
        out.print("no testbeds")
    for tb in data:
        if "error" in tb:  # e.g. a corrupt state file: one plain line (no markup, no wrapping)
            print(f"testbed {tb['testbed']}: {tb['error']}")
            continue
        qemu = tb.get("qemu") or {}
        table = Table(title=f"{tb['testbed']} ({tb['phase']}, {tb['accelerator']}, kernel {tb['kernel'].get('release', '?')}, "
                            f"qemu {qemu.get('kind', '?')} {qemu.get('version', '')})")
        for col in ("node", "state", "ssh", "address", "MHD", "memdev", "serial", "region", "size", "dax", "path"):
            table.add_column(col)
        # The path each head really takes, as QEMU reports it (not as configured).
        observed = {(h["node"], h["mhd"]): h for h in tb.get("cxl_paths", [])}
        for n in tb["nodes"]:
            cxl = n.get("cxl") or [{}]
            for i, dev in enumerate(cxl):
                size = dev.get("size")
                head = observed.get((n["name"], dev.get("mhd", "")))
                path = "" if head is None else (
                    f"{head['observed']} (configured {head['configured']}: FELL BACK)" if head["fell_back"]
                    else head["observed"])
                table.add_row(n["name"] if i == 0 else "", n["state"] if i == 0 else "",
                              f"127.0.0.1:{n['ssh']['port']}" if i == 0 else "", n["address"] if i == 0 else "",
                              dev.get("mhd", ",".join(n["mhds"])), dev.get("memdev", ""), dev.get("serial", ""),
                              dev.get("region", ""), f"{int(size, 16) >> 20} MiB" if size else "",
                              dev.get("path", ""), path)
        out.print(table)
        for n in tb["nodes"]:
            if "gdb" in n:
                print(st.gdb_line(n["name"], n["gdb"]["port"]))
    return failed


def cmd_console(args: argparse.Namespace, ops: Ops) -> int:
    name = node_cmds.testbed_name(args, ops)
    with ops.attach(name) as tb:
        node_cmds.require_node(name, tb.state, args.node)
    path = tb.layout.console(args.node)
    if not path.exists():
        raise UserError(f"{path}: no console log yet")
    with open(path, errors="replace") as fh:
        sys.stdout.write(fh.read())
        try:
            while args.follow:
                chunk = fh.read()
                if chunk:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
                else:
                    ops.sleep(0.5)
        except KeyboardInterrupt:  # how one stops following: nothing was created, nothing to say
            sys.stdout.flush()
    return 0


def cmd_doctor(args: argparse.Namespace, ops: Ops) -> int:
    checks = ops.doctor()
    if args.json:
        print(json.dumps([{"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix} for c in checks], indent=2))
        return 0 if all(c.ok for c in checks) else 1
    for c in checks:
        mark = "[green]ok[/]  " if c.ok else "[red]FAIL[/]"
        out.print(f"{mark} {c.name:10} {c.detail}")
        if not c.ok and c.fix:
            out.print(f"       fix: {c.fix}")
    return 0 if all(c.ok for c in checks) else 1


def cmd_setup(args: argparse.Namespace, ops: Ops) -> int:
    return hostsetup.setup(print)


def cmd_demo(args: argparse.Namespace, ops: Ops) -> int:
    from testbed import paths

    # The bundled default works from any folder and from an installed wheel.
    topo = ops.load_topology(args.file or paths.DATA / "testbeds" / "two-node.yaml", ops.host_facts())
    t0 = time.monotonic()
    tb: Testbed | None = None
    try:
        # Torn down on leaving only if this demo brought it up: a testbed that was already up
        # belongs to whoever started it.
        with ExitStack() as stack:
            with PhaseProgress(topo.name, len(topo.nodes)) as progress:
                tb = stack.enter_context(ops.open_testbed(topo, args.keep, progress))
            t_up = time.monotonic() - t0
            if not tb.created:
                out.print(f"testbed {topo.name} was already up: the demo uses it and leaves it up")
            results = ops.prove_sharing(tb)
            state = tb.state
            table = Table(title=f"cxl-testbed demo: {topo.name} ({state.accel}, kernel {state.kernel['release']})")
            for col in ("MHD", "writer", "offset", "token", "read back by", "host file", "shared"):
                table.add_column(col)
            for r in results:
                table.add_row(r.mhd, r.writer, hex(r.offset), r.token,
                              ", ".join(f"{n}{'=' if v == r.token else '!='}" for n, v in r.readers.items()),
                              "match" if r.host_file == r.token else f"MISMATCH {r.host_file}", "yes" if r.ok else "NO")
            out.print(table)
            out.print(f"up: {t_up:.1f}s; node ready times: " +
                      ", ".join(f"{k.split('.', 1)[1]} {v:.1f}s" for k, v in state.timings.items() if k.startswith("ready.")))
            ok = all(r.ok for r in results)
    finally:
        if tb is not None and tb.down_seconds is not None:
            out.print(f"down: {tb.down_seconds:.1f}s")
    if not ok:
        print("testbed: demo: the heads do not see the same bytes", file=sys.stderr)
    return 0 if ok else 1


def cmd_image(args: argparse.Namespace, ops: Ops) -> int:
    _check_name(args.name, "image")
    with err.status(f"building image {args.name}"):
        img = ops.build_image(args.name)
    out.print(f"image {img.name}: {img.path}")
    return 0


def cmd_kernel(args: argparse.Namespace, ops: Ops) -> int:
    if args.op == "list":
        rows = ops.list_kernels()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        table = Table(title="cached guest kernels")
        for col in ("kind", "release", "key", "build s", "patches", "directory"):
            table.add_column(col)
        for k in rows:
            table.add_row(k.get("kind", "?"), k.get("release", "?"), k.get("key", "-"), str(k.get("build_seconds", "-")),
                          str(len(k.get("patches", {}))), k["dir"])
        out.print(table)
        return 0
    if args.source is not None and not args.source.is_dir():
        raise UserError(f"--source {args.source}: no such directory")
    t0 = time.monotonic()
    with PhaseProgress("kernel", 1) as progress:
        kern = ops.build_kernel(args.source, progress, args.jobs, args.variant == "debug")
    out.print(f"kernel {kern.release}: {kern.directory} ({time.monotonic() - t0:.0f}s)")
    return 0


def cmd_qemu(args: argparse.Namespace, ops: Ops) -> int:
    if args.op == "list":
        if args.json:
            print(json.dumps(ops.list_qemus(), indent=2))
            return 0
        table = Table(title="cached QEMU builds")
        for col in ("kind", "version", "key", "build s", "jobs", "patches", "directory"):
            table.add_column(col)
        for q in ops.list_qemus():
            table.add_row(q.get("kind", "?"), q.get("version", "?"), q.get("key", "-"), str(q.get("build_seconds", "-")),
                          str(q.get("jobs", "-")), str(len(q.get("patches", {}))), q["dir"])
        out.print(table)
        return 0
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1")
    t0 = time.monotonic()
    with PhaseProgress("qemu", 1) as progress:
        emu = ops.build_qemu(progress, args.jobs)
    out.print(f"qemu {emu.version}: {emu.path} ({time.monotonic() - t0:.0f}s)")
    return 0


def cmd_completion(args: argparse.Namespace, ops: Ops) -> int:
    try:
        import shtab
    except ImportError as exc:
        raise UserError("shell completion needs shtab: pip install shtab") from exc
    sys.stdout.write(shtab.complete(_parser(), shell=args.shell))
    return 0


def cmd_validate(args: argparse.Namespace, ops: Ops) -> int:
    from testbed.ui import validate

    print(validate.describe(args.file, ops))
    return 0


def cmd_run(args: argparse.Namespace, ops: Ops) -> int:
    from testbed.ui import scenario_commands as commands

    return commands.cmd_run(args, ops)


def cmd_report(args: argparse.Namespace, ops: Ops) -> int:
    from testbed.ui import scenario_commands as commands

    return commands.cmd_report(args, ops)


def cmd_compare(args: argparse.Namespace, ops: Ops) -> int:
    from testbed.ui import scenario_commands as commands

    return commands.cmd_compare(args, ops)


def cmd_export(args: argparse.Namespace, ops: Ops) -> int:
    from testbed.ui import scenario_commands as commands

    return commands.cmd_export(args, ops)


DISPATCH: dict[Verb, Callable[[argparse.Namespace, Ops], int]] = {
    Verb.UP: cmd_up, Verb.DOWN: cmd_down, Verb.STATUS: cmd_status, Verb.EXEC: node_cmds.cmd_exec,
    Verb.SSH: node_cmds.cmd_ssh, Verb.SSH_CONFIG: node_cmds.cmd_ssh_config, Verb.CP: node_cmds.cmd_cp,
    Verb.CONSOLE: cmd_console, Verb.DOCTOR: cmd_doctor, Verb.SETUP: cmd_setup, Verb.DEMO: cmd_demo,
    Verb.IMAGE: cmd_image, Verb.KERNEL: cmd_kernel, Verb.QEMU: cmd_qemu,
    Verb.RUN: cmd_run, Verb.REPORT: cmd_report, Verb.COMPARE: cmd_compare, Verb.EXPORT: cmd_export,
    Verb.VALIDATE: cmd_validate, Verb.COMPLETION: cmd_completion,
}


def _interrupted_message(exc: Interrupted) -> str:
    if exc.rolled_back:
        return "testbed: interrupted; everything created was rolled back"
    left = "; ".join(exc.left) if exc.left else "objects named after the testbed"
    return (f"testbed: interrupted again during the rollback of testbed {exc.testbed}; these may be left: {left}; "
            f"remove them with `testbed down {exc.testbed}`")


def _notes(exc: BaseException) -> str:
    notes = getattr(exc, "__notes__", None) or []
    return "".join(f"; {note}" for note in notes)


def _sigterm(_signo: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None, ops: Ops | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    # On the progress bars' console: a log line goes above the bars instead of through them.
    handler = RichHandler(console=ERR, show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s",
                        handlers=[handler])  # a no-op where the root logger has handlers (pytest)
    if not args.debug:
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return DISPATCH[Verb(args.verb)](args, ops or Ops())
    except Interrupted as exc:
        print(_interrupted_message(exc), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        # Not inside an `up` transaction: nothing here knows whether anything was rolled back.
        print("testbed: interrupted; `testbed status` shows what is up, `testbed down NAME` removes a testbed",
              file=sys.stderr)
        return 130
    except UserError as exc:
        if args.debug:
            raise
        # One line whatever the input held: newlines, ESC and NUL are shown escaped.
        print(f"testbed: error: {shorten(printable(str(exc) + _notes(exc)), 2000)}", file=sys.stderr)
        return exc.exit_code
    except TestbedError as exc:
        if args.debug:
            raise
        first, _, rest = "\n".join(printable(line) for line in str(exc).split("\n")).partition("\n")
        first += printable(_notes(exc))  # e.g. where a failed up kept its logs: on the one line
        print(f"testbed: error: {first}" + (f"\n{rest}" if rest else "") + "\n(run with --debug for details)",
              file=sys.stderr)
        return exc.exit_code
