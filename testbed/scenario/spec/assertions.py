"""Assertions: a small expression language, parsed here (never eval'd), that makes a run fail.

    assertion  := comparison [ "for" scope ]
    comparison := sum ("<" | "<=" | ">" | ">=" | "==" | "!=") sum
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | primary
    primary    := NUMBER | VARIABLE | STAT "(" metric ")" | PAIR "(" sum "," mode "," mode ")" | "(" sum ")"
    scope      := ("mode" | "workload") name ("," name)* [ scope ]

Values are read in a context of one (mode, workload); without a scope an assertion must hold
for every mode and every workload. Mode and workload names may hold hyphens (for workload
dax-read) or be quoted ("instances[instances=2]").

    VARIABLE: count, errors, error_rate, memory (KiB used on the unit's nodes), memory_delta,
              and <stat>_ms, the latency_ms statistic (median_ms, p99_ms, ...)
    STAT:     count, mean, median, min, max, pNN (any percentile 0-100, e.g. p50, p99, p99.9)
    PAIR:     ratio(x, a, b) = x in mode a / x in mode b; diff(x, a, b) = x in a - x in b

    p99_ms < 500 for mode template
    ratio(memory, template, cold) < 0.5
    min(shared) == 1
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from testbed.scenario.output import stats

CMP: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}
STATS = ("count", "mean", "median", "min", "max")
PERCENTILE_RE = re.compile(r"^p([0-9]{1,3}(?:\.[0-9]{1,6})?)\Z")
VARIABLES = ("count", "errors", "error_rate", "memory", "memory_delta")
PAIRS = ("ratio", "diff")
# Parentheses, unary minus and ratio()/diff() nest by recursion: bound it well below Python's limit.
MAX_NESTING = 32
MAX_LENGTH = 1000
_TOKEN_RE = re.compile(r"""\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)
                         |(?P<str>"[^"]*"|'[^']*')|(?P<op><=|>=|==|!=|[<>+\-*/(),]))""", re.VERBOSE | re.ASCII)


class AssertionSyntaxError(ValueError):
    def __init__(self, message: str, column: int) -> None:
        self.column = column
        super().__init__(f"{message} (column {column + 1})")


# --- syntax tree --------------------------------------------------------------------------

@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Var:
    name: str  # a VARIABLE


@dataclass(frozen=True)
class Stat:
    stat: str  # count, mean, median, min, max or pNN
    metric: str


@dataclass(frozen=True)
class Pair:
    fn: str  # ratio or diff
    expr: Expr
    a: str
    b: str


@dataclass(frozen=True)
class Neg:
    expr: Expr


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Expr
    right: Expr


Expr = Num | Var | Stat | Pair | Neg | BinOp


@dataclass(frozen=True)
class Assertion:
    text: str
    left: Expr
    op: str
    right: Expr
    modes: tuple[str, ...] = ()  # empty: every mode
    workloads: tuple[str, ...] = ()  # empty: every workload

    def mode_names(self) -> set[str]:
        """Every mode the assertion names (scope and ratio/diff arguments)."""
        names = set(self.modes)
        for e in (self.left, self.right):
            for node in _walk(e):
                if isinstance(node, Pair):
                    names.update((node.a, node.b))
        return names

    def metrics(self) -> set[str]:
        out = set()
        for e in (self.left, self.right):
            for node in _walk(e):
                if isinstance(node, Stat):
                    out.add(node.metric)
                elif isinstance(node, Var) and node.name.endswith("_ms"):
                    out.add("latency_ms")
        return out


def _walk(e: Expr) -> list[Expr]:
    if isinstance(e, Pair | Neg):
        return [e, *_walk(e.expr)]
    if isinstance(e, BinOp):
        return [e, *_walk(e.left), *_walk(e.right)]
    return [e]


# --- parser -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tok:
    kind: str  # num, name, str, op, end
    text: str
    col: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise AssertionSyntaxError(f"unexpected character {text[col]!r}", col)
        kind = m.lastgroup or "op"
        value = m.group(kind)
        out.append(_Tok(kind, value[1:-1] if kind == "str" else value, m.start(kind)))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


def _stat_name(name: str) -> bool:
    m = PERCENTILE_RE.match(name)
    return name in STATS or (m is not None and float(m.group(1)) <= 100)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def nested(self, col: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise AssertionSyntaxError(f"nested more than {MAX_NESTING} levels deep", col)

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self, kind: str, text: str | None = None) -> _Tok:
        t = self.tok
        if t.kind != kind or (text is not None and t.text != text):
            want = repr(text) if text is not None else {"num": "a number", "name": "a name", "end": "the end"}.get(kind, kind)
            got = repr(t.text) if t.kind != "end" else "the end"
            raise AssertionSyntaxError(f"expected {want}, got {got}", t.col)
        self.i += 1
        return t

    def at(self, kind: str, text: str | None = None) -> bool:
        return self.tok.kind == kind and (text is None or self.tok.text == text)

    def assertion(self) -> Assertion:
        left = self.sum()
        if not (self.tok.kind == "op" and self.tok.text in CMP):
            got = repr(self.tok.text) if self.tok.kind != "end" else "the end"
            raise AssertionSyntaxError(f"expected a comparison (<, <=, >, >=, ==, !=), got {got}", self.tok.col)
        op = self.take("op").text
        right = self.sum()
        modes: list[str] = []
        workloads: list[str] = []
        if self.at("name", "for"):
            self.take("name")
            while not self.at("end"):
                t = self.take("name")
                if t.text not in ("mode", "modes", "workload", "workloads"):
                    raise AssertionSyntaxError(f"expected 'mode' or 'workload' after 'for', got {t.text!r}", t.col)
                target = modes if t.text.startswith("mode") else workloads
                target.append(self.word())
                while self.at("op", ","):
                    self.take("op")
                    target.append(self.word())
        self.take("end")
        return Assertion(self.text, left, op, right, tuple(modes), tuple(workloads))

    def word(self) -> str:
        """A mode or workload name: quoted, or a name whose hyphens touch both sides (a-b)."""
        if self.at("str"):
            return self.take("str").text
        t = self.take("name")
        text, end = t.text, t.col + len(t.text)
        while (self.at("op", "-") and self.tok.col == end and self.toks[self.i + 1].kind in ("name", "num")
               and self.toks[self.i + 1].col == end + 1):
            self.i += 1
            nxt = self.toks[self.i]
            self.i += 1
            text, end = f"{text}-{nxt.text}", nxt.col + len(nxt.text)
        return text

    def sum(self) -> Expr:
        e = self.product()
        while self.at("op", "+") or self.at("op", "-"):
            op = self.take("op").text
            e = BinOp(op, e, self.product())
        return e

    def product(self) -> Expr:
        e = self.unary()
        while self.at("op", "*") or self.at("op", "/"):
            op = self.take("op").text
            e = BinOp(op, e, self.unary())
        return e

    def unary(self) -> Expr:
        self.nested(self.tok.col)
        try:
            if self.at("op", "-"):
                self.take("op")
                return Neg(self.unary())
            return self.primary()
        finally:
            self.depth -= 1

    def primary(self) -> Expr:
        t = self.tok
        if t.kind == "num":
            self.i += 1
            value = float(t.text)
            if not math.isfinite(value):  # 1e999
                raise AssertionSyntaxError(f"number out of range: {t.text[:20]}", t.col)
            return Num(value)
        if self.at("op", "("):
            self.take("op")
            e = self.sum()
            self.take("op", ")")
            return e
        if t.kind != "name":
            got = repr(t.text) if t.kind != "end" else "the end"
            raise AssertionSyntaxError(f"expected a number, a name or '(', got {got}", t.col)
        self.i += 1
        if self.at("op", "("):
            self.take("op")
            if t.text in PAIRS:
                expr = self.sum()
                self.take("op", ",")
                a = self.word()
                self.take("op", ",")
                b = self.word()
                self.take("op", ")")
                return Pair(t.text, expr, a, b)
            if not _stat_name(t.text):
                raise AssertionSyntaxError(f"unknown function {t.text!r} (known: {', '.join(STATS)}, pNN, "
                                           f"{', '.join(PAIRS)})", t.col)
            metric = self.word()
            self.take("op", ")")
            return Stat(t.text, metric)
        if t.text in VARIABLES:
            return Var(t.text)
        if t.text.endswith("_ms") and _stat_name(t.text[:-3]):
            return Stat(t.text[:-3], "latency_ms")
        raise AssertionSyntaxError(
            f"unknown name {t.text!r} (known: {', '.join(VARIABLES)}, <stat>_ms such as p99_ms, or <stat>(metric))", t.col)


def parse(text: str) -> Assertion:
    if not text.strip():
        raise AssertionSyntaxError("empty assertion", 0)
    if len(text) > MAX_LENGTH:
        raise AssertionSyntaxError(f"longer than {MAX_LENGTH} characters", MAX_LENGTH)
    return _Parser(text).assertion()


# --- evaluation ---------------------------------------------------------------------------

class Data(Protocol):
    """What assertions read: per (mode, workload) measurements, warm-up excluded."""

    def values(self, mode: str, workload: str, metric: str) -> Sequence[float]: ...

    def counts(self, mode: str, workload: str) -> tuple[int, int]: ...  # (invocations, errors)

    def memory(self, mode: str, workload: str, delta: bool) -> float | None: ...


class NoData(Exception):
    pass


def _stat(stat: str, values: Sequence[float]) -> float:
    if stat == "count":
        return float(len(values))
    if not values:
        raise NoData("no values")
    if stat == "mean":
        return stats.mean(values)
    if stat == "median":
        return stats.percentile(values, 50)
    if stat == "min":
        return min(values)
    if stat == "max":
        return max(values)
    m = PERCENTILE_RE.match(stat)
    assert m is not None
    return stats.percentile(values, float(m.group(1)))


def evaluate(e: Expr, data: Data, mode: str, workload: str) -> float:
    if isinstance(e, Num):
        return e.value
    if isinstance(e, Neg):
        return -evaluate(e.expr, data, mode, workload)
    if isinstance(e, BinOp):
        a, b = evaluate(e.left, data, mode, workload), evaluate(e.right, data, mode, workload)
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if b == 0:
            raise NoData("division by zero")
        return a / b
    if isinstance(e, Pair):
        a, b = evaluate(e.expr, data, e.a, workload), evaluate(e.expr, data, e.b, workload)
        if e.fn == "diff":
            return a - b
        if b == 0:
            raise NoData(f"ratio: the value in mode {e.b} is 0")
        return a / b
    if isinstance(e, Stat):
        vals = data.values(mode, workload, e.metric)
        if not vals and e.stat != "count":
            raise NoData(f"no {e.metric} values in mode {mode}, workload {workload}")
        return _stat(e.stat, vals)
    n, errors = data.counts(mode, workload)
    if e.name == "count":
        return float(n)
    if e.name == "errors":
        return float(errors)
    if e.name == "error_rate":
        if n == 0:
            raise NoData(f"no invocations in mode {mode}, workload {workload}")
        return errors / n
    mem = data.memory(mode, workload, e.name == "memory_delta")
    if mem is None:
        raise NoData(f"no memory samples in mode {mode}, workload {workload}")
    return mem


def _uses_context_mode(e: Expr) -> bool:
    if isinstance(e, Pair):
        return False
    if isinstance(e, Neg):
        return _uses_context_mode(e.expr)
    if isinstance(e, BinOp):
        return _uses_context_mode(e.left) or _uses_context_mode(e.right)
    return not isinstance(e, Num)


@dataclass(frozen=True)
class Check:
    mode: str | None
    workload: str
    left: float | None
    right: float | None
    ok: bool
    detail: str


def check(a: Assertion, data: Data, modes: Sequence[str], workloads: Sequence[tuple[str, str]]) -> list[Check]:
    """Evaluate over the scope. workloads: (name, base name); a scope names either."""
    in_modes = [m for m in modes if not a.modes or m in a.modes]
    in_work = [w for w, base in workloads if not a.workloads or w in a.workloads or base in a.workloads]
    per_mode = _uses_context_mode(a.left) or _uses_context_mode(a.right)
    results = []
    for mode in in_modes if per_mode else [None]:
        for wl in in_work:
            ctx_mode = mode if mode is not None else (in_modes[0] if in_modes else "")
            try:
                left = evaluate(a.left, data, ctx_mode, wl)
                right = evaluate(a.right, data, ctx_mode, wl)
            except NoData as exc:
                results.append(Check(mode, wl, None, None, False, str(exc)))
                continue
            ok = not (math.isnan(left) or math.isnan(right)) and CMP[a.op](left, right)
            results.append(Check(mode, wl, left, right, ok, f"{left:.6g} {a.op} {right:.6g}"))
    if not results:
        results.append(Check(None, "", None, None, False, "the scope matches no (mode, workload)"))
    return results
