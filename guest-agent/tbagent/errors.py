"""The agent's exceptions -> one error code (tbproto.errors), used by `serve` for its error replies
and by every `tbagent` command for its message and exit status."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from tbproto.codec import ProtocolError
from tbproto.errors import ErrorCode, exit_code

from tbagent.snap.instance import InstanceError
from tbagent.store.core import StoreError

# Most specific first: TimeoutError is an OSError, InstanceError a RuntimeError, ProtocolError a
# ValueError. Anything else an op raises (TypeError, KeyError, ...) is a bug: `internal`.
_CODES: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (ProtocolError, ErrorCode.BAD_ARGS),
    (StoreError, ErrorCode.STORE),
    (InstanceError, ErrorCode.INSTANCE),
    (TimeoutError, ErrorCode.TIMEOUT),
    (ValueError, ErrorCode.VALUE),
    (OSError, ErrorCode.OS),
    (RuntimeError, ErrorCode.RUNTIME),
)


def code_of(exc: BaseException) -> ErrorCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return ErrorCode.INTERNAL


def expected(exc: BaseException) -> bool:
    """Whether `exc` is a refusal or failure an op may raise (not a bug)."""
    return code_of(exc) is not ErrorCode.INTERNAL


Command = Callable[[argparse.Namespace], int]


def command(prefix: str | Callable[[argparse.Namespace], str]) -> Callable[[Command], Command]:
    """A command whose expected errors print one line, `tbagent <prefix>: message`, and exit with
    the code's status; bugs still raise with their traceback. `prefix` may be made of the args."""
    def wrap(fn: Command) -> Command:
        @functools.wraps(fn)
        def wrapped(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except Exception as exc:
                if not expected(exc):
                    raise
                what = prefix if isinstance(prefix, str) else prefix(args)
                print(f"tbagent {what}: {exc}", file=sys.stderr)
                return exit_code(code_of(exc))
        return wrapped
    return wrap
