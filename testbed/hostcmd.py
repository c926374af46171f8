"""The one function that runs host commands: argv list, explicit env, stdin closed."""

from __future__ import annotations

import collections
import logging
import os
import selectors
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from testbed.errors import CommandError, UserError

log = logging.getLogger("testbed")
STREAM_TAIL = 200  # output lines stream() keeps for the error message

# A minimal, explicit environment: commands must not depend on the caller's shell.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
}


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv on the host. Raises CommandError (with the output tail) on failure."""
    args = [str(a) for a in argv]
    full_env = dict(BASE_ENV)
    if env:
        full_env.update(env)
    log.debug("+ %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL if input_bytes is None else None,
            input=input_bytes.decode() if input_bytes is not None else None,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise UserError(
            f"{args[0]}: command not found; run `make deps` (scripts/install-host-deps) to install it"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        out = exc.output if isinstance(exc.output, str) else ""
        raise CommandError(args, -1, f"{out}\n(timed out after {timeout}s)") from exc
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout or "")
    return proc


def stream(
    argv: Sequence[str | Path],
    on_line: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    tick: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run argv like run(), handing each output line to on_line as it comes (long builds show
    progress); tick is called about once a second even when the command is silent. Raises
    CommandError with the output tail on failure or timeout."""
    args = [str(a) for a in argv]
    full_env = dict(BASE_ENV) | dict(env or {})
    log.debug("+ %s", shlex.join(args))
    try:
        proc = subprocess.Popen(args, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except FileNotFoundError as exc:
        raise UserError(f"{args[0]}: command not found; run `make deps` (scripts/install-host-deps) to install it") from exc
    assert proc.stdout is not None
    tail: collections.deque[str] = collections.deque(maxlen=STREAM_TAIL)
    deadline = None if timeout is None else clock() + timeout
    pending = b""
    with proc, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if deadline is not None and clock() > deadline:
                proc.kill()
                raise CommandError(args, -1, "\n".join(tail) + f"\n(timed out after {timeout}s)")
            chunk = os.read(proc.stdout.fileno(), 65536) if sel.select(timeout=1.0) else None
            if chunk == b"":
                break
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    tail.append(line)
                    on_line(line)
            if tick is not None:
                tick()
        if pending:
            tail.append(pending.decode(errors="replace"))
            on_line(tail[-1])
        returncode = proc.wait()
    if returncode != 0:
        raise CommandError(args, returncode, "\n".join(tail))
