"""The shipped bursty trace and its generator: heavy-tailed popularity, bursts, valid CSV."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

from testbed.scenario.spec import arrivals

TRACES = Path(__file__).resolve().parents[2] / "scenarios" / "traces"


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_trace", TRACES / "gen_trace.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_trace"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _dispersion(times: list[float], duration: float) -> float:
    windows = Counter(int(t) for t in times)
    xs = [windows.get(w, 0) for w in range(int(duration))]
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / m


def _check_shape(events: list[tuple[float, str]] | tuple[tuple[float, str], ...], duration: float, functions: int) -> None:
    times = [t for t, _ in events]
    assert times == sorted(times) and 0 <= times[0] and times[-1] < duration
    counts = Counter(f for _, f in events)
    ranked = [c for _, c in counts.most_common()]
    # Heavy-tailed popularity: the top fifth of the functions takes most of the invocations,
    # and the most popular function is called many times as often as the median one.
    top = max(1, functions // 5)
    assert sum(ranked[:top]) / len(events) > 0.45
    assert ranked[0] >= 5 * ranked[len(ranked) // 2]
    # Bursty: counts per second are far more dispersed than a Poisson process's (index 1).
    assert _dispersion(times, duration) > 2.0


def test_shipped_trace_shape() -> None:
    trace = arrivals.load_trace(TRACES / "bursty.csv")
    _check_shape(trace, 120.0, 12)
    assert 150 <= len(trace) <= 400


def test_shipped_trace_is_what_the_generator_makes(tmp_path: Path) -> None:
    gen = _gen()
    p = gen.Params()
    gen.write(gen.generate(p), p, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == (TRACES / "bursty.csv").read_text()


def test_generator_shape_over_seeds() -> None:
    gen = _gen()
    for seed in (1, 2, 3, 4):
        p = gen.Params(seed=seed, duration=600.0)
        events = gen.generate(p)
        _check_shape(events, p.duration, p.functions)
        # The mean rate lies between the calm and the burst rates, near the time-weighted mean.
        expect = (p.calm_rate * p.calm_mean + p.burst_rate * p.burst_mean) / (p.calm_mean + p.burst_mean)
        assert p.calm_rate < len(events) / p.duration < p.burst_rate
        assert math.isclose(len(events) / p.duration, expect, rel_tol=0.5)
    assert gen.generate(gen.Params(seed=5)) == gen.generate(gen.Params(seed=5))


def test_azure_samples_match_their_provenance_note() -> None:
    """The copies are unchanged: their sha256 is the one traces/AZURE.md gives for the source."""
    import hashlib
    import re

    note = (TRACES / "AZURE.md").read_text()
    listed = dict(re.findall(r"^\| (azure20\d\d-sample\.csv) \| [^|]+ \| ([0-9a-f]{64}) \|$", note, re.M))
    assert set(listed) == {"azure2019-sample.csv", "azure2021-sample.csv"}
    for name, digest in listed.items():
        assert hashlib.sha256((TRACES / name).read_bytes()).hexdigest() == digest, name


def test_a_drawn_trace_follows_the_scenario_seed(tmp_path: Path) -> None:
    # Azure 2019 counts are spread over each minute from the scenario's seed: another seed,
    # other times; the same seed, the same times.
    import shutil

    from testbed.scenario.spec import schema

    (tmp_path / "traces").mkdir()
    shutil.copy(TRACES / "azure2019-sample.csv", tmp_path / "traces")
    text = (TRACES.parent / "azure-replay.yaml").read_text()
    text = text.replace("traces/azure2021-sample.csv", "traces/azure2019-sample.csv")
    text = text.replace("../testbeds/", f"{TRACES.parent.parent / 'testbeds'}/")

    def times(seed: int) -> list[float]:
        f = tmp_path / f"s{seed}.yaml"
        f.write_text(text.replace("seed: 7", f"seed: {seed}"))
        scn = schema.load(f)
        return [t for t, _ in scn.workloads[0].arrival.trace]

    assert times(7) == times(7) and times(7) != times(8)
