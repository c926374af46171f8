"""Patch series shared by the kernel and QEMU build pipelines: a `series` file naming
`git format-patch` files in one folder, applied in order with a dry run first."""

from __future__ import annotations

from pathlib import Path

from testbed.errors import CommandError, UserError
from testbed.hostcmd import run


def read(folder: Path, what: str) -> list[Path]:
    """The patches `folder/series` names, in order; what: who needs them, for the error."""
    f = folder / "series"
    if not f.exists():
        raise UserError(f"{f}: missing; {what} needs the patch series")
    out = []
    for n in (ln.split("#")[0].strip() for ln in f.read_text().splitlines()):
        if not n:
            continue
        p = folder / n
        if "/" in n or not p.is_file():
            raise UserError(f"{f}: names {n!r}, which is not a patch file in {folder.name}/")
        out.append(p)
    return out


def apply(tree: Path, patches: list[Path], target: str) -> None:
    """Apply each patch to tree; one that does not apply is bad input naming the failing hunk."""
    for p in patches:
        try:
            run(["patch", "-p1", "--forward", "--batch", "--dry-run", "-i", p], cwd=tree)
        except CommandError as exc:
            first = next((ln for ln in exc.output.splitlines() if "FAILED" in ln or "malformed" in ln
                          or "Reversed" in ln), exc.output.strip().splitlines()[-1] if exc.output.strip() else "")
            raise UserError(f"{p.parent.name}/{p.name} does not apply to {target}: {first}") from None
        run(["patch", "-p1", "--forward", "--batch", "-s", "-i", p], cwd=tree)
