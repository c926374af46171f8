"""The figures of figures.py, drawn from raw.jsonl files recorded by real ServerlessLLM runs on a
two-node testbed under TCG (the reduced serverlessllm, serverlessllm-migration and serverlessllm-placement scenarios; the
migration run was the one whose kv-net hand-over failed to bind, so that mode has no figures)."""

from __future__ import annotations

from pathlib import Path

from testbed.scenario.output import figures, plots, results
from testbed.scenario.output.results import RecordData

DATA = Path(__file__).parent / "data" / "serverlessllm"
PNG = b"\x89PNG\r\n\x1a\n"


def test_a_loader_run_gets_ttft_cdf_and_load_against_instances(tmp_path: Path) -> None:
    records = results.read_raw(DATA / "load-raw.jsonl")
    made = plots.render(records, ["disk", "cxl-copy", "cxl-map"], ["load[instances=1]", "load[instances=2]"], tmp_path)
    assert "ttft_cdf.png" in made and "load_instances.png" in made
    assert "downtime_context.png" not in made and "load_modes.png" not in made  # nothing migrated; instances swept
    for name in ("ttft_cdf", "load_instances"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG
        assert (tmp_path / f"{name}.pdf").exists() and (tmp_path / f"{name}.svg").exists()
    series = figures.sweep_series(RecordData(records), "load_ms", "instances")
    assert set(series) == {"disk", "cxl-copy", "cxl-map"} and set(series["cxl-map"]) == {1.0, 2.0}
    assert len(series["cxl-map"][1.0]) == 3  # three invocations of one instance each


def test_a_migration_run_gets_downtime_against_context(tmp_path: Path) -> None:
    records = results.read_raw(DATA / "migration-raw.jsonl")
    made = plots.render(records, ["tokens", "kv-net", "kv-cxl"], ["migrate[context=64]", "migrate[context=256]"],
                        tmp_path)
    assert "downtime_context.png" in made and "ttft_cdf.png" not in made
    series = figures.sweep_series(RecordData(records), "downtime_ms", "context")
    assert set(series) == {"tokens", "kv-cxl"}  # kv-net failed in that run: failed invocations are not drawn
    assert set(series["tokens"]) == {64.0, 256.0}
    # what the figure shows: recomputing the cache grows with the context, the CXL hand-over does not
    tokens = {x: sorted(v)[len(v) // 2] for x, v in series["tokens"].items()}
    assert tokens[256.0] > 2 * tokens[64.0]


def test_a_placement_run_gets_load_per_mode(tmp_path: Path) -> None:
    records = results.read_raw(DATA / "placement-raw.jsonl")
    modes = ["disk-locality", "disk-random", "cxl-locality", "cxl-random"]
    made = plots.render(records, modes, ["serve"], tmp_path)
    assert "load_modes.png" in made and "load_instances.png" not in made  # nothing swept
    assert (tmp_path / "load_modes.png").read_bytes()[:8] == PNG
    # what the bars show (recorded on two-node-ssd): placement matters on disk, not in CXL
    data = RecordData(records)
    med = {m: sorted(data.values(m, "serve", "load_ms"))[4] for m in modes}  # 8 invocations each
    assert med["disk-random"] > 1.3 * med["disk-locality"] and med["cxl-random"] < 1.3 * med["cxl-locality"]


def test_a_mooncake_run_gets_hit_rate_over_time(tmp_path: Path) -> None:
    """Recorded from the reduced mooncake scenario on two nodes (9 requests a design)."""
    records = results.read_raw(DATA / "mooncake-raw.jsonl")
    made = plots.render(records, ["colocated", "kv-net", "kv-cxl"], ["serve"], tmp_path)
    assert "hit_rate_time.png" in made and "ttft_cdf.png" in made
    data = RecordData(records)
    hits = sum(data.values("kv-cxl", "serve", "blocks_hit")) / sum(data.values("kv-cxl", "serve", "blocks"))
    assert 0.3 < hits < 0.85  # later turns reuse their conversation's blocks; the first turns cannot
    assert sum(data.values("colocated", "serve", "blocks_hit")) == 0


def test_a_second_sweep_splits_a_modes_line() -> None:
    """The full serverlessllm run sweeps model and instances: one line per mode and model."""
    series = figures.sweep_series(RecordData(results.read_raw(DATA / "load-full-raw.jsonl")), "load_ms", "instances")
    assert set(series) == {f"{m} · model={s}" for m in ("disk", "cxl-copy", "cxl-map") for s in ("ci", "small")}
    assert set(series["cxl-map · model=small"]) == {1.0, 2.0, 4.0}
    assert len(series["cxl-map · model=small"][1.0]) == 4  # 2 invocations on each of the two heads
    disk, mapped = series["disk · model=small"], series["cxl-map · model=small"]
    assert sorted(mapped[1.0])[2] < 0.5 * sorted(disk[1.0])[2]  # what the figure shows
