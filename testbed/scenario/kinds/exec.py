"""The `exec` kind: run an argv on the node through the Node interface, under the timer; the
result is the JSON object on stdout's last line, if any."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from testbed.access.node import Node
from testbed.config.yamlfile import Document, KeyPath, Yaml, from_mapping
from testbed.scenario.kinds.base import Kind, Outcome, parse_result, run_argv, substitute, tail, template_strings


class ResultFormat(StrEnum):
    AUTO = "auto"  # the last stdout line, if it is a JSON object
    JSON = "json"  # the last stdout line must be a JSON object, else the invocation failed
    NONE = "none"


@dataclass(frozen=True)
class ExecSpec:
    argv: tuple[str, ...]
    prepare: tuple[str, ...] | None = None  # once per unit on the create_on node
    result: ResultFormat = ResultFormat.AUTO


class ExecKind(Kind[ExecSpec, Node]):
    """Run an argv on the node; the result is the JSON object on stdout's last line, if any."""

    name = "exec"
    spec_type = ExecSpec

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Yaml]) -> ExecSpec:
        spec: ExecSpec = from_mapping(doc, ExecSpec, raw, kp)
        if not spec.argv:
            raise doc.error((*kp, "argv"), "needs at least the program to run")
        if spec.prepare is not None and not spec.prepare:
            raise doc.error((*kp, "prepare"), "needs at least the program to run (or leave prepare out)")
        return spec

    def templates(self, spec: ExecSpec) -> Iterator[tuple[KeyPath, str]]:
        yield from template_strings(list(spec.argv), ("argv",))
        if spec.prepare:
            yield from template_strings(list(spec.prepare), ("prepare",))

    def has_prepare(self, spec: ExecSpec) -> bool:
        return spec.prepare is not None

    def prepare(self, session: Node, spec: ExecSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        assert spec.prepare is not None  # has_prepare said so
        return run(session, spec.prepare, values, timeout, ResultFormat.AUTO)

    def invoke(self, session: Node, spec: ExecSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        return run(session, spec.argv, values, timeout, spec.result)


def run(node: Node, argv: tuple[str, ...], values: Mapping[str, object], timeout: float,
        fmt: ResultFormat) -> Outcome:
    r, remote_ms, function_ms, stderr = run_argv(node, [substitute(a, values) for a in argv], timeout)
    result = parse_result(r.stdout) if fmt is not ResultFormat.NONE else None
    ok = r.exit_code == 0
    error = None if ok else f"exit code {r.exit_code}"
    if ok and fmt is ResultFormat.JSON and result is None:
        ok, error = False, "no JSON object on the last line of stdout"
    return Outcome(ok, remote_ms, function_ms, r.exit_code, result, error,
                   None if ok else tail(stderr or r.stdout))
