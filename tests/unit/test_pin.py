"""The workspace pin (RT1-2): pinned at load, checked with no link followed, pinned again only by
the user's own act (`%config`); the container check's comparison on engines that keep or change st_dev."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from traitlets.config import Config

from pimagic import workspace_pin
from pimagic.config import load_settings
from pimagic.errors import SandboxError, WorkspaceReplacedError
from pimagic.workspace_pin import Mounted


def _settings(folder: Path):
    return load_settings(str(folder), environ={})


def test_pinned_at_load_and_checked(tmp_path):
    ws = tmp_path / "proj"
    ws.mkdir()
    s = _settings(ws)
    st = os.stat(ws)
    assert s.workspace_pin.identity == (st.st_dev, st.st_ino)
    assert s.check_workspace_pin().path == ws.resolve()


def test_link_in_place_is_refused_and_path_stays_pinned(tmp_path):
    parent, host = tmp_path / "P", tmp_path / "host-ssh"
    (parent / "child").mkdir(parents=True)
    host.mkdir()
    s = _settings(parent / "child")
    os.rename(parent / "child", parent / "child.orig")
    os.symlink(host, parent / "child")
    assert s.workspace_path == parent.resolve() / "child"  # the pinned path, not resolved again
    with pytest.raises(WorkspaceReplacedError) as err:
        s.check_workspace_pin()
    assert isinstance(err.value, SandboxError)  # shown like every start failure
    assert "was replaced" in err.value.message and str(host) in err.value.message
    assert f"= '{s.workspace_path}'" not in (err.value.hint or "")  # `%config` would follow the link


def test_link_on_an_ancestor_is_refused(tmp_path):
    (tmp_path / "P" / "mid" / "child").mkdir(parents=True)
    (tmp_path / "elsewhere" / "child").mkdir(parents=True)
    s = _settings(tmp_path / "P" / "mid" / "child")
    os.rename(tmp_path / "P" / "mid", tmp_path / "P" / "mid.orig")
    os.symlink(tmp_path / "elsewhere", tmp_path / "P" / "mid")
    with pytest.raises(WorkspaceReplacedError, match="mid is now a link"):
        s.check_workspace_pin()


def test_recreated_or_gone_folder_is_refused_then_config_pins_again(tmp_path):
    ws = tmp_path / "proj"
    ws.mkdir()
    s = _settings(ws)
    os.rename(ws, tmp_path / "proj.old")
    with pytest.raises(WorkspaceReplacedError, match="it is gone"):
        s.check_workspace_pin()
    ws.mkdir()  # "folder recreated": refused with what to do, nothing lost
    with pytest.raises(WorkspaceReplacedError, match="another directory now has its name") as err:
        s.check_workspace_pin()
    assert f"`%config PimagicSettings.workspace = '{ws.resolve()}'`" in (err.value.hint or "")
    # The user's act: `%config` naming the same folder again pins what is there now.
    s._load_config(Config({"PimagicSettings": {"workspace": str(ws)}}))
    assert s.check_workspace_pin().identity == (os.stat(ws).st_dev, os.stat(ws).st_ino)


def test_new_workspace_value_pins_the_new_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    s = _settings(a)
    s.workspace = str(b)
    assert s.workspace_path == b.resolve()
    assert s.check_workspace_pin().identity == (os.stat(b).st_dev, os.stat(b).st_ino)


def test_folder_missing_at_load_is_adopted_when_it_appears(tmp_path):
    ws = tmp_path / "later"
    s = _settings(ws)
    assert s.workspace_pin.identity is None
    ws.mkdir()
    assert s.check_workspace_pin().identity == (os.stat(ws).st_dev, os.stat(ws).st_ino)
    assert s.workspace_pin.identity is not None  # adopted: a later swap is caught
    os.rename(ws, tmp_path / "later.old")
    os.symlink(tmp_path, ws)
    with pytest.raises(WorkspaceReplacedError):
        s.check_workspace_pin()


def test_symlink_the_user_chose_is_followed_once(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    s = _settings(tmp_path / "link")  # the user's own link: resolved at load, then pinned
    assert s.workspace_path == real.resolve()
    assert s.check_workspace_pin().path == real.resolve()


def test_walk_refuses_a_file_component(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        workspace_pin.walk(tmp_path / "f")


def test_parse_stat():
    assert workspace_pin.parse_stat(b"65024 12\n65024 13\n", 2) == [Mounted(65024, 12), Mounted(65024, 13)]
    with pytest.raises(ValueError):
        workspace_pin.parse_stat(b"65024 12\n", 2)
    with pytest.raises(ValueError):
        workspace_pin.parse_stat(b"a b\n", 1)


def test_same_on_engines_that_keep_or_change_st_dev():
    kept = ((7, 100), Mounted(7, 100))  # the reference shows the host's st_dev: compare both
    assert workspace_pin.same((7, 5), Mounted(7, 5), kept)
    assert not workspace_pin.same((7, 5), Mounted(8, 5), kept)
    assert not workspace_pin.same((7, 5), Mounted(7, 6), kept)
    bridged = ((7, 100), Mounted(42, 100))  # a VM's filesystem: another st_dev, the same st_ino
    assert workspace_pin.same((7, 5), Mounted(42, 5), bridged)
    assert not workspace_pin.same((7, 5), Mounted(42, 6), bridged)
    lost = ((7, 100), Mounted(42, 9))  # neither kept: never "the same"
    assert not workspace_pin.same((7, 5), Mounted(7, 5), lost)
