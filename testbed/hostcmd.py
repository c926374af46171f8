"""The one function that runs host commands: argv list, explicit env, stdin closed."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed.errors import CommandError, UserError

log = logging.getLogger("testbed")

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
