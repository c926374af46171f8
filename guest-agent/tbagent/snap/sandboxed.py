"""Instances restored inside sandboxes of the pool daemon (tbagent sandbox pool): TrEnv's full
start path (a template restore into a repurposed sandbox) and its baseline (a CRIU restore into
a sandbox created from scratch). The pool's "restore" start hook runs CRIU inside the sandbox."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tbproto.ops import Mode, Placement  # Placement: snap.run's sandbox, pool (repurposed) or fresh (made for it)

from tbagent.sandbox import paths as sbx_paths
from tbagent.sandbox import server
from tbagent.snap.instance import PLUGIN_DIR, InstanceError

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject


def stage_path(imgdir: Path) -> str:
    """The image set's path as a sandbox init sees it (the layer store is its /store)."""
    return f"{sbx_paths.IN_STORE}/{imgdir.relative_to(sbx_paths.STORE)}"


@dataclass
class SandboxedInstance:
    mode: Mode
    placement: Placement
    client: server.Client
    lease: str
    pid: int
    marks: dict[str, float] = field(default_factory=dict)
    timings: JsonObject = field(default_factory=dict)

    def invoke(self, event: JsonObject, timeout: float = 300.0) -> tuple[JsonObject, float]:
        t0 = time.monotonic()
        reply = self.client.call("invoke", lease=self.lease, event=event, timeout=timeout)["reply"]
        return dict(reply), time.monotonic() - t0

    def stop(self) -> None:
        try:
            self.client.call("release", check=False, lease=self.lease, destroy=self.placement is Placement.FRESH)
        finally:
            self.client.close()

    def __enter__(self) -> SandboxedInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_sandbox(mode: Mode, placement: Placement, function: str, imgdir: Path, pipes: dict[str, str],
                     populate: bool = False) -> SandboxedInstance:
    if mode not in (Mode.CRIU, Mode.TEMPLATE):
        raise ValueError(f"restores into sandboxes are criu or template, not {mode}")
    t0 = time.monotonic()
    try:
        client = server.Client()
    except OSError as exc:
        raise InstanceError(f"no sandbox pool daemon ({exc.strerror}): start one with `tbagent sandbox pool --size N`") from exc
    start = {"kind": "restore", "images": stage_path(imgdir), "pipes": pipes, "populate": populate,
             "plugin": PLUGIN_DIR if mode is Mode.TEMPLATE else None}
    reply = client.call("acquire", check=False, function=function, start=start, fresh=placement is Placement.FRESH)
    if not reply.get("ok"):
        client.close()
        raise InstanceError(f"{placement} sandbox restore of {function} ({mode}) failed: {reply.get('error')}")
    timings = dict(reply["timings"])
    inst = SandboxedInstance(mode, placement, client, str(reply["lease"]), int(timings.get("function_pid", 0)),
                             timings=timings)
    inst.marks.update(start=t0, ready=time.monotonic(), restore_s=float(timings.get("restore", 0.0)))
    if isinstance(timings.get("created"), dict):  # a fresh sandbox: its creation phases
        inst.marks["sandbox_create_s"] = float(sum(timings["created"].values()))
    return inst
