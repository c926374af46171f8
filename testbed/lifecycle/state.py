"""Recorded runtime state of a testbed: an intent log, written before each object is made,
so `down` can remove everything after a crash or a half-finished `up`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path

from tbproto.jsontypes import Json, JsonObject

from testbed import paths
from testbed.errors import UserError
from testbed.lifecycle import names
from testbed.lifecycle import owner as owner_mod
from testbed.lifecycle.names import Layout


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
    gdb_port: int = 0  # `debug: gdb`: QEMU's gdb stub on 127.0.0.1:gdb_port; 0 without one


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
    # Who brought it up (under sudo, the invoking user); -1 in files from before owners.
    owner_uid: int = field(default_factory=lambda: owner_mod.caller().uid)
    owner_name: str = field(default_factory=lambda: owner_mod.caller().name)

    def to_json(self) -> JsonObject:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> State:
        """Parse a decoded state file; any shape other than what save() writes is a ValueError
        (the file may be truncated, hand-edited or from another version)."""
        obj = _object(data, "state")
        unknown = sorted(set(obj) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown fields {', '.join(unknown)}")
        nodes = {name: _node(name, v) for name, v in _object(obj.get("nodes", {}), "nodes").items()}
        objects = [_recorded(o) for o in _list(obj.get("objects", []), "objects")]
        timings = {k: _number(v, f"timings.{k}") for k, v in _object(obj.get("timings", {}), "timings").items()}
        return cls(testbed=_str(obj.get("testbed"), "testbed"), topology_file=_str(obj.get("topology_file"), "topology_file"),
                   topology_text=_str(obj.get("topology_text"), "topology_text"),
                   config_hash=_str(obj.get("config_hash"), "config_hash"),
                   phase=Phase(_str(obj.get("phase", Phase.CREATING), "phase")), accel=_str(obj.get("accel", ""), "accel"),
                   kernel=_strings(obj.get("kernel", {}), "kernel"), qemu=_strings(obj.get("qemu", {}), "qemu"),
                   image=_str(obj.get("image", ""), "image"), objects=objects, nodes=nodes, timings=timings,
                   owner_uid=_int(obj.get("owner_uid", -1), "owner_uid"), owner_name=_str(obj.get("owner_name", ""), "owner_name"))


def gdb_line(node: str, port: int) -> str:
    """What `up` and `status` print for a node with `debug: gdb`."""
    return f"{node}: gdb stub on 127.0.0.1:{port} (gdb vmlinux -ex 'target remote 127.0.0.1:{port}')"


# --- parsing helpers: each raises ValueError naming the field that is wrong ---------------

def _object(v: object, what: str) -> JsonObject:
    if not isinstance(v, dict):
        raise ValueError(f"{what}: expected a JSON object, found {type(v).__name__}")
    return v


def _list(v: object, what: str) -> list[Json]:
    if not isinstance(v, list):
        raise ValueError(f"{what}: expected a JSON list, found {type(v).__name__}")
    return v


def _str(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what}: expected a string, found {type(v).__name__}")
    return v


def _int(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{what}: expected an integer, found {type(v).__name__}")
    return v


def _number(v: object, what: str) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ValueError(f"{what}: expected a number, found {type(v).__name__}")
    return float(v)


def _strings(v: object, what: str) -> dict[str, str]:
    return {k: _str(x, f"{what}.{k}") for k, x in _object(v, what).items()}


def _recorded(v: object) -> dict[str, str]:
    o = _object(v, "objects[]")
    kind = _str(o.get("kind"), "objects[].kind")
    if kind not in set(Kind):
        raise ValueError(f"objects[]: unknown kind {kind!r:.40}")
    return {"kind": Kind(kind), "name": _str(o.get("name"), "objects[].name")}


def _node(name: str, v: object) -> NodeState:
    o = _object(v, f"nodes.{name}")
    mhds = [_str(m, f"nodes.{name}.mhds[]") for m in _list(o.get("mhds"), f"nodes.{name}.mhds")]
    return NodeState(_str(o.get("name"), f"nodes.{name}.name"), _str(o.get("domain"), f"nodes.{name}.domain"),
                     _int(o.get("ssh_port"), f"nodes.{name}.ssh_port"), _str(o.get("address"), f"nodes.{name}.address"), mhds,
                     _int(o.get("gdb_port", 0), f"nodes.{name}.gdb_port"))


def save(layout: Layout, state: State) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, layout.state_file)


class CorruptState(UserError):
    """A state file that cannot be used; `down` still sweeps everything named after the testbed."""

    def __init__(self, layout: Layout, why: str) -> None:
        self.path = layout.state_file
        self.why = why
        super().__init__(f"{layout.state_file}: corrupt state ({why}); `testbed down {layout.testbed}` "
                         "still removes everything named after the testbed")


def named_after(testbed: str, obj: dict[str, str]) -> bool:
    """Whether a recorded object is one this testbed would have made (see testbed.lifecycle.names)."""
    prefix = names.domain_prefix(testbed)
    if obj["kind"] == Kind.NETWORK:
        return obj["name"] == names.network(testbed)
    if obj["kind"] == Kind.FILE:
        return Path(obj["name"]).name.startswith(prefix)
    return obj["name"].startswith(prefix)


def load(layout: Layout) -> State | None:
    try:
        state = State.from_json(json.loads(layout.state_file.read_text()))
    except FileNotFoundError:
        return None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and every shape check
        raise CorruptState(layout, str(exc)) from None
    # A sweep acts on the recorded objects: they must be this testbed's, not another's.
    if state.testbed != layout.testbed:
        raise CorruptState(layout, f"it names testbed {state.testbed!r:.40}")
    foreign = [o["name"] for o in state.objects if not named_after(layout.testbed, o)]
    if foreign:
        raise CorruptState(layout, f"it records {foreign[0]!r:.80}, which is not named after the testbed")
    return state


def known_testbeds(root: Path) -> list[str]:
    base = root / "testbeds"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def referenced_images() -> set[Path] | None:
    """The base images (resolved) that recorded testbeds, in any phase, boot from; None if a
    state file cannot be read, since it may reference any of them."""
    out: set[Path] = set()
    for f in sorted((paths.state_root() / "testbeds").glob("*/state.json")):
        try:
            state = load(Layout(f.parent.name))
        except (CorruptState, OSError):
            return None
        if state is not None and state.image:
            out.add(Path(state.image).resolve())
    return out
