"""`testbed validate FILE`: a topology or a scenario, told apart by content (a scenario has
`workloads:`), checked by the loader `up` and `run` use; one line saying what was found."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from testbed.config.topology import Topology
from testbed.errors import UserError

if TYPE_CHECKING:
    from testbed.ui.ops import Ops


def is_scenario(text: str) -> bool:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False  # the topology loader reports the syntax error with its line
    return isinstance(data, dict) and "workloads" in data


def topology_summary(topo: Topology) -> str:
    mhds = ", ".join(f"{m.name} {m.size >> 20} MiB x{len(m.heads)} heads" for m in topo.mhds) or "no MHD"
    return (f"{len(topo.nodes)} node(s) ({', '.join(n.name for n in topo.nodes)}), {mhds}, kernel {topo.kernel}, "
            f"qemu {topo.qemu}, accelerator {topo.accelerator}, image {topo.image}")


def describe(path: Path, ops: Ops) -> str:
    """What path holds, or ConfigError (file:line: field: problem, exit 2)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from exc
    if is_scenario(text):
        from testbed.scenario.spec import schema

        scn = schema.load(path, text=text)
        units = scn.repetitions * len(scn.modes) * len(scn.workloads)
        where = scn.topology_file or "inline"
        return (f"{path}: scenario {scn.name}: valid; testbed {scn.topology.name} ({where}: "
                f"{topology_summary(scn.topology)}); {len(scn.modes)} mode(s) ({', '.join(m.name for m in scn.modes)}), "
                f"{len(scn.workloads)} workload(s), {scn.repetitions} repetition(s): {units} unit(s)")
    topo = ops.load_topology(path)
    return f"{path}: topology {topo.name}: valid; {topology_summary(topo)} (host memory is checked at `up`)"
