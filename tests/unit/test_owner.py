"""Several users on one host: a testbed records its owner; another user's up/down of it is
refused with one line naming the owner, unless root forces it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testbed.errors import UserError
from testbed.lifecycle import locks, owner
from testbed.lifecycle import state as st

ALICE = owner.Owner(1001, "alice")
BOB = owner.Owner(1002, "bob")


def test_caller_under_sudo_is_the_invoking_user() -> None:
    assert owner.caller({"SUDO_UID": "1001", "SUDO_USER": "alice"}, euid=0) == ALICE
    assert owner.caller({}, euid=0).uid == 0
    assert owner.caller({"SUDO_UID": "1001", "SUDO_USER": "alice"}, euid=1002).uid == 1002  # not root: sudo vars mean nothing
    assert owner.caller({"SUDO_UID": "x"}, euid=0).uid == 0


def test_another_users_testbed_is_refused_naming_the_owner() -> None:
    owner.check("tb", ALICE, ALICE, force=False, euid=0)
    owner.check("tb", None, BOB, force=False, euid=0)  # unowned (older state files)
    with pytest.raises(UserError) as info:
        owner.check("tb", ALICE, BOB, force=False, euid=0)
    msg = str(info.value)
    assert "belongs to 'alice' (uid 1001)" in msg and "--force" in msg and "\n" not in msg


def test_force_works_for_root_only() -> None:
    owner.check("tb", ALICE, BOB, force=True, euid=0)
    with pytest.raises(UserError):
        owner.check("tb", ALICE, BOB, force=True, euid=1002)
    with owner.forcing(True):
        owner.check("tb", ALICE, BOB, euid=0)
    with pytest.raises(UserError):  # the flag does not outlive its command
        owner.check("tb", ALICE, BOB, euid=0)


def test_state_records_its_owner_and_old_files_have_none(tmp_path: Path) -> None:
    state = st.State("tb", "f", "", "h", owner_uid=1001, owner_name="alice")
    (tmp_path / "state.json").write_text(json.dumps(state.to_json()))
    assert owner.recorded(tmp_path / "state.json") == ALICE
    assert st.State.from_json(state.to_json()).owner_name == "alice"
    old = state.to_json()
    del old["owner_uid"], old["owner_name"]
    assert st.State.from_json(old).owner_uid == -1
    (tmp_path / "state.json").write_text(json.dumps(old))
    assert owner.recorded(tmp_path / "state.json") is None
    (tmp_path / "state.json").write_text("{corrupt")
    assert owner.recorded(tmp_path / "state.json") is None
    assert st.State("tb", "f", "", "h").owner_uid == owner.caller().uid


def test_the_lock_refuses_another_users_testbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXLTB_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_UID", "1002")
    monkeypatch.setenv("SUDO_USER", "bob")
    d = tmp_path / "testbeds" / "tb"
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps(st.State("tb", "f", "", "h", owner_uid=1001, owner_name="alice").to_json()))
    with pytest.raises(UserError, match="belongs to 'alice'"):
        with locks.testbed_lock("tb"):
            pytest.fail("entered another user's testbed")
    with owner.forcing(True), locks.testbed_lock("tb"):
        pass
    monkeypatch.setenv("SUDO_UID", "1001")
    monkeypatch.setenv("SUDO_USER", "alice")
    with locks.testbed_lock("tb"):
        pass
