"""Error codes on the wire and the exit codes of tbagent's commands: one table for both.

The agent's `serve` answers an error reply with a code; its command-line front ends (tbagent
store, snap, sandbox, ...) exit with the code's exit status. The host maps codes back to
exceptions (AgentError carries the code)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # The request itself is wrong: the caller's fault, nothing ran.
    BAD_JSON = "bad-json"
    BAD_REQUEST = "bad-request"
    BAD_VERSION = "bad-version"
    UNKNOWN_OP = "unknown-op"
    BAD_ARGS = "bad-args"
    TOO_LARGE = "too-large"
    BUSY = "busy"  # too many requests in flight on the session
    # The op ran and refused or failed. The names are the agent's exception classes, as sent
    # since protocol 1 (recorded transcripts carry them).
    STORE = "StoreError"
    VALUE = "ValueError"
    OS = "OSError"
    INSTANCE = "InstanceError"
    RUNTIME = "RuntimeError"
    TIMEOUT = "TimeoutError"
    # A bug in the agent (an op raised something it should not have).
    INTERNAL = "internal"


# Exit status of a tbagent command that fails with the code: 2 for a refusal (bad input, no such
# template, store full, another pool owns the node), 1 for a failure while it ran, 3 for a bug.
EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.BAD_JSON: 2, ErrorCode.BAD_REQUEST: 2, ErrorCode.BAD_VERSION: 2, ErrorCode.UNKNOWN_OP: 2,
    ErrorCode.BAD_ARGS: 2, ErrorCode.TOO_LARGE: 2, ErrorCode.BUSY: 2,
    ErrorCode.STORE: 2, ErrorCode.VALUE: 2, ErrorCode.OS: 2, ErrorCode.RUNTIME: 2,
    ErrorCode.INSTANCE: 1, ErrorCode.TIMEOUT: 1,
    ErrorCode.INTERNAL: 3,
}


def exit_code(code: ErrorCode) -> int:
    return EXIT_CODES[code]
