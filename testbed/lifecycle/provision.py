"""Bring a testbed up and down through libvirt. Every object is recorded in the state
file before it is created; any failure or Ctrl-C during `up` tears down what was made."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import libvirt

from testbed import paths
from testbed.access import node as remote
from testbed.artifacts import image, kernel, ownkernel, qemu
from testbed.config.topology import Topology
from testbed.errors import Interrupted, NodeError, TestbedError, UserError
from testbed.hostcmd import run
from testbed.lifecycle import accel as accel_mod
from testbed.lifecycle import daemons, locks, names, render
from testbed.lifecycle import state as st

log = logging.getLogger("testbed")
Progress = Callable[[str, str], None]  # (task, message)
BOOT_TIMEOUT = float(os.environ.get("CXLTB_BOOT_TIMEOUT", "240"))


def noprogress(task: str, message: str) -> None:
    log.info("%s: %s", task, message)


def config_hash(topo: Topology) -> str:
    return hashlib.sha256(topo.text.encode()).hexdigest()[:16]


def endpoint(layout: names.Layout, node: st.NodeState) -> remote.SshEndpoint:
    return remote.SshEndpoint("127.0.0.1", node.ssh_port, "root", layout.client_key, layout.known_hosts)


# --- teardown -----------------------------------------------------------------------------

def _destroy_domain(conn: libvirt.virConnect, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    persistent = dom.isPersistent()  # a transient domain is gone once destroyed
    if dom.isActive():
        dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_DEFAULT)
    if persistent:
        dom.undefine()


def _destroy_network(conn: libvirt.virConnect, name: str) -> None:
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError:
        return
    persistent = net.isPersistent()
    if net.isActive():
        net.destroy()
    if persistent:
        net.undefine()


def _remove_file(_conn: libvirt.virConnect, path: str) -> None:
    Path(path).unlink(missing_ok=True)


TEARDOWN: dict[st.Kind, Callable[[libvirt.virConnect, str], None]] = {
    st.Kind.DOMAIN: _destroy_domain,
    st.Kind.NETWORK: _destroy_network,
    st.Kind.FILE: _remove_file,
}


def hugetlbfs_mounts() -> list[Path]:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    return [Path(f.split()[1]) for f in lines if len(f.split()) > 2 and f.split()[2] == "hugetlbfs"]


def _try(fn: Callable[[libvirt.virConnect, str], None], conn: libvirt.virConnect, name: str) -> Exception | None:
    try:
        fn(conn, name)
        return None
    except (libvirt.libvirtError, OSError) as exc:
        return exc


def sweep(conn: libvirt.virConnect, testbed: str) -> list[str]:
    """Remove everything named after the testbed, recorded or not. Returns what was removed."""
    removed: list[str] = []
    layout = names.Layout(testbed)
    state = None
    try:
        state = st.load(layout)
    except st.CorruptState as exc:
        # The one line that reports it; the sweep by name below still finds every object.
        log.warning("%s: corrupt state (%s); removing everything named after testbed %s", exc.path, exc.why, testbed)
    objects = list(reversed(state.objects)) if state else []
    prefix = names.domain_prefix(testbed)
    for dom in conn.listAllDomains():
        if dom.name().startswith(prefix):
            objects.insert(0, {"kind": st.Kind.DOMAIN, "name": dom.name()})
    objects.append({"kind": st.Kind.NETWORK, "name": names.network(testbed)})
    for base in [paths.shm_root(), *hugetlbfs_mounts()]:
        for f in base.glob(f"{prefix}*"):
            objects.append({"kind": st.Kind.FILE, "name": str(f)})
    seen: set[tuple[str, str]] = set()
    errors: list[str] = []
    # Domains first and in parallel: each destroy waits for its QEMU to exit.
    doms = sorted({o["name"] for o in objects if o["kind"] == st.Kind.DOMAIN})
    with ThreadPoolExecutor(max_workers=max(1, len(doms))) as pool:
        for name, failure in zip(doms, pool.map(lambda d: _try(_destroy_domain, conn, d), doms), strict=True):
            seen.add((st.Kind.DOMAIN, name))
            if failure is None:
                removed.append(f"domain {name}")
            else:
                errors.append(f"domain {name}: {failure}")
    for obj in objects:
        key = (obj["kind"], obj["name"])
        if key in seen:
            continue
        seen.add(key)
        try:
            TEARDOWN[st.Kind(obj["kind"])](conn, obj["name"])
            removed.append(f"{obj['kind']} {obj['name']}")
        except (libvirt.libvirtError, OSError) as exc:
            errors.append(f"{obj['kind']} {obj['name']}: {exc}")
    if layout.root.exists():
        shutil.rmtree(layout.root, ignore_errors=True)
        removed.append(f"dir {layout.root}")
    if errors:
        raise TestbedError("teardown incomplete: " + "; ".join(errors))
    return removed


def down(testbed: str) -> list[str]:
    # Locked, so a `down` never removes objects an `up` of the same name is still making.
    with locks.testbed_lock(testbed), daemons.connection() as conn:
        return sweep(conn, testbed)


# --- bring-up -----------------------------------------------------------------------------

class RunLog(logging.Handler):
    """The log of one `up`, kept in memory: progress lines and what the "testbed" logger lets
    through (everything with --debug). Written to the failure folder only if the `up` fails."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def progress(self, report: Progress) -> Progress:
        def recorded(task: str, message: str) -> None:
            self.lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} PROGRESS {task}: {message}")
            report(task, message)
        return recorded


QEMU_LOGS = Path("/var/log/libvirt/qemu")  # libvirt's log of each domain's QEMU (its stderr)


def keep_failure(layout: names.Layout, state: st.State, exc: BaseException, run_log: RunLog | None) -> Path | None:
    """Copy what explains a failed `up` (console logs, QEMU's logs, state.json, the run's log
    with the traceback) to STATE_ROOT/failed/NAME-TIME before the rollback removes it; the
    folder, or None if even that failed (the failure itself matters more)."""
    folder = paths.state_root() / "failed" / f"{state.testbed}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        console_dir = layout.root / "console"
        for log_file in sorted(console_dir.glob("*.log")) if console_dir.is_dir() else []:
            shutil.copyfile(log_file, folder / f"console-{log_file.name}")
        for ns in state.nodes.values():
            qemu_log = QEMU_LOGS / f"{ns.domain}.log"
            with contextlib.suppress(OSError):  # not readable without root, or no domain yet
                shutil.copyfile(qemu_log, folder / f"qemu-{ns.name}.log")
        if layout.state_file.exists():
            shutil.copyfile(layout.state_file, folder / "state.json")
        lines = list(run_log.lines) if run_log is not None else []
        lines += ["", "failure:", *traceback.format_exception(exc)]
        (folder / "run.log").write_text("\n".join(line.rstrip("\n") for line in lines) + "\n")
    except OSError as keep_exc:
        log.warning("could not keep the logs of the failed up in %s: %s", folder, keep_exc)
        return None
    return folder


class Transaction:
    """Records each object before it exists; on failure keeps the logs and tears all of them down."""

    def __init__(self, conn: libvirt.virConnect, layout: names.Layout, state: st.State) -> None:
        self.conn = conn
        self.layout = layout
        self.state = state

    def record(self, kind: st.Kind, name: str) -> None:
        self.state.objects.append({"kind": kind, "name": name})
        st.save(self.layout, self.state)

    def rollback(self) -> None:
        log.warning("rolling back testbed %s", self.state.testbed)
        sweep(self.conn, self.state.testbed)


@contextmanager
def transaction(conn: libvirt.virConnect, layout: names.Layout, state: st.State, *,
                keep_on_failure: bool = False, run_log: RunLog | None = None) -> Iterator[Transaction]:
    """On a failure: the logs are kept (a note on the exception names the folder), then what
    was made is rolled back, unless keep_on_failure (and the failure was not Ctrl-C)."""
    tx = Transaction(conn, layout, state)
    st.save(layout, state)
    try:
        yield tx
    except BaseException as exc:
        folder = keep_failure(layout, state, exc, run_log)
        if folder is not None:
            exc.add_note(f"console logs and the log of the run kept in {folder}/")
        if keep_on_failure and not isinstance(exc, KeyboardInterrupt):
            exc.add_note(f"the nodes were left up (--keep-on-failure): `testbed console -t {state.testbed} NODE`, "
                         f"`testbed ssh -t {state.testbed} NODE`; remove them with `testbed down {state.testbed}`")
            raise
        try:
            tx.rollback()
        except KeyboardInterrupt:
            # A second Ctrl-C cut the rollback short: say what may be left instead of claiming it is gone.
            raise Interrupted(state.testbed, rolled_back=False, left=_may_be_left(layout, state)) from exc
        except TestbedError as rb_exc:
            if isinstance(exc, KeyboardInterrupt):
                log.warning("%s", rb_exc)
                raise Interrupted(state.testbed, rolled_back=False, left=_may_be_left(layout, state)) from rb_exc
            raise
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Interrupted):
            raise Interrupted(state.testbed, rolled_back=True) from exc
        raise


def _may_be_left(layout: names.Layout, state: st.State) -> tuple[str, ...]:
    """What a cut-short rollback may have left: every recorded object, and the state directory."""
    return (*(f"{o['kind']} {o['name']}" for o in reversed(state.objects)), f"dir {layout.root}")


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]


def _chown_qemu(path: Path, mode: int) -> None:
    uid, gid = daemons.qemu_user()
    os.chown(path, uid, gid)
    path.chmod(mode)


def _keygen(path: Path, comment: str) -> str:
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])
    path.chmod(0o600)
    return path.with_suffix(".pub").read_text().strip()


def _create_backing(tx: Transaction, topo: Topology) -> None:
    for mhd in topo.mhds:
        f = names.shm_file(topo.name, mhd)
        tx.record(st.Kind.FILE, str(f))
        with open(f, "xb") as fh:
            fh.truncate(mhd.size)
        _chown_qemu(f, 0o600)


def _prepare_node(tx: Transaction, topo: Topology, node_name: str, base: Path, client_pub: str) -> None:
    layout = tx.layout
    node = topo.node(node_name)
    ndir = layout.node_dir(node.name)
    ndir.mkdir(parents=True)
    _chown_qemu(ndir, 0o700)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", layout.overlay(node.name)])
    layout.seed(node.name, "node.env").write_text(render.node_env(topo, node))
    layout.seed(node.name, "authorized_keys").write_text(client_pub + "\n")
    hostkey = layout.seed(node.name, "ssh_host_ed25519_key")
    host_pub = _keygen(hostkey, f"{topo.name}/{node.name}")
    hostkey.with_suffix(".pub").unlink()
    for seed in render.SEED_FILES:
        _chown_qemu(layout.seed(node.name, seed), 0o600)
    port = tx.state.nodes[node.name].ssh_port
    with open(layout.known_hosts, "a") as fh:
        fh.write(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n")


def _console_tail(layout: names.Layout, node: str, lines: int = 8) -> str:
    try:
        text = layout.console(node).read_text(errors="replace")
    except OSError:
        return "(no console log)"
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())


def wait_ready(conn: libvirt.virConnect, layout: names.Layout, state: st.State, node: str,
               deadline: float) -> float:
    """Poll until the node answers over SSH and its init has finished; returns seconds."""
    t0 = time.monotonic()
    ns = state.nodes[node]
    dom = conn.lookupByName(ns.domain)
    last = ""
    while time.monotonic() < deadline:
        if not dom.isActive():
            raise NodeError(f"{node}: the VM stopped during boot; console: {_console_tail(layout, node)}")
        try:
            left = max(0.2, min(15.0, deadline - time.monotonic()))
            with remote.guest(node, endpoint(layout, ns), timeout=left) as g:
                g.run(["cat", "/run/cxltb/ready"], timeout=left)
                return time.monotonic() - t0
        except NodeError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise NodeError(f"{node}: not ready after {BOOT_TIMEOUT:.0f}s ({last}); console: {_console_tail(layout, node)}")


def _same_running(conn: libvirt.virConnect, state: st.State, topo: Topology) -> bool:
    if state.phase is not st.Phase.UP or state.config_hash != config_hash(topo):
        return False
    for ns in state.nodes.values():
        try:
            if not conn.lookupByName(ns.domain).isActive():
                return False
        except libvirt.libvirtError:
            return False
    return True


def up(topo: Topology, progress: Progress = noprogress, keep_on_failure: bool = False) -> tuple[st.State, bool]:
    """Bring the testbed up. Returns (state, created); created is False if it was already up.
    A failure keeps the logs in a folder its exception's note names, and rolls back unless
    keep_on_failure.

    Holds the testbed's lock throughout: the sweep of leftovers below must never see the
    objects of another `up` of the same name that is still in phase "creating"."""
    run_log = RunLog()
    log.addHandler(run_log)
    try:
        with locks.testbed_lock(topo.name):
            try:
                return _up(topo, run_log.progress(progress), keep_on_failure, run_log)
            except libvirt.libvirtError as exc:
                # E.g. a QEMU that died while booting: the transaction has rolled back by now, so
                # this is one line for the user, not a traceback.
                err = TestbedError(f"testbed {topo.name}: libvirt: {exc}")
                for note in getattr(exc, "__notes__", []):
                    err.add_note(note)
                raise err from exc
    finally:
        log.removeHandler(run_log)


def _up(topo: Topology, progress: Progress, keep_on_failure: bool, run_log: RunLog) -> tuple[st.State, bool]:
    layout = names.Layout(topo.name)
    t_start = time.monotonic()
    with daemons.connection() as conn:
        existing = st.load(layout)
        if existing is not None:
            if _same_running(conn, existing, topo):
                return existing, False
            if existing.phase is st.Phase.UP and existing.config_hash != config_hash(topo):
                raise UserError(f"testbed {topo.name} is up with a different topology "
                                f"({existing.topology_file}); run `testbed down {topo.name}` first")
        # Leftovers of a crashed or half-finished run are cleared before starting again.
        sweep(conn, topo.name)
        progress("kernel", f"kernel {topo.kernel}")
        kern = (ownkernel.resolve(Path(topo.kernel_path), Path(topo.modules) if topo.modules else None)
                if topo.kernel_path else kernel.resolve(topo.kernel))
        progress("qemu", f"qemu {topo.qemu}")
        emu = qemu.resolve(topo.qemu)
        progress("image", f"image {topo.image}")
        base = image.build(topo.image)
        acc = accel_mod.resolve(topo.accelerator, emu.path)
        t_ready = time.monotonic()
        gdb_nodes = [n.name for n in topo.nodes if n.debug is not None]
        ports = _free_ports(len(topo.nodes) + len(gdb_nodes))
        gdb_ports = dict(zip(gdb_nodes, ports[len(topo.nodes):], strict=True))
        state = st.State(topo.name, topo.source, topo.text, config_hash(topo), accel=str(acc),
                         kernel={"kind": str(kern.kind), "release": kern.release, "dir": str(kern.directory)},
                         qemu={"kind": str(emu.kind), "path": str(emu.path), "version": emu.version, "key": emu.key},
                         image=str(base.path))
        for node, port in zip(topo.nodes, ports, strict=False):
            state.nodes[node.name] = st.NodeState(node.name, names.domain(topo.name, node.name), port,
                                                  node.address, [m.name for m in topo.mhds_of(node.name)],
                                                  gdb_ports.get(node.name, 0))
        with transaction(conn, layout, state, keep_on_failure=keep_on_failure, run_log=run_log) as tx:
            layout.root.chmod(0o711)  # QEMU (libvirt-qemu) must traverse to its node dir
            layout.ssh_dir.mkdir(mode=0o700)
            layout.console(topo.nodes[0].name).parent.mkdir()
            client_pub = _keygen(layout.client_key, f"cxl-testbed {topo.name}")
            progress("network", names.network(topo.name))
            tx.record(st.Kind.NETWORK, names.network(topo.name))
            conn.networkCreateXML(render.network_xml(topo.name))
            _create_backing(tx, topo)
            for node in topo.nodes:
                _prepare_node(tx, topo, node.name, base.path, client_pub)
                xml = render.domain_xml(topo, node, accel=acc, kernel=kern, emulator=emu.path,
                                        ssh_port=state.nodes[node.name].ssh_port, layout=layout,
                                        gdb_port=state.nodes[node.name].gdb_port)
                tx.record(st.Kind.DOMAIN, names.domain(topo.name, node.name))
                conn.createXML(xml, 0)
                progress("boot", f"{node.name} started")
            deadline = time.monotonic() + BOOT_TIMEOUT
            with ThreadPoolExecutor(max_workers=len(topo.nodes)) as pool:
                futs = {n.name: pool.submit(wait_ready, conn, layout, state, n.name, deadline) for n in topo.nodes}
                for name, fut in futs.items():
                    state.timings[f"ready.{name}"] = round(fut.result(), 3)
                    progress("ready", f"{name} ready")
            state.timings["up_total"] = round(time.monotonic() - t_start, 3)
            state.timings["boot_to_ssh"] = round(time.monotonic() - t_ready, 3)
            state.phase = st.Phase.UP
            st.save(layout, state)
        return state, True
