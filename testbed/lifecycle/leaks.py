"""What a testbed may leave behind on the host; every list must be empty after `down`.
Used by the VM tests and by bench/soak.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from testbed import paths
from testbed.lifecycle import daemons, names


def leftovers(testbed: str) -> dict[str, list[str]]:
    prefix = names.domain_prefix(testbed)
    with daemons.connection() as conn:
        domains = [d.name() for d in conn.listAllDomains() if d.name().startswith(prefix)]
        networks = [n.name() for n in conn.listAllNetworks() if n.name() == names.network(testbed)]
    shm = [str(p) for p in paths.shm_root().glob(f"{prefix}*")]
    state_dir = [str(p) for p in [names.Layout(testbed).root] if p.exists()]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    bridge = names.bridge(testbed)
    ifaces = [ln.split(":")[1].strip() for ln in links.splitlines()
              if f" {bridge}:" in ln or f"master {bridge} " in ln]
    procs = subprocess.run(["pgrep", "-af", f"guest={prefix}"], capture_output=True, text=True, check=False).stdout
    overlays = [str(p) for p in Path(paths.state_root()).glob(f"testbeds/{testbed}/nodes/*/root.qcow2")]
    return {"domains": domains, "networks": networks, "shm": shm, "state": state_dir, "interfaces": ifaces,
            "qemu": [ln for ln in procs.splitlines() if "qemu-system" in ln], "overlays": overlays}


def assert_clean(testbed: str) -> None:
    left = leftovers(testbed)
    assert not any(left.values()), f"testbed {testbed} left objects behind: {left}"

