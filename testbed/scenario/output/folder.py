"""The results folder's life around a run: made empty or resumed, meta.json's parts, and the
folder taken away again when bad input is found before anything ran."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from tbproto.jsontypes import JsonObject

from testbed.errors import TestbedError, UserError
from testbed.lifecycle.state import State
from testbed.scenario.output import fidelity, results
from testbed.scenario.spec.schema import Scenario

Meta = JsonObject  # meta.json: JSON
CxlPaths = Callable[[State], list[JsonObject]]  # state -> each head's CXL path as QEMU reports it


def prepare(out: Path, resume: bool, scenario_hash: str) -> tuple[set[results.UnitKey], Meta]:
    """The units already complete and the meta to continue (--resume), or an empty new folder."""
    if resume:
        if not (out / results.META).exists():
            raise UserError(f"--resume {out}: no {results.META}; not a results folder of `testbed run`")
        meta: Meta = results.read_json(out / results.META)
        if meta.get("scenario", {}).get("hash") != scenario_hash:
            raise UserError(f"--resume {out}: that run used a different scenario, topology or --set values "
                            f"(hash {meta.get('scenario', {}).get('hash')} != {scenario_hash})")
        done, dropped = results.keep_completed(out / results.RAW)
        meta.setdefault("resumed", []).append({"at": results.now(), "units_done": len(done), "records_dropped": dropped})
        return done, meta
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not empty; choose another folder, or continue that run "
                        f"with --resume {out}")
    out.mkdir(parents=True, exist_ok=True)
    return set(), {"started": results.now()}


def discard_if_unused(out: Path, resume: bool) -> None:
    """Bad input found late (nothing ran): take away what this run made of a new folder."""
    if resume or results.read_raw(out / results.RAW):
        return
    for f in (results.RAW, results.META):
        (out / f).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        out.rmdir()


def scenario_meta(meta: Meta, scn: Scenario, overrides: tuple[str, ...]) -> None:
    meta["scenario"] = {"name": scn.name, "file": scn.source, "description": scn.description, "hash": scn.hash(),
                        "seed": scn.seed, "repetitions": scn.repetitions, "warmup": scn.warmup,
                        "overrides": list(overrides), "modes": [m.name for m in scn.modes],
                        "workloads": [w.name for w in scn.workloads], "resolved": scn.resolved}
    meta["topology"] = {"name": scn.topology.name, "file": scn.topology_file, "text": scn.topology.text}
    meta["seed"] = scn.seed


def testbed_meta(meta: Meta, state: State, created: bool, keep: bool) -> None:
    meta["testbed"] = {"name": state.testbed, "accelerator": state.accel,
                       "kernel": results.kernel_info(dict(state.kernel)), "image": state.image,
                       "nodes": list(state.nodes), "brought_up_by_run": created,
                       "kept": bool(keep or not created), "timings": dict(state.timings)}
    meta["accelerator"] = state.accel
    meta["qemu"] = results.qemu_info(dict(state.qemu or {}))


def fidelity_meta(meta: Meta, state: State, key: str, cxl_paths: CxlPaths) -> JsonObject | None:
    """Read each head's path back from QEMU into meta[key] and state what emulation distorts;
    returns the failure record when the paths could not be read (the run goes on)."""
    failure = None
    try:
        heads = cxl_paths(state)
    except TestbedError as exc:
        heads = []
        failure = {"time": results.now(), "phase": "cxl-paths", "where": "", "type": type(exc).__name__,
                   "error": str(exc)}
    meta[key] = heads
    meta["emulation"] = {"accelerator": state.accel, "distortions": fidelity.distortions(
        state.accel, [*meta.get("cxl_paths", []), *meta.get("cxl_paths_end", [])])}
    return failure
