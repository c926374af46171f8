"""Function workloads for sandboxes. Each module is a function's code: it is copied as
/function/handler.py into the function's own rootfs layer and must import only the standard
library (and numpy and PIL: the guest's python3-numpy and python3-pil). `handle(event) -> result`
answers one invocation; module import is the function's initialisation. CATALOG holds what the
pool needs without importing the module; its names are tbproto.catalog.Function, the closed
catalogue the host validates against (tbagent serve checks they agree when it starts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    limits: dict[str, object] = field(default_factory=dict)  # cgroup.Limits.from_dict keys: memory, cpu, pids

    @property
    def source(self) -> Path:
        return Path(__file__).with_name(f"{self.name}.py")


CATALOG = {
    s.name: s for s in (
        FunctionSpec("hello", {"GREETING": "hello"}),
        FunctionSpec("jsonrt", {"JSONRT_INDENT": "0"}),
        FunctionSpec("matmul", {"OPENBLAS_NUM_THREADS": "1"}, {"memory": "384M", "cpu": 1.0, "pids": 64}),
        FunctionSpec("dirty", {"LEAK_TOKEN": "dirty-secret"}),
        FunctionSpec("probe"),
        FunctionSpec("crash"),
        # FunctionBench-style workloads (1 CPU each; numpy's OpenBLAS kept to one thread).
        FunctionSpec("imgresize", {"OPENBLAS_NUM_THREADS": "1"}, {"memory": "256M", "cpu": 1.0, "pids": 64}),
        FunctionSpec("inference", {"OPENBLAS_NUM_THREADS": "1"}, {"memory": "256M", "cpu": 1.0, "pids": 64}),
        FunctionSpec("compress", {}, {"memory": "256M", "cpu": 1.0, "pids": 64}),  # lzma preset 6 needs ~94 MiB
        # The memory limit leaves room for HEAP_MIB up to its maximum, 1024, given as a run's env.
        FunctionSpec("heap", {"OPENBLAS_NUM_THREADS": "1", "HEAP_MIB": "64", "HEAP_SEED": "1", "NUMPY_MADVISE_HUGEPAGE": "0"},
                     {"memory": "1280M", "cpu": 1.0, "pids": 64}),
        # The memory limit fits the largest preset, "base" as float32 (453 MB of weights, a 75 MB KV cache).
        FunctionSpec("llm", {"OPENBLAS_NUM_THREADS": "1", "LLM_PRESET": "ci", "LLM_DTYPE": "float32"},
                     {"memory": "1024M", "cpu": 1.0, "pids": 64}),
    )
}


def spec(name: str) -> FunctionSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"unknown function {name!r}; known: {', '.join(sorted(CATALOG))}") from None
