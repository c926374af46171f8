"""Who a testbed belongs to. Names under the state root are shared by every user of a host
(they are libvirt domain names too), so a testbed records its owner, and another user's `up`
or `down` of it is refused with one line naming the owner; root may override with --force."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import UserError

# Set by the CLI's --force for the one command it runs (a ContextVar, not a global flag, so
# that it cannot leak into another command or thread's context).
_FORCE: ContextVar[bool] = ContextVar("cxltb_force_owner", default=False)


@dataclass(frozen=True)
class Owner:
    uid: int
    name: str


def caller(env: Mapping[str, str] | None = None, euid: int | None = None) -> Owner:
    """The person behind this process: under sudo the invoking user (SUDO_UID), not root."""
    env = os.environ if env is None else env
    uid = os.geteuid() if euid is None else euid
    sudo_uid = env.get("SUDO_UID", "")
    if uid == 0 and sudo_uid.isdigit():
        return Owner(int(sudo_uid), env.get("SUDO_USER", "") or _name(int(sudo_uid)))
    return Owner(uid, _name(uid))


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def recorded(state_file: Path) -> Owner | None:
    """The owner a state file records; None if there is none or it cannot be read (a corrupt
    file must not stop `down` from sweeping: only a readable, foreign owner refuses)."""
    try:
        data = json.loads(state_file.read_text())
        uid, name = data["owner_uid"], data["owner_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0 or not isinstance(name, str):
        return None
    return Owner(uid, name[:64])


@contextlib.contextmanager
def forcing(force: bool) -> Iterator[None]:
    token = _FORCE.set(force)
    try:
        yield
    finally:
        _FORCE.reset(token)


def check(testbed: str, owner: Owner | None, me: Owner | None = None, force: bool | None = None,
          euid: int | None = None) -> None:
    """Refuse acting on another user's testbed, unless root forces it."""
    me = caller() if me is None else me
    if owner is None or owner.uid == me.uid:
        return
    force = _FORCE.get() if force is None else force
    is_root = (os.geteuid() if euid is None else euid) == 0
    if force and is_root:
        return
    raise UserError(f"testbed {testbed} belongs to {owner.name!r:.66} (uid {owner.uid}), not to {me.name}: "
                    "ask them, or choose another name; root may override with --force")
