"""The closed catalogue of function workloads the agent can run (tbagent/functions/<name>.py).
The host validates function names against it; the agent's registry must hold exactly these (a
unit test checks), and the agent's `catalog` op returns them so a skewed agent is caught at the
start of a session."""

from __future__ import annotations

from enum import StrEnum


class Function(StrEnum):
    HELLO = "hello"
    JSONRT = "jsonrt"
    MATMUL = "matmul"
    DIRTY = "dirty"
    PROBE = "probe"
    CRASH = "crash"
    IMGRESIZE = "imgresize"
    INFERENCE = "inference"
    COMPRESS = "compress"
    HEAP = "heap"
    LLM = "llm"


def names() -> tuple[str, ...]:
    return tuple(sorted(f.value for f in Function))
