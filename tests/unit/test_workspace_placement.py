"""The folder given to the sandbox must not hold what the host runs or trusts by itself (red-team
finding: a notebook opened in the home directory put pimagic's host-only state, and the shell and
IPython start-up files, inside the agent's read-write mount)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pimagic.config import load_settings
from pimagic.errors import SandboxError
from pimagic.sandbox import Sandbox, mask_path


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "users" / "ada"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(home / ".local" / "share" / "pimagic"))
    return home


def prepare(workspace: Path) -> Path:
    workspace.mkdir(parents=True, exist_ok=True)
    workspace.chmod(0o777)  # a root test run: the agent's uid 1000 may write it
    settings = load_settings(workspace, environ={})
    Sandbox(settings)._prepare_host_dirs()
    return mask_path(settings)


@pytest.mark.parametrize(
    ("where", "says"),
    [("home", "your home directory"), ("above-home", "contains your home directory")],
)
def test_home_or_above_is_refused(home, where, says):
    workspace = home if where == "home" else home.parent
    with pytest.raises(SandboxError, match=says) as e:
        prepare(workspace)
    assert "project folder" in e.value.hint
    assert not (home / ".local" / "share" / "pimagic" / "workspaces").exists(), "nothing created"


def test_a_folder_that_holds_the_data_root_is_refused(home, tmp_path, monkeypatch):
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(tmp_path / "proj" / "state"))
    with pytest.raises(SandboxError, match="pimagic's host-only state"):
        prepare(tmp_path / "proj")


def test_allowed_a_project_folder_in_home(home):
    mask = prepare(home / "myproject")
    assert mask.is_file() and mask.parent.parent == home / ".local" / "share" / "pimagic" / "workspaces"
