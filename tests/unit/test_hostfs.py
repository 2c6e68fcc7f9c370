"""pimagic.hostfs: the host never follows a symlink, opens a FIFO/device, reads without bound,
or changes mode/owner by path. Each attack sits beside the allowed use; controls show what the
plain-path calls pimagic used before would have done."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from pimagic import hostfs, providers, statedir
from pimagic.config import load_settings
from pimagic.errors import ConfigError
from pimagic.hostfs import HostFileError


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A file outside the dir under test whose content and mode must never change."""
    path = tmp_path / "outside" / "canary"
    path.parent.mkdir()
    path.write_text("canary-content\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def home(tmp_path: Path):
    d = tmp_path / "dir"
    d.mkdir()
    fd = hostfs.open_dir(d)
    yield d, fd
    os.close(fd)


def unchanged(canary: Path) -> None:
    st = canary.stat()
    assert canary.read_text() == "canary-content\n"
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()


def test_read_regular_file_allowed(home):
    d, fd = home
    (d / "a.json").write_bytes(b"{}")
    assert hostfs.read_file(fd, "a.json") == b"{}"
    assert hostfs.read_file(fd, "missing.json") is None


def test_read_refuses_symlink(home, canary):
    d, fd = home
    (d / "a.json").symlink_to(canary)
    with pytest.raises(HostFileError, match="symlink"):
        hostfs.read_file(fd, "a.json")
    assert (d / "a.json").read_text() == "canary-content\n"  # control: a plain open follows it


def test_read_refuses_symlink_to_dev_zero_without_allocating(home):
    d, fd = home
    (d / "settings.json").symlink_to("/dev/zero")
    with pytest.raises(HostFileError, match="symlink"):
        hostfs.read_file(fd, "settings.json")


def test_read_refuses_a_device(tmp_path):
    with hostfs.opened_dir("/dev") as dev:
        with pytest.raises(HostFileError, match="not a regular file"):
            hostfs.read_file(dev, "zero")


def test_read_refuses_fifo_without_hanging(home):
    d, fd = home
    os.mkfifo(d / "models.json")
    done: list[BaseException] = []

    def attempt() -> None:
        try:
            hostfs.read_file(fd, "models.json")
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            done.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "read_file hung on a FIFO"
    assert isinstance(done[0], HostFileError) and "not a regular file" in str(done[0])


def test_read_caps_size(home):
    d, fd = home
    (d / "big.json").write_bytes(b"x" * 101)
    with pytest.raises(HostFileError, match="larger than 100 bytes"):
        hostfs.read_file(fd, "big.json", limit=100)
    assert hostfs.read_file(fd, "big.json", limit=101) == b"x" * 101


def test_write_atomic_allowed_sets_mode_on_the_file(home):
    d, fd = home
    hostfs.write_atomic(fd, "a.json", b"{}\n", mode=0o640)
    assert (d / "a.json").read_bytes() == b"{}\n"
    assert stat.S_IMODE((d / "a.json").stat().st_mode) == 0o640
    assert [p.name for p in d.iterdir()] == ["a.json"]  # no temp file left


def test_write_atomic_skips_a_planted_symlink_at_the_temp_name(home, canary, monkeypatch):
    d, fd = home
    names = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(hostfs.secrets, "token_hex", lambda n: next(names))
    (d / ".a.json.aaaa.tmp").symlink_to(canary)
    hostfs.write_atomic(fd, "a.json", b"new\n", mode=0o644, uid=os.getuid(), gid=os.getgid())
    assert (d / "a.json").read_bytes() == b"new\n"
    unchanged(canary)


def test_write_atomic_race_swapping_the_temp_file_changes_nothing_outside(home, canary, monkeypatch):
    """The issue's race: the temp file is swapped for a symlink while the host writes it. Mode and
    owner go to the fd (the host's own inode), so the canary keeps its mode; control: by path it would not."""
    d, fd = home
    real_fchmod = os.fchmod

    def swap_then_fchmod(f: int, mode: int) -> None:
        (tmp,) = [p for p in d.iterdir() if p.name.endswith(".tmp")]
        tmp.unlink()
        tmp.symlink_to(canary)
        real_fchmod(f, mode)

    monkeypatch.setattr(hostfs.os, "fchmod", swap_then_fchmod)
    hostfs.write_atomic(fd, "a.json", b"x", mode=0o666)
    unchanged(canary)
    monkeypatch.undo()
    # Control: the chmod-by-path pimagic used before follows the swapped-in symlink.
    link = d / "control-link"
    link.symlink_to(canary)
    os.chmod(link, 0o666)
    assert stat.S_IMODE(canary.stat().st_mode) == 0o666


def test_write_in_place_keeps_the_inode_and_refuses_symlinks(home, canary):
    d, fd = home
    hostfs.write_in_place(fd, "view.json", b"one\n")
    inode = (d / "view.json").stat().st_ino
    hostfs.write_in_place(fd, "view.json", b"two\n")
    assert (d / "view.json").stat().st_ino == inode and (d / "view.json").read_bytes() == b"two\n"
    (d / "link.json").symlink_to(canary)
    with pytest.raises(HostFileError, match="symlink"):
        hostfs.write_in_place(fd, "link.json", b"evil")
    unchanged(canary)


def test_open_dir_refuses_symlink(tmp_path, canary):
    (tmp_path / "link").symlink_to(canary.parent)
    with pytest.raises(HostFileError, match="not a plain directory"):
        hostfs.open_dir(tmp_path / "link")


def _agent_dir(tmp_path: Path):
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    settings = load_settings(ws, environ={})
    statedir.prepare_state(settings)
    return settings, settings.pi_data_path


def test_reset_does_not_follow_symlinks(tmp_path, canary):
    settings, agent = _agent_dir(tmp_path)
    state = agent.parent
    (agent / "extensions").mkdir()
    (agent / "extensions" / "evil.ts").write_text("x")
    (agent / "outside-dir").symlink_to(canary.parent)
    (agent / "outside-file").symlink_to(canary)
    (state / "conversations").symlink_to(canary.parent)  # a symlink in place of a dir: only it goes
    removed = statedir.reset_pi_data(settings)
    assert removed == [str(agent), str(state / "conversations")]
    assert not os.path.lexists(agent) and not os.path.lexists(state / "conversations")
    assert not [n for n in os.listdir(state) if n.startswith(statedir.TRASH_PREFIX)]
    unchanged(canary)
    assert canary.parent.is_dir() and statedir.config_dir(settings).is_dir()  # host-owned config kept


def _deep(top: Path, depth: int) -> None:
    fd = os.open(top, os.O_RDONLY)
    for _ in range(depth):  # relative to a dir fd, as the agent would: no path gets too long
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)


def test_reset_holds_against_a_tree_too_deep_for_recursion_and_locked_dirs(tmp_path):
    """Red-team finding: a 1500-deep chain made shutil.rmtree raise RecursionError, and a
    `chmod 000` dir a PermissionError (non-root), so planted extensions survived the reset."""
    settings, agent = _agent_dir(tmp_path)
    (agent / "aaa").mkdir()
    _deep(agent / "aaa", 3000)
    (agent / "extensions" / "locked").mkdir(parents=True)
    (agent / "extensions" / "locked" / "evil.ts").write_text("x")
    (agent / "extensions" / "locked").chmod(0)
    (agent / "AGENTS.md").write_text("obey")
    statedir.reset_pi_data(settings)
    assert not os.path.lexists(agent)
    assert not [n for n in os.listdir(agent.parent) if n.startswith(statedir.TRASH_PREFIX)]
    statedir.prepare_state(settings)  # the next start: an empty agent dir
    assert os.listdir(agent) == []


def test_odd_mount_point_names_are_moved_out_not_walked(tmp_path, canary):
    settings, agent = _agent_dir(tmp_path)
    (agent / "models.json").mkdir()
    _deep(agent / "models.json", 3000)
    (agent / "settings.json").symlink_to(canary)
    statedir.prepare_state(settings)
    assert not os.path.lexists(agent / "models.json") and not os.path.lexists(agent / "settings.json")
    unchanged(canary)


def test_statedir_read_json_refuses_fifo_and_symlink(tmp_path, canary):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "models.json").symlink_to(canary)
    os.mkfifo(cfg / "settings.json")
    with pytest.raises(HostFileError):
        statedir.read_json(cfg / "models.json")
    with pytest.raises(HostFileError):
        statedir.read_json(cfg / "settings.json")


# --- where the pi data dir may be -------------------------------------------------------------


def test_pi_data_dir_outside_the_data_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(tmp_path / "root"))
    ws = tmp_path / "ws"
    ws.mkdir()
    for target in ("/etc", str(Path.home() / ".ssh"), str(tmp_path / "elsewhere" / "agent")):
        settings = load_settings(ws, environ={"PIMAGIC_PI_DATA_DIR": target})
        with pytest.raises(ConfigError, match="inside pimagic's data root"):
            settings.pi_data_path  # noqa: B018
    inside_ws = load_settings(ws, environ={"PIMAGIC_PI_DATA_DIR": str(tmp_path / "root" / "x" / "agent")})
    assert inside_ws.pi_data_path == tmp_path / "root" / "x" / "agent"  # allowed: under the root
    default = load_settings(ws, environ={})
    assert default.pi_data_path.is_relative_to(tmp_path / "root")


def test_pi_data_dir_inside_the_workspace_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(tmp_path))
    ws = tmp_path / "ws"
    ws.mkdir()
    settings = load_settings(ws, environ={"PIMAGIC_PI_DATA_DIR": str(ws / "pi" / "agent")})
    with pytest.raises(ConfigError, match="inside the workspace"):
        settings.pi_data_path  # noqa: B018


def test_prepare_state_creates_host_only_dirs_and_notes_legacy_config(tmp_path, monkeypatch):
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(tmp_path))
    ws = tmp_path / "ws"
    ws.mkdir()
    settings = load_settings(ws, environ={"PIMAGIC_PI_DATA_DIR": str(tmp_path / "s" / "agent")})
    settings.pi_data_path.mkdir(parents=True)
    (settings.pi_data_path / "models.json").write_text('{"providers": {"evil": {"baseUrl": "http://127.0.0.1:1"}}}')
    state = statedir.prepare_state(settings)
    assert len(state.notes) == 1 and "were not imported" in state.notes[0], state.notes
    assert str(statedir.config_dir(settings)) in state.notes[0]
    assert providers.configured_providers(statedir.config_dir(settings)) == {}
    assert statedir.read_json(statedir.view_dir(settings) / "models.json") == {}
    assert statedir.prepare_state(settings).notes == []  # said once


def test_prepare_state_removes_links_at_the_view_mount_points_without_following(tmp_path, monkeypatch, canary):
    """A symlink (or dir) the agent left at agent/settings.json would move or fail the read-only
    mount: removed, not followed; a regular file there (Docker's mount point) is left alone."""
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(tmp_path))
    ws = tmp_path / "ws"
    ws.mkdir()
    settings = load_settings(ws, environ={"PIMAGIC_PI_DATA_DIR": str(tmp_path / "s" / "agent")})
    agent = settings.pi_data_path
    agent.mkdir(parents=True)
    (agent / "settings.json").symlink_to(canary)
    (agent / "models.json").mkdir()
    (agent / "models.json" / "x").symlink_to(canary.parent)
    (agent / "auth.json").symlink_to(canary)  # not a mount point: not the host's business
    statedir.prepare_state(settings)
    assert not (agent / "settings.json").is_symlink() and not (agent / "models.json").exists()
    assert (agent / "auth.json").is_symlink()
    unchanged(canary)
    (agent / "settings.json").write_text("{}")
    statedir.prepare_state(settings)
    assert (agent / "settings.json").read_text() == "{}"
