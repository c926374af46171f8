"""The agent's model.* and llm.* ops: what `tbagent serve` answers for ServerlessLLM scenarios.

llm.run starts each instance as its own process (`python3 -m tbagent.cli llm run`), all at once, so
each has its own memory (PSS in local DRAM against what it maps from CXL) and the instances
contend for the node as concurrent cold starts do. A disk run drops the page cache once, before
the instances start: they then all read the file cold at the same time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from tbagent.dax import device_path
from tbagent.llm import instance, loaders, migrate, modelstore, safetensors
from tbagent.llm.loaders import Drop, Loader
from tbagent.store import StoreError
from tbagent.store.cli import head_of, open_store

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

MAX_INSTANCES = 64
INSTANCE_TIMEOUT = 1800.0  # seconds; a base-size model under TCG loads and decodes slowly
KIB = 1024


def op_put(mhd: str, name: str, preset: str, dtype: str = "float32", seed: int = 0) -> JsonObject:
    """Publish a preset's checkpoint once; a model of that name already in the store is kept."""
    with open_store(mhd) as st:
        try:
            rec = modelstore.find(st, name)
            existed, seconds = True, 0.0
        except StoreError:
            config, tensors = instance.preset_model(preset, seed, dtype)
            t0 = time.perf_counter()
            rec = modelstore.put(st, name, config, tensors)
            existed, seconds = False, time.perf_counter() - t0
    s = modelstore.summary(rec)
    return {"name": name, "bytes": s["bytes"], "tensors": s["tensors"], "params": s["params"],
            "put_s": seconds, "existed": existed}


def op_list(mhd: str) -> list[JsonObject]:
    with open_store(mhd) as st:
        return [{"name": s["name"], "bytes": s["bytes"], "tensors": s["tensors"], "params": s["params"],
                 "config": s["config"]} for s in map(modelstore.summary, modelstore.models(st))]


def op_disk(mhd: str, name: str) -> JsonObject:
    """The node's local safetensors copy of a model of the store (the disk loader reads it)."""
    path = loaders.disk_path(name)
    if path.exists():
        return {"path": str(path), "bytes": path.stat().st_size, "write_s": 0.0, "existed": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    weights, _ = loaders.load(Loader.CXL_COPY, name, device=device_path(mhd), head=head_of(mhd)[0])
    try:
        t0 = time.perf_counter()
        size = safetensors.write(str(path), weights.config, weights.tensors)
        with open(path, "rb") as fh:  # on disk, not only in the page cache: the baseline reads a disk
            os.fsync(fh.fileno())
        seconds = time.perf_counter() - t0
    finally:
        weights.close()
    return {"path": str(path), "bytes": size, "write_s": seconds, "existed": False}


def _instance(argv: list[str]) -> JsonObject:
    loader = argv[argv.index("--loader") + 1]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=INSTANCE_TIMEOUT,
                           check=False, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {"ok": False, "loader": loader, "error": f"the instance did not finish in {INSTANCE_TIMEOUT:g}s"}
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-2:])[-300:]
        return {"ok": False, "loader": loader, "error": f"exit {r.returncode}: {tail}"}
    out = json.loads(lines[-1])
    load, mem = out.get("load") or {}, out.get("memory") or {}
    return {"ok": True, "loader": loader, "load_s": out["load_s"], "ttft_s": out["ttft_s"],
            "tokens_per_s": out.get("tokens_per_s"), "total_s": out["load_s"] + out["ttft_s"] + (
                (len(out["tokens"]) - 1) / out["tokens_per_s"] if out.get("tokens_per_s") else 0.0),
            "tokens": out["tokens"], "text": out.get("text"),
            "bytes_copied": load.get("bytes_copied"), "bytes_mapped": load.get("bytes_mapped"),
            "pss_local_kib": mem.get("local_pss", 0) / KIB, "rss_cxl_kib": mem.get("cxl_resident", 0) / KIB}


def op_run(model: str, mhd: str, loader: str, prompt: str, max_tokens: int, instances: int = 1,
           drop: str = "all") -> JsonObject:
    kind, dropping = Loader(loader), Drop(drop)
    if not 1 <= instances <= MAX_INSTANCES:
        raise ValueError(f"instances must be 1..{MAX_INSTANCES}, not {instances}")
    argv = [sys.executable, "-m", "tbagent.cli", "llm", "run", "--loader", str(kind), "--model", model,
            "--prompt", prompt, "--max-tokens", str(max_tokens)]
    if kind is Loader.DISK:
        path = loaders.disk_path(model)
        if not path.exists():
            raise ValueError(f"no local copy of model {model!r} at {path}: run model.disk first")
        loaders.drop_page_cache(str(path), dropping)
        argv += ["--drop", "none"]  # dropped once above (or kept: a warm DRAM tier) for every instance
    else:
        argv += ["--mhd", mhd]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=instances) as pool:  # result() re-raises a thread's error
        results = [f.result() for f in [pool.submit(_instance, argv) for _ in range(instances)]]
    return {"instances": results, "wall_s": time.perf_counter() - t0}


def op_migrate_out(method: str, preset: str, prompt: str, context: int, generated: int, mhd: str | None = None,
                   bind: str | None = None, dtype: str = "float32", seed: int = 0) -> JsonObject:
    return migrate.migrate_out(method, preset=preset, dtype=dtype, seed=seed, prompt=prompt, context=context,
                               generated=generated, mhd=mhd, bind=bind)


def op_migrate_in(method: str, handle: JsonObject, preset: str, tokens: int, mhd: str | None = None,
                  dtype: str = "float32", seed: int = 0) -> JsonObject:
    return migrate.migrate_in(method, handle, preset=preset, dtype=dtype, seed=seed, tokens=tokens, mhd=mhd)


def op_migrate_status(id: str, wait_s: float = 0.0) -> JsonObject:
    return migrate.status(id, wait_s)
