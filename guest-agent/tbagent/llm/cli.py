"""`tbagent model put|list|check|disk` (checkpoints in an MHD's store, and on local disk for the
disk baseline) and `tbagent llm run` (one inference instance, one JSON object out)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tbagent.dax import device_path
from tbagent.errors import command
from tbagent.llm import instance, loaders, modelstore, safetensors
from tbagent.llm.loaders import Drop, Loader
from tbagent.store.cli import head_of, open_store

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject

    from tbagent.commands import Subcommands


def source(preset: str | None, seed: int, dtype: str, st_file: str | None) -> tuple[JsonObject, dict[str, np.ndarray]]:
    """A model from a preset (+ seed, dtype) or from a safetensors file, checked to be one the
    llm function can run."""
    if (preset is None) == (st_file is None):
        raise ValueError("give exactly one of --preset and --safetensors")
    if preset is not None:
        return instance.preset_model(preset, seed, dtype)
    assert st_file is not None
    config, tensors, _ = safetensors.read(st_file)
    instance.model_of(config, tensors)  # refuses a file that is not a model of ours
    return config, tensors


def op_put(mhd: str, name: str, preset: str | None = None, seed: int = 0, dtype: str = "float32",
           st_file: str | None = None) -> JsonObject:
    config, tensors = source(preset, seed, dtype, st_file)
    with open_store(mhd) as st:
        return modelstore.summary(modelstore.put(st, name, config, tensors))


def op_disk(name: str, preset: str | None = None, seed: int = 0, dtype: str = "float32", st_file: str | None = None,
            directory: str | None = None) -> JsonObject:
    config, tensors = source(preset, seed, dtype, st_file)
    path = loaders.disk_path(name, Path(directory) if directory else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    return {"name": name, "path": str(path), "bytes": safetensors.write(str(path), config, tensors)}


def op_list(mhd: str) -> list[JsonObject]:
    with open_store(mhd) as st:
        return [modelstore.summary(r) for r in modelstore.models(st)]


def op_check(mhd: str, name: str | None = None) -> JsonObject:
    with open_store(mhd) as st:
        return modelstore.check(st, name)


def op_run(loader: str, model: str, mhd: str | None, prompt: str, max_tokens: int, disk_dir: str | None = None,
           drop: str = "all", chunk_mib: int = loaders.CHUNK >> 20, pipeline: bool = True) -> JsonObject:
    kind = Loader(loader)
    device = head = None
    if kind is not Loader.DISK:
        if mhd is None:
            raise ValueError(f"--loader {loader} needs --mhd")
        device, head = device_path(mhd), head_of(mhd)[0]
    disk = str(loaders.disk_path(model, Path(disk_dir) if disk_dir else None)) if kind is Loader.DISK else None
    if not 1 <= chunk_mib <= 1024:
        raise ValueError(f"--chunk-mib {chunk_mib} is outside 1..1024")
    return instance.run(kind, model, prompt, max_tokens, device=device, head=head or 0, disk=disk, drop=Drop(drop),
                        chunk=chunk_mib << 20, pipeline=pipeline)


def _print(obj: Json) -> None:
    print(json.dumps(obj, separators=(",", ":")))


@command("model")
def _model(args: argparse.Namespace) -> int:
    if args.op == "put":
        _print(op_put(args.mhd, args.name, args.preset, args.seed, args.dtype, args.safetensors))
    elif args.op == "disk":
        _print(op_disk(args.name, args.preset, args.seed, args.dtype, args.safetensors, args.dir))
    elif args.op == "list":
        _print(op_list(args.mhd))
    elif args.op == "check":
        report = op_check(args.mhd, args.name)
        _print(report)
        return 0 if report["ok"] else 1
    return 0


@command("llm")
def _llm(args: argparse.Namespace) -> int:
    _print(op_run(args.loader, args.model, args.mhd, args.prompt, args.max_tokens, args.disk_dir, args.drop,
                  args.chunk_mib, not args.no_pipeline))
    return 0


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="build the model from an llm preset (ci, small, base, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float16", "float32"))
    p.add_argument("--safetensors", help="take the model from this safetensors file instead")


def register(sub: Subcommands) -> None:
    mp = sub.add_parser("model", help="LLM checkpoints in an MHD's store (persist once, load many)")
    ops = mp.add_subparsers(dest="op", required=True)
    p = ops.add_parser("put", help="publish a model's checkpoint into the store (once, by one node)")
    p.add_argument("mhd")
    p.add_argument("name")
    _source_args(p)
    d = ops.add_parser("disk", help="write a model as a safetensors file on local disk (the disk loader's)")
    d.add_argument("name")
    _source_args(d)
    d.add_argument("--dir", help=f"folder (default {loaders.DISK_DIR})")
    ops.add_parser("list", help="models in the store").add_argument("mhd")
    c = ops.add_parser("check", help="verify every tensor's crc32; exit 1 on problems")
    c.add_argument("mhd")
    c.add_argument("name", nargs="?")
    mp.set_defaults(fn=_model)

    lp = sub.add_parser("llm", help="LLM inference instances")
    lops = lp.add_subparsers(dest="op", required=True)
    r = lops.add_parser("run", help="load a model, generate, print one JSON object of timings and memory")
    r.add_argument("--loader", required=True, choices=[str(x) for x in Loader])
    r.add_argument("--model", required=True)
    r.add_argument("--mhd", help="the MHD holding the store (cxl loaders)")
    r.add_argument("--prompt", required=True)
    r.add_argument("--max-tokens", type=int, default=16)
    r.add_argument("--disk-dir", help=f"folder of the disk loader's files (default {loaders.DISK_DIR})")
    r.add_argument("--drop", default="all", choices=[str(x) for x in Drop], help="page cache dropped before a disk load")
    r.add_argument("--chunk-mib", type=int, default=loaders.CHUNK >> 20, help="cxl-copy's chunk size")
    r.add_argument("--no-pipeline", action="store_true", help="cxl-copy: copy then check each chunk in one thread")
    lp.set_defaults(fn=_llm)
