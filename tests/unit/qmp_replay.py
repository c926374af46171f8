"""QMP replies recorded verbatim from real QEMU 10.0.2 domains (data/qmp-replies.json),
replayed through libvirt's monitor call: the seam unit tests use instead of a live QEMU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import libvirt

REPLIES: dict[str, dict[str, str]] = json.loads((Path(__file__).parent / "data" / "qmp-replies.json").read_text())


class RecordedDomain:
    """A libvirt domain whose monitor answers with one variant's recorded replies."""

    def __init__(self, variant: str) -> None:
        self.replies = REPLIES[variant]

    def reply(self, cmd: str) -> str:
        args = json.loads(cmd)["arguments"]
        return self.replies[f"{args['path']} {args['property']}"]


class Conn:
    """domain name -> recorded variant; other names are absent, as libvirt says."""

    def __init__(self, variants: dict[str, str]) -> None:
        self.variants = variants

    def lookupByName(self, name: str) -> Any:
        if name not in self.variants:
            raise libvirt.libvirtError(f"Domain not found: no domain with matching name '{name}'")
        return RecordedDomain(self.variants[name])


def monitor(dom: RecordedDomain, cmd: str, flags: int) -> str:
    """Stands in for libvirt_qemu.qemuMonitorCommand."""
    return dom.reply(cmd)
