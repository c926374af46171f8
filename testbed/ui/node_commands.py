"""The verbs that reach into a node of a testbed that is up: exec, ssh, ssh-config and cp."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from testbed.config.topology import NAME_RE, NODE_RE
from testbed.errors import NodeError, TestbedError, UserError, printable

if TYPE_CHECKING:
    from testbed.access.node import ChannelNode
    from testbed.lifecycle.state import State
    from testbed.ui.ops import Ops

STDIN_TIMEOUT = 30.0  # seconds to open the channel of an exec with stdin (the command itself has no limit)


def testbed_name(args: argparse.Namespace, ops: Ops) -> str:
    """The testbed -t names, else the only one up."""
    if getattr(args, "testbed", None):
        if not NAME_RE.match(args.testbed):
            raise UserError(f"invalid testbed name {args.testbed!r}: use [a-z][a-z0-9-]*")
        return str(args.testbed)
    from testbed import paths

    known = ops.known(paths.state_root())
    if len(known) == 1:
        return str(known[0])
    if not known:
        raise UserError("no testbed is up; run `testbed up -f testbeds/two-node.yaml`")
    raise UserError(f"several testbeds are up ({', '.join(known)}); choose one with -t NAME")


def require_node(testbed: str, state: State, node: str, *extra: str) -> None:
    if node not in state.nodes and node not in extra:
        raise UserError(f"testbed {testbed} has no node {node!r} (nodes: {', '.join([*state.nodes, *extra])})")


def _command(args: argparse.Namespace, usage: str) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command and usage:
        raise UserError(f"no command given; usage: {usage}")
    return command


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser("exec", help="run a command on a node, or on all nodes in parallel")
    ex.add_argument("-t", "--testbed", help="testbed name (default: the only one up)")
    ex.add_argument("-n", "--no-stdin", action="store_true", help="do not forward stdin (as ssh -n)")
    ex.add_argument("node", help="node name or 'all'")
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    ssh = sub.add_parser("ssh", help="an SSH session on a node, or one command (ssh NODE -- CMD)")
    ssh.add_argument("-t", "--testbed")
    ssh.add_argument("node")
    ssh.add_argument("command", nargs=argparse.REMAINDER, help="[-- COMMAND [ARGS...]]")
    cfg = sub.add_parser("ssh-config", help="an OpenSSH config for the nodes (ssh/scp/rsync -F FILE)")
    cfg.add_argument("-t", "--testbed")
    cp = sub.add_parser("cp", help="copy a file to or from a node: cp SRC NODE:PATH or cp NODE:PATH DST")
    cp.add_argument("-t", "--testbed")
    cp.add_argument("src")
    cp.add_argument("dst")


@dataclass(frozen=True)
class Outcome:
    """One node's part of an exec: its output, and its exit code or the error that stopped it."""

    node: str
    exit_code: int
    stdout: str
    stderr: str
    error: str = ""


def _read_all(read: Callable[[int], bytes], sink: Callable[[bytes], object] | None) -> bytes:
    chunks = []
    while chunk := read(65536):
        chunks.append(chunk)
        if sink is not None:
            sink(chunk)
    return b"".join(chunks)


def run_with_stdin(node: ChannelNode, argv: list[str], data: bytes,
                   sink: Callable[[bytes], object] | None = None) -> tuple[int, str, str]:
    """argv on the node with data as its stdin: (exit code, stdout, stderr). Writing stdin and
    reading stderr run beside the stdout reader, so a command that answers while it reads
    cannot fill the SSH window and stall both ends."""
    chan = node.open_channel(shlex.join(argv), STDIN_TIMEOUT)
    try:
        chan.settimeout(None)  # the command may run as long as it likes

        def send() -> None:
            chan.sendall(data)
            chan.shutdown_write()

        with ThreadPoolExecutor(max_workers=2) as pool:
            sent = pool.submit(send)
            errors = pool.submit(_read_all, chan.recv_stderr, None)
            stdout = _read_all(chan.recv, sink)
            sent.result()
            stderr = errors.result()
        code = chan.recv_exit_status()
    except (OSError, EOFError) as exc:
        raise NodeError(f"{node.name}: {shlex.join(argv)!r} with stdin: {exc or type(exc).__name__}") from exc
    finally:
        chan.close()
    return code, stdout.decode(errors="replace"), stderr.decode(errors="replace")


def _write_stdout(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def cmd_exec(args: argparse.Namespace, ops: Ops) -> int:
    command = _command(args, "testbed exec NODE|all -- COMMAND")
    name = testbed_name(args, ops)
    data = None if args.no_stdin else ops.read_stdin()
    with ops.attach(name) as tb:
        require_node(name, tb.state, args.node, "all")
        targets = list(tb.state.nodes) if args.node == "all" else [args.node]
        single = len(targets) == 1

        def one(node: str) -> Outcome:
            # A node that cannot be reached or times out must not cost the output of the others.
            try:
                if data is not None:
                    code, stdout, stderr = run_with_stdin(tb.node(node), command, data,
                                                          _write_stdout if single else None)
                    return Outcome(node, code, "" if single else stdout, stderr)
                r = tb.node(node).run(command, check=False, stream=single)
                return Outcome(node, r.exit_code, r.stdout, r.stderr)
            except TestbedError as exc:
                return Outcome(node, exc.exit_code or 1, "", "", printable(str(exc).splitlines()[0] if str(exc) else
                                                                          type(exc).__name__))

        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            results = list(pool.map(one, targets))
    worst = 0
    for r in results:
        if not single:
            for line in r.stdout.splitlines():
                print(f"{r.node} | {line}")
            for line in r.stderr.splitlines():
                print(f"{r.node} ! {line}", file=sys.stderr)
        elif data is not None:
            sys.stderr.write(r.stderr)
    for r in results:
        if r.error:
            print(f"testbed: {r.node}: failed: {r.error}", file=sys.stderr)
        elif r.exit_code != 0:
            print(f"testbed: {r.node}: exit code {r.exit_code}", file=sys.stderr)
        worst = max(worst, r.exit_code)
    return worst


def _ssh_options(key: Path, known_hosts: Path) -> list[str]:
    return ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]


def cmd_ssh(args: argparse.Namespace, ops: Ops) -> int:
    command = _command(args, "")
    if not NODE_RE.match(args.node):
        raise UserError(f"invalid node name {args.node!r}: use [a-z][a-z0-9-]*")
    name = testbed_name(args, ops)
    with ops.attach(name) as tb:
        require_node(name, tb.state, args.node)
        layout = tb.layout
        argv = ["ssh", *_ssh_options(layout.client_key, layout.known_hosts),
                "-p", str(tb.state.nodes[args.node].ssh_port), "--", "root@127.0.0.1"]
    if command:
        # ssh joins its arguments into one shell line: quote them so each reaches the node as one word.
        argv.append(shlex.join(command))
    ops.execv("/usr/bin/ssh", argv)
    return 0


def ssh_config(testbed: str, state: State, key: Path, known_hosts: Path) -> str:
    """An OpenSSH config with a Host per node, named both NODE and TESTBED-NODE."""
    blocks = [f"# testbed {testbed}: ssh -F FILE node0; scp -F FILE x node0:/tmp; rsync -e 'ssh -F FILE'"]
    for node, ns in state.nodes.items():
        blocks.append("\n".join([
            f"Host {testbed}-{node} {node}",
            "  HostName 127.0.0.1",
            f"  Port {ns.ssh_port}",
            "  User root",
            f"  IdentityFile {key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {known_hosts}",
            "  StrictHostKeyChecking yes",
            "  LogLevel ERROR",
        ]))
    return "\n\n".join(blocks) + "\n"


def cmd_ssh_config(args: argparse.Namespace, ops: Ops) -> int:
    name = testbed_name(args, ops)
    with ops.attach(name) as tb:
        text = ssh_config(name, tb.state, tb.layout.client_key, tb.layout.known_hosts)
    sys.stdout.write(text)
    return 0


def _split_remote(spec: str) -> tuple[str, str] | None:
    """NODE:PATH as (node, path); None for a local path (write ./a:b for a local name with a colon)."""
    node, sep, path = spec.partition(":")
    if sep and NODE_RE.match(node) and "/" not in node:
        return node, path
    return None


def cmd_cp(args: argparse.Namespace, ops: Ops) -> int:
    src, dst = _split_remote(args.src), _split_remote(args.dst)
    if (src is None) == (dst is None):
        raise UserError("testbed cp: exactly one of SRC and DST must be NODE:PATH "
                        "(cp FILE node0:/tmp/ or cp node0:/etc/hostname .)")
    name = testbed_name(args, ops)
    with ops.attach(name) as tb:
        if dst is not None:
            node, remote = dst
            require_node(name, tb.state, node)
            local = Path(args.src)
            if not local.is_file():
                raise UserError(f"testbed cp: {local}: no such file")
            if not remote or remote.endswith("/"):  # into a folder (empty: the home folder), as scp does
                remote += local.name
            tb.node(node).put(local.resolve(), remote)
            print(f"{local} -> {node}:{remote}", file=sys.stderr)
        else:
            assert src is not None
            node, remote = src
            require_node(name, tb.state, node)
            if not remote:
                raise UserError("testbed cp: NODE:PATH needs a path")
            local = Path(args.dst)
            if local.is_dir():
                local = local / Path(remote).name
            tb.node(node).get(remote, local.resolve())
            print(f"{node}:{remote} -> {local}", file=sys.stderr)
    return 0
