"""A results folder as a table: one row per invocation (warm-up included, see the `warmup`
column), its identity, its parameters and its metrics as columns, for a notebook or a paper.

    testbed export DIR --format csv|parquet [--out FILE]
    >>> from testbed.scenario.output.export import load
    >>> df = load("results/trace-replay-20261129-120000")      # a pandas DataFrame

Columns: mode, workload, base, rep, seq, client, node, function, warmup, ok, error, start_s,
offset_s; then `param_NAME` for each parameter and one column per metric (latency_ms, ...).
CSV needs nothing more; the DataFrame and Parquet need pandas and pyarrow, the `analysis` extra
(pip install 'cxl-testbed[analysis]')."""

from __future__ import annotations

import csv
import importlib
import math
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from tbproto.jsontypes import Json, JsonObject

from testbed.errors import UserError
from testbed.scenario.output import results

if TYPE_CHECKING:
    import pandas as pd

EXTRA = "cxl-testbed[analysis]"
IDENTITY = ("mode", "workload", "base", "rep", "seq", "client", "node", "function", "warmup", "ok", "error",
            "start_s", "offset_s")
PARAM_PREFIX = "param_"


class Format(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


def need(module: str) -> ModuleType:
    """Import a module of the analysis extra, or fail with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{module} is not installed: it comes with the analysis extra, "
                        f"pip install '{EXTRA}'") from None


def _scalar(v: Json) -> Json:
    """A cell: numbers, strings, booleans and None as they are; anything else as JSON-ish text."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return str(v)


def rows(records: Sequence[JsonObject]) -> list[JsonObject]:
    """One flat dict per invocation record, in the order of raw.jsonl."""
    out = []
    for r in records:
        if r.get("type") != "invocation":
            continue
        row = {k: _scalar(r.get(k)) for k in IDENTITY}
        params = r.get("params")
        for k, v in (params.items() if isinstance(params, dict) else ()):
            row[f"{PARAM_PREFIX}{k}"] = _scalar(v)
        metrics = r.get("metrics")
        for k, v in (metrics.items() if isinstance(metrics, dict) else ()):
            if str(k) not in IDENTITY:  # a metric never hides who ran
                row[str(k)] = _scalar(v)
        out.append(row)
    return out


def columns(table: Sequence[JsonObject]) -> list[str]:
    """Identity first, then parameters, then metrics, each in the order first seen."""
    seen: dict[str, None] = dict.fromkeys(IDENTITY)
    params = {k: None for r in table for k in r if k.startswith(PARAM_PREFIX)}
    rest = {k: None for r in table for k in r if k not in seen and k not in params}
    return [*seen, *params, *rest]


def uniform(table: Sequence[JsonObject], cols: Sequence[str]) -> list[JsonObject]:
    """Every row with every column (None where absent); a column that mixes text with numbers
    becomes text throughout, so that Parquet (one type per column) can hold it."""
    full = [{c: r.get(c) for c in cols} for r in table]
    for c in cols:
        kinds = {type(r[c]) for r in full if r[c] is not None}
        if str in kinds and len(kinds) > 1:
            for r in full:
                if r[c] is not None:
                    r[c] = str(r[c])
    return full


def read(folder: Path) -> list[JsonObject]:
    path = Path(folder) / results.RAW
    if not path.exists():
        raise UserError(f"{path}: missing; is {folder} a results folder of `testbed run`?")
    return rows(results.read_raw(path))


def load(folder: str | Path) -> pd.DataFrame:
    """The invocations of a results folder as a pandas DataFrame (one row per invocation)."""
    pandas = need("pandas")
    table = read(Path(folder))
    cols = columns(table)
    frame: pd.DataFrame = pandas.DataFrame(uniform(table, cols), columns=cols)
    return frame


def write_csv(table: Sequence[JsonObject], out: Path) -> None:
    cols = columns(table)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in uniform(table, cols):
            w.writerow({k: "" if v is None else v for k, v in r.items()})


def write_parquet(table: Sequence[JsonObject], out: Path) -> None:
    pa = need("pyarrow")
    pq = need("pyarrow.parquet")
    cols = columns(table)
    full = uniform(table, cols)
    arrays = [pa.array([r[c] for r in full]) for c in cols]
    pq.write_table(pa.Table.from_arrays(arrays, names=cols), str(out))


def export(folder: Path, fmt: Format, out: Path | None = None) -> tuple[Path, int]:
    """Write DIR/invocations.FORMAT (or out); returns the file and the number of rows."""
    target = out or Path(folder) / f"invocations.{fmt.value}"
    if fmt is Format.PARQUET:  # fail on the missing extra before reading anything
        need("pyarrow")
    table = read(folder)
    if fmt is Format.CSV:
        write_csv(table, target)
    else:
        write_parquet(table, target)
    return target, len(table)
