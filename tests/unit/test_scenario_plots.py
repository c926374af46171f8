"""Plots: PNG, PDF and SVG; one colour per mode in every figure; error bars; a log axis for a
geometric sweep; `testbed report DIR --plots` re-draws them from raw.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from testbed.scenario.output import plots, results
from testbed.ui import cli

DATA = Path(__file__).parent / "data" / "trace-replay-invocations.jsonl"
MODES = ["trenv", "criu-fresh"]


def real_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text().splitlines()]


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plot functions would save, kept open to inspect."""
    kept: list[Figure] = []
    monkeypatch.setattr(plots, "save", lambda fig, out: kept.append(fig))
    return kept


def test_mode_colours_depend_on_names_not_order() -> None:
    a = plots.mode_colours(["trenv", "criu-fresh", "cold"])
    assert a == plots.mode_colours(["cold", "criu-fresh", "trenv"])
    assert len(set(a.values())) == 3 and set(a.values()) <= set(plots.PALETTE)
    # more modes than colours: each of the palette once, the rest grey
    many = plots.mode_colours([f"m{i}" for i in range(len(plots.PALETTE) + 2)])
    assert sorted(c for c in many.values() if c != plots.OTHER) == sorted(plots.PALETTE)
    assert list(many.values()).count(plots.OTHER) == 2


@pytest.mark.parametrize(("xs", "expected"), [
    ([1, 4, 16, 32], True), ([1, 2, 4, 8, 16], True), ([32, 1, 16, 4, 4], True),
    ([1, 2, 3, 4], False), ([10, 20, 30], False), ([1, 32], False), ([0, 4, 16], False), ([2, 3, 5], False),
])
def test_geometric_sweeps(xs: list[float], expected: bool) -> None:
    assert plots.geometric(xs) is expected


def test_cdf_lines_take_the_mode_colour_in_any_order(figures: list[Figure]) -> None:
    data = results.RecordData(real_records())
    colours = plots.mode_colours(MODES)
    for order in (MODES, MODES[::-1]):
        assert plots.latency_cdf(data, order, ["bursty"], Path("unused.png"))
    for fig in figures:
        lines = fig.axes[0].get_lines()
        assert {str(ln.get_label()).split(" ")[0]: ln.get_color() for ln in lines} == colours


def test_memory_sweep_has_error_bars_and_a_log_axis(figures: list[Figure]) -> None:
    recs: list[dict[str, Any]] = []
    for mode, per in (("trenv", 1.0), ("criu-fresh", 6.0)):
        for n in (1, 4, 16, 32):
            for j in range(5):
                recs.append({"type": "invocation", "mode": mode, "workload": f"w[instances={n}]", "base": "w", "rep": 0, "ok": True,
                             "warmup": False, "metrics": {"instances": n, "memory_kb": 1024.0 * per * n + 100 * j}})
    assert plots.memory_instances(results.RecordData(recs), MODES, Path("unused.png"))
    ax = figures[0].axes[0]
    assert ax.get_xscale() == "log"
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    colours = plots.mode_colours(MODES)
    assert {str(c.get_label()).split(" ")[0]: c.lines[0].get_color() for c in bars} == colours
    # a linear sweep stays linear
    step = {1: 10, 4: 20, 16: 30, 32: 40}
    lin = [dict(r, metrics={"instances": step[int(r["metrics"]["instances"])], "memory_kb": 1.0}) for r in recs]
    plots.memory_instances(results.RecordData(lin), MODES, Path("unused.png"))
    assert figures[1].axes[0].get_xscale() == "linear"


def test_breakdown_has_error_bars(figures: list[Figure]) -> None:
    recs = [{"type": "invocation", "mode": m, "workload": "w", "rep": 0, "ok": True, "warmup": False,
             "phases": {"restore_ms": 10.0 + i, "ready_ms": 2.0}, "metrics": {"function_ms": 15.0 + i, "transport_ms": 1.0}}
            for m in MODES for i in range(6)]
    assert plots.startup_breakdown(results.RecordData(recs), MODES, ["w"], Path("unused.png"))
    errs = [c for c in figures[0].axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(errs) == 4  # restore, ready, other on node, transport


MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}


def test_report_plots_redraws_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = real_records()
    (tmp_path / results.RAW).write_text("".join(json.dumps(r) + "\n" for r in recs))
    results.write_json(tmp_path / results.SUMMARY, results.summarize(recs, MODES, ["bursty"], ["latency_ms"]))
    assert cli.main(["report", str(tmp_path), "--plots"], ops=cli.Ops()) == 0
    assert "latency_cdf.png, e2e_cdf.png" in capsys.readouterr().out
    for name in ("latency_cdf", "e2e_cdf"):
        for fmt, magic in MAGIC.items():
            assert (tmp_path / f"{name}.{fmt}").read_bytes().startswith(magic), (name, fmt)
    assert not (tmp_path / "memory_instances.png").exists()  # no instances field in this run
