"""Recorded runtime state of a testbed: an intent log, written before each object is made,
so `down` can remove everything after a crash or a half-finished `up`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from testbed.errors import UserError
from testbed.names import Layout


class Phase(StrEnum):
    CREATING = "creating"
    UP = "up"
    TEARDOWN = "teardown"


class Kind(StrEnum):
    DOMAIN = "domain"
    NETWORK = "network"
    FILE = "file"


@dataclass
class NodeState:
    name: str
    domain: str
    ssh_port: int
    address: str
    mhds: list[str]


@dataclass
class State:
    testbed: str
    topology_file: str
    topology_text: str
    config_hash: str
    phase: Phase = Phase.CREATING
    accel: str = ""
    kernel: dict[str, str] = field(default_factory=dict)
    qemu: dict[str, str] = field(default_factory=dict)
    image: str = ""
    objects: list[dict[str, str]] = field(default_factory=list)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        nodes = {k: NodeState(**v) for k, v in data.pop("nodes", {}).items()}
        phase = Phase(data.pop("phase", Phase.CREATING))
        return cls(**data, nodes=nodes, phase=phase)


def save(layout: Layout, state: State) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, layout.state_file)


def load(layout: Layout) -> State | None:
    try:
        return State.from_json(json.loads(layout.state_file.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{layout.state_file}: corrupt state ({exc}); `testbed down {layout.testbed}` "
                        "still removes everything named after the testbed") from None


def known_testbeds(root: Path) -> list[str]:
    base = root / "testbeds"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
