"""Typed errors. UserError means bad input: one line, exit code 2, no traceback."""

from __future__ import annotations

MAX_MESSAGE = 400  # characters of a ConfigError's message: it quotes values, which may be huge


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text: str) -> str:
    """text with every non-printable character (NUL, ESC, newline, bidi controls, ...) escaped as
    repr() would, so a hostile name cannot drive the terminal or split an error over lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TestbedError(Exception):
    """Base of every error the toolkit raises on purpose."""

    exit_code = 1


class UserError(TestbedError):
    """Bad input (file, argument, missing tool): the message says what and how to fix it."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid topology or scenario file; carries file, line and field."""

    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        where = f"{printable(path)}:{line}" if line is not None else printable(path)
        shown = shorten(printable(message), MAX_MESSAGE)
        text = f"{where}: {shorten(printable(field), 200)}: {shown}" if field else f"{where}: {shown}"
        super().__init__(text)


class CommandError(TestbedError):
    """A host command failed; carries its argv, exit code and the tail of its output."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"command failed ({returncode}): {' '.join(argv)}\n{tail}")


class NodeError(TestbedError):
    """A command on a node (host or guest) failed or the node could not be reached."""


class Unreachable(NodeError):
    """The node cannot be reached, or the session to it was lost."""


class NodeTimeout(NodeError):
    """A command on the node did not finish within its timeout."""


class CommandFailed(NodeError):
    """A command on the node ran and exited non-zero; carries the exit code and the output tail."""

    def __init__(self, message: str, exit_code: int, output: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during `up`, re-raised once the rollback has run or been cut short.

    A KeyboardInterrupt still, so every handler of interrupts sees it; the CLI reads
    `rolled_back` to say truthfully whether anything may be left, and `left` to say what."""

    def __init__(self, testbed: str, rolled_back: bool, left: tuple[str, ...] = ()) -> None:
        super().__init__(f"testbed {testbed}: interrupted; rollback {'completed' if rolled_back else 'incomplete'}")
        self.testbed = testbed
        self.rolled_back = rolled_back
        self.left = left
