"""One inference instance: load a model with a loader, then generate from a prompt, and report
what the issue measures: load time, time to first token (from the request, after loading: for
cxl-map the first touch of the weights lands here), tokens per second, and memory (PSS in local
DRAM against bytes resident from the CXL mapping)."""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from tbagent.llm import memory
from tbagent.llm.loaders import CHUNK, Drop, Loader, load

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

    from tbagent.functions import llm as llm_types

_IMPORT = threading.Lock()


def llm() -> ModuleType:
    """The llm function module. It builds a model from LLM_PRESET at import (its sandbox
    initialisation); here that model is not used, so the import builds the smallest preset:
    the default one would add its weights to every instance's local memory."""
    with _IMPORT:
        saved = os.environ.get("LLM_PRESET")
        os.environ["LLM_PRESET"] = "tiny"
        try:
            return importlib.import_module("tbagent.functions.llm")
        finally:
            if saved is None:
                del os.environ["LLM_PRESET"]
            else:
                os.environ["LLM_PRESET"] = saved


def preset_model(preset: str, seed: int = 0, dtype: str = "float32") -> tuple[JsonObject, dict[str, np.ndarray]]:
    """(config, tensors) of a preset, deterministic from the seed."""
    m = llm()
    if preset not in m.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(m.PRESETS)}")
    cfg = m.Config.from_json({**m.PRESETS[preset].to_json(), "seed": seed, "dtype": dtype})
    return dict(cfg.to_json()), dict(m.tensors(cfg))


def model_of(config: JsonObject, tensors: Mapping[str, np.ndarray]) -> llm_types.Model:
    """A Model on the tensors as they are (no copy), its config and tensors validated first:
    both came from memory or a file another node wrote."""
    m = llm()
    model: llm_types.Model = m.Model(m.Config.from_json(config), tensors)
    return model


def run(loader: Loader, model: str, prompt: str, max_tokens: int, *, device: str | None = None, head: int = 0,
        disk: str | None = None, drop: Drop = Drop.ALL, chunk: int = CHUNK, pipeline: bool = True) -> JsonObject:
    """Load `model` with `loader` and generate `max_tokens` tokens after `prompt` greedily."""
    m = llm()
    if not 1 <= max_tokens <= m.MAX_TOKENS:
        raise ValueError(f"max_tokens {max_tokens} is outside 1..{m.MAX_TOKENS}")
    weights, stats = load(loader, model, device=device, head=head, disk=disk, drop=drop, chunk=chunk, pipeline=pipeline)
    try:
        # The request starts once the weights are loaded; building the Model (validation, no
        # copy) and tokenising are part of serving it.
        t0 = time.perf_counter()
        net = model_of(weights.config, weights.tensors)
        tokens = m.encode(prompt)
        marks: list[float] = []
        out = net.generate(tokens, max_tokens, on_token=lambda i, t: marks.append(time.perf_counter()))
        span = marks[-1] - marks[0]
        mem = memory.split(device)
        return {"loader": str(loader), "model": model, "params": int(m.param_count(net.cfg)),
                "dtype": str(net.cfg.dtype), "prompt_tokens": len(tokens), "tokens": out, "text": m.decode(out),
                "load_s": stats.seconds, "ttft_s": marks[0] - t0,
                "tokens_per_s": (len(out) - 1) / span if len(out) > 1 and span > 0 else None,
                "load": stats.to_json(), "memory": mem}
    finally:
        weights.close()
