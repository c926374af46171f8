"""/proc/meminfo, parsed once for the host and the agent: every field in kB (KiB)."""

from __future__ import annotations


def parse(text: str) -> dict[str, int]:
    """Field -> kB. Lines without a number (or from another kernel's format) are skipped; the
    few fields counted in pages rather than kB (HugePages_*) come through as their count."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit():
            continue
        out[key.strip()] = int(parts[0])
    return out
