"""`testbed export DIR --format csv|parquet` and export.load(dir) -> pandas DataFrame, on a real
run's records; the analysis extra's absence is one line and exit code 2."""

from __future__ import annotations

import csv
import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from testbed.errors import UserError
from testbed.scenario.output import export, results, stats
from testbed.ui import cli

DATA = Path(__file__).parent / "data" / "trace-replay-invocations.jsonl"


def need(module: str) -> ModuleType:
    """The analysis extra: skip without it, but only outside CI (there it must be installed)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{module} not installed (pip install '{export.EXTRA}')")


def real_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text().splitlines()]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    recs = [{"type": "setup", "step": "s", "ok": True}, *real_records(),
            {"type": "unit", "mode": "trenv", "workload": "bursty", "rep": 0, "status": "done"}]
    (tmp_path / results.RAW).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return tmp_path


def test_rows_one_per_invocation() -> None:
    table = export.rows([{"type": "setup"}, *real_records()])
    assert len(table) == 144
    first = table[0]
    assert (first["mode"], first["workload"], first["rep"], first["seq"], first["function"]) == ("trenv", "bursty", 0, 1, "fn01")
    assert first["param_restore"] == "template" and first["param_sandbox"] == "pool"
    assert first["latency_ms"] == pytest.approx(3116.8265369997243)
    cols = export.columns(table)
    assert cols[:len(export.IDENTITY)] == list(export.IDENTITY)
    assert cols.index("param_restore") < cols.index("latency_ms")


def test_odd_values_and_mixed_columns() -> None:
    table = export.rows([
        {"type": "invocation", "mode": "a", "params": {"k": 1}, "metrics": {"x": float("nan"), "mode": 9.0, "y": [1]}},
        {"type": "invocation", "mode": "b", "params": {"k": "big"}, "metrics": {"x": 2}},
        {"type": "invocation", "mode": "c", "params": "not a dict", "metrics": None}])
    assert table[0]["mode"] == "a" and table[0]["x"] is None and table[0]["y"] == "[1]"  # a metric named mode is ignored
    full = export.uniform(table, export.columns(table))
    assert [r["param_k"] for r in full] == ["1", "big", None]  # text and numbers: text
    assert [r["x"] for r in full] == [None, 2, None]


def test_export_csv(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", str(run_dir)], ops=cli.Ops()) == 0
    assert "144 invocations" in capsys.readouterr().out
    with open(run_dir / "invocations.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == 144 and got[0]["mode"] == "trenv" and got[0]["param_restore"] == "template"
    lat = sorted(float(r["latency_ms"]) for r in got if r["mode"] == "criu-fresh")
    data = results.RecordData(real_records())
    assert lat == pytest.approx(sorted(data.values("criu-fresh", "bursty", "latency_ms")))
    out = run_dir / "elsewhere.csv"
    assert cli.main(["export", str(run_dir), "--out", str(out)], ops=cli.Ops()) == 0 and out.exists()


def test_export_of_a_folder_without_raw_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", str(tmp_path)], ops=cli.Ops()) == 2
    assert "raw.jsonl: missing" in capsys.readouterr().err


def test_load_and_parquet(run_dir: Path) -> None:
    need("pandas")
    pq = need("pyarrow.parquet")
    df = export.load(run_dir)
    assert df.shape[0] == 144 and list(df.columns[:len(export.IDENTITY)]) == list(export.IDENTITY)
    med = df[df["mode"] == "trenv"]["latency_ms"].median()
    data = results.RecordData(real_records())
    assert med == pytest.approx(stats.percentile(data.values("trenv", "bursty", "latency_ms"), 50))
    assert cli.main(["export", str(run_dir), "--format", "parquet"], ops=cli.Ops()) == 0
    table = pq.read_table(run_dir / "invocations.parquet")
    assert table.num_rows == 144 and table.column("param_restore").to_pylist()[0] == "template"
    assert table.column("latency_ms").to_pylist() == pytest.approx(df["latency_ms"].tolist())


def test_missing_extra_is_one_line(run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    real_import = importlib.import_module

    def no_analysis(name: str, package: str | None = None) -> ModuleType:
        if name.split(".")[0] in ("pandas", "pyarrow"):
            raise ImportError(name)
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", no_analysis)
    assert cli.main(["export", str(run_dir), "--format", "parquet"], ops=cli.Ops()) == 2
    err = capsys.readouterr().err
    assert "pyarrow is not installed" in err and "pip install 'cxl-testbed[analysis]'" in err
    assert len(err.strip().splitlines()) == 1 and not (run_dir / "invocations.parquet").exists()
    with pytest.raises(UserError, match=r"pandas is not installed.*cxl-testbed\[analysis\]"):
        export.load(run_dir)
    assert cli.main(["export", str(run_dir)], ops=cli.Ops()) == 0  # CSV needs no extra
