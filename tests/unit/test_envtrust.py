"""envtrust without Docker: write windows, the accepted-content ledger, safe reading of `.env`,
and `load_settings` / `trust_env_file` on top of them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from pimagic import envtrust
from pimagic.config import load_settings, trust_env_file
from pimagic.envtrust import EnvFile, TrustState, Window, decide
from pimagic.errors import ConfigError

HOSTILE = "PARANOID_MODE=0\nPIMAGIC_PIDS_LIMIT=100000\nGITHUB_TOKEN=ghp_value_never_shown\n"


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch) -> Path:
    """One machine-wide trust state per test (the session's data root is shared by every test)."""
    root = tmp_path / "data"
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(root))
    return root


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


@pytest.fixture
def no_alarm_hang():
    """A read that blocks (a FIFO) fails the test instead of hanging it."""
    def fail(*_):
        raise TimeoutError("blocked reading the .env")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def opened(folder: Path, container: str = "c1", ago: float = 5.0) -> None:
    """A sandbox for `folder` started `ago` seconds ago and still runs."""
    envtrust.record_running(container, folder, started_at=time.time() - ago)


def env_file(ctime: float, data: bytes = b"PARANOID_MODE=0\n") -> EnvFile:
    return EnvFile(Path("/w/.env"), data, ctime)


# --- the decision -------------------------------------------------------------------------------


def test_no_records_and_no_sandbox_history_trusts():
    assert decide(env_file(100.0), None, history_unknown=False).trusted


def test_no_records_but_a_sandbox_ran_before_refuses():
    verdict = decide(env_file(100.0), None, history_unknown=True)
    assert not verdict.trusted and "before pimagic recorded" in verdict.reason


@pytest.mark.parametrize(
    ("ctime", "trusted"),
    [(50.0, True), (99.0, False), (150.0, False), (201.0, False), (210.0, True)],
)
def test_ctime_inside_a_closed_window_refuses_outside_trusts(ctime, trusted):
    state = TrustState([Window("c1", 100.0, 200.0)])
    assert decide(env_file(ctime), state, history_unknown=False, now=1000.0).trusted is trusted


def test_an_open_window_covers_everything_after_its_start():
    state = TrustState([Window("c1", 100.0, 200.0), Window("c2", 500.0, None)])
    assert decide(env_file(300.0), state, history_unknown=False, now=1000.0).trusted
    assert not decide(env_file(999.0), state, history_unknown=False, now=1000.0).trusted


def test_accepted_content_is_trusted_inside_a_window():
    data = b"PARANOID_MODE=0\n"
    state = TrustState([Window("c1", 100.0, None)])
    assert not decide(env_file(150.0, data), state, history_unknown=False, now=1000.0).trusted
    state.accepted.append(f"{env_file(150.0, data).sha256} /w/.env")  # this content at this path
    assert decide(env_file(150.0, data), state, history_unknown=False, now=1000.0).trusted
    other = env_file(150.0, data + b"PIMAGIC_PIDS_LIMIT=100000\n")  # one byte more: not what was accepted
    assert not decide(other, state, history_unknown=False, now=1000.0).trusted


# --- recording -----------------------------------------------------------------------------------


def test_windows_open_join_and_close(ws, data_root):
    envtrust.record_running("c1", ws, started_at=time.time() - 60)
    envtrust.record_running("c1", ws)  # a second kernel joins: still one window, same start
    state = envtrust.load_state()
    assert len(state.windows) == 1 and state.windows[0].end is None
    w = state.windows[0]
    assert w.start < time.time() - 59 and w.folder == str(ws)
    assert (w.dev, w.ino) == (ws.stat().st_dev, ws.stat().st_ino)  # a moved folder is still known
    envtrust.record_stopped("c1", finished_at=time.time() - 30)
    w = envtrust.load_state().windows[0]
    assert w.end is not None and w.end < time.time() - 29  # the (host-clock) FinishedAt, not now
    assert oct((data_root / envtrust.STATE_FILE).stat().st_mode & 0o777) == "0o600"


def test_windows_close_by_container_id_only(tmp_path):
    """Red team F3: one folder's start/stop never closes another's window (a shared
    PIMAGIC_PI_DATA_DIR does not matter: the state is per machine user, windows per container)."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    opened(a, "X-for-A")
    opened(b, "Y-for-B")
    envtrust.record_stopped("Y-for-B")
    (a / ".env").write_text("PARANOID_MODE=false\nPIMAGIC_PIDS_LIMIT=100000\n")  # the agent in X, still running
    s = load_settings(a, environ={})
    assert s.pids_limit == 512 and "while a sandbox for" in s.env_notes[0]
    assert [w.container for w in envtrust.open_windows()] == ["X-for-A"]


def test_gone_with_unknown_time_closes_at_now_and_nothing_recorded_writes_nothing(ws, data_root):
    envtrust.record_stopped("c1")
    assert not data_root.exists()
    opened(ws, ago=100)
    before = time.time()
    envtrust.record_stopped("c1")
    assert envtrust.load_state().windows[0].end >= before


def test_many_windows_are_merged_conservatively(ws):
    for i in range(envtrust.MAX_WINDOWS + 5):
        envtrust.record_running(f"c{i}", ws, started_at=1000.0 + i)
        envtrust.record_stopped(f"c{i}", finished_at=1000.5 + i)
    windows = envtrust.load_state().windows
    assert len(windows) <= envtrust.MAX_WINDOWS
    assert (windows[0].start, windows[0].folder) == (1000.0, "/")  # the merged span covers every folder


def test_engine_time_parsing():
    assert envtrust.parse_engine_time("0001-01-01T00:00:00Z") is None
    assert envtrust.parse_engine_time("2026-12-02T10:00:00.123456789Z") == pytest.approx(1796205600.123456789)
    assert envtrust.parse_engine_time("2026-12-02T11:00:00.5+01:00") == pytest.approx(1796205600.5)  # SystemTime
    assert envtrust.parse_engine_time("garbage") is None


# --- safe reading --------------------------------------------------------------------------------


def test_symlink_env_is_not_followed(ws, tmp_path):
    target = tmp_path / "elsewhere.env"
    target.write_text("PARANOID_MODE=0\n")
    (ws / ".env").symlink_to(target)
    with pytest.raises(ConfigError, match="symlink"):
        envtrust.read_env(ws / ".env")
    s = load_settings(ws, environ={"PARANOID_MODE": ""}, paranoid=None)
    assert s.paranoid is False and "symlink" in s.env_notes[0]


def test_fifo_env_is_refused_without_blocking(ws, no_alarm_hang):
    os.mkfifo(ws / ".env")
    with pytest.raises(ConfigError, match="not a regular file"):
        envtrust.read_env(ws / ".env")
    s = load_settings(ws, environ={})
    assert "not a regular file" in s.env_notes[0]


def test_oversize_env_is_refused_unread(ws):
    (ws / ".env").write_bytes(b"#" * (envtrust.ENV_MAX_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        envtrust.read_env(ws / ".env")
    assert "larger than" in load_settings(ws, environ={}).env_notes[0]


def test_records_inside_the_workspace_vouch_for_nothing(ws, monkeypatch):
    (ws / ".env").write_text("PARANOID_MODE=1\n")
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(ws / "state"))
    fake = SimpleNamespace(workspace_path=ws, pi_data_path=ws / "state" / "x" / "agent")
    verdict = envtrust.check(ws / ".env", fake)
    assert not verdict.trusted and "inside the folder" in verdict.reason


# --- load_settings / trust_env_file ------------------------------------------------------------------


def test_env_written_during_a_window_is_not_loaded_and_the_note_names_keys_not_values(ws):
    opened(ws)
    (ws / ".env").write_text(HOSTILE)
    s = load_settings(ws, environ={})
    assert (s.paranoid, s.pids_limit, s.github_token) == (False, 512, "")
    (note,) = s.env_notes
    assert str(ws / ".env") in note and "PARANOID_MODE" in note and "PIMAGIC_PIDS_LIMIT" in note
    assert "ghp_value_never_shown" not in note and "100000" not in note
    assert "trust-env" in note


def test_a_refused_env_still_turns_paranoid_on_but_never_off(ws):
    """The user who edits `.env` while the sandbox runs keeps paranoid mode; the agent cannot drop it."""
    opened(ws)
    (ws / ".env").write_text("PARANOID_MODE=true\nPIMAGIC_PIDS_LIMIT=100000\n")
    s = load_settings(ws, environ={})
    assert (s.paranoid, s.pids_limit) == (True, 512) and s.env_notes
    (ws / ".env").write_text("PARANOID_MODE=0\n")
    assert load_settings(ws, environ={"PARANOID_MODE": "1"}).paranoid is True


def test_allowed_env_written_while_no_sandbox_runs_is_loaded(ws):
    opened(ws, ago=60)
    envtrust.record_stopped("c1", finished_at=time.time() - 30)
    (ws / ".env").write_text("PARANOID_MODE=1\nPIMAGIC_PIDS_LIMIT=1000\n")
    s = load_settings(ws, environ={})
    assert (s.paranoid, s.pids_limit, s.env_notes) == (True, 1000, ())


def test_refused_then_trusted_then_loaded(ws):
    opened(ws)
    (ws / ".env").write_text("PARANOID_MODE=1\nPIMAGIC_MEMORY=2g\n")
    s = load_settings(ws, environ={})
    assert (s.paranoid, s.memory) == (True, "4g")  # refused, but paranoid only tightens: it applies
    path, digest, keys, notes = trust_env_file(s, environ={})
    assert (s.paranoid, s.memory, keys, notes) == (True, "2g", ["PARANOID_MODE", "PIMAGIC_MEMORY"], [])
    accepted = json.loads((envtrust.state_dir() / envtrust.STATE_FILE).read_text())["accepted"]
    assert f"{digest} {ws / '.env'}" in accepted
    again = load_settings(ws, environ={})  # the next kernel: accepted content loads
    assert (again.paranoid, again.memory, again.env_notes) == (True, "2g", ())
    (ws / ".env").write_text("PARANOID_MODE=0\nPIMAGIC_MEMORY=2g\n")  # changed again in the window
    assert load_settings(ws, environ={}).paranoid is False


def test_trust_env_refuses_bad_files_and_records_nothing(ws):
    opened(ws)
    (ws / ".env").write_text("PIMAGIC_MEMORY=lots\n")
    s = load_settings(ws, environ={})
    with pytest.raises(ConfigError, match="PIMAGIC_MEMORY"):
        trust_env_file(s, environ={})
    assert envtrust.load_state().accepted == []
    (ws / ".env").unlink()
    os.mkfifo(ws / ".env")
    with pytest.raises(ConfigError, match="not a regular file"):
        trust_env_file(s, environ={})


def test_host_only_keys_never_come_from_the_workspace_env(ws, tmp_path):
    (ws / ".env").write_text(f"PIMAGIC_PI_DATA_DIR={tmp_path}/x/agent\nPIMAGIC_IMAGE=evil:1\nGIT_NAME=Ada\n")
    s = load_settings(ws, environ={})
    assert (s.pi_data_dir, s.image, s.git_name) == ("", "", "Ada")  # trusted file: the rest loads
    assert "PIMAGIC_IMAGE, PIMAGIC_PI_DATA_DIR" in s.env_notes[0] and "host-only" in s.env_notes[0]


def test_env_file_outside_the_workspace_is_the_users_own_file(ws, tmp_path):
    outside = tmp_path / "host.env"
    outside.write_text("PIMAGIC_IMAGE=mine:1\nPARANOID_MODE=1\n")
    opened(ws)
    s = load_settings(ws, env_file=outside, environ={})
    assert (s.image, s.paranoid, s.env_notes) == ("mine:1", True, ())


def test_env_file_inside_the_workspace_follows_the_same_rule(ws):
    opened(ws)
    (ws / "conf").mkdir()
    (ws / "conf" / "my.env").write_text("PIMAGIC_PIDS_LIMIT=1000\n")
    s = load_settings(ws, env_file=ws / "conf" / "my.env", environ={})
    assert s.pids_limit == 512 and "my.env" in s.env_notes[0]


def test_environment_still_wins_over_a_trusted_env(ws):
    (ws / ".env").write_text("PIMAGIC_PIDS_LIMIT=1000\n")
    assert load_settings(ws, environ={"PIMAGIC_PIDS_LIMIT": "700"}).pids_limit == 700


def test_a_hard_linked_env_is_refused_even_when_its_ctime_is_fresh(ws):
    """Linked to a file the user edits later (in place), an agent's `.env` would get a fresh ctime."""
    (ws / "settings.py").write_text("PARANOID_MODE=0\n")
    os.link(ws / "settings.py", ws / ".env")
    s = load_settings(ws, environ={})
    assert s.paranoid is False and "hard links" in s.env_notes[0]
    (ws / "settings.py").unlink()
    assert load_settings(ws, environ={}).env_notes == ()  # one name again: a plain file


@pytest.mark.parametrize("remembered", [True, False], ids=["suspect-ledger", "control-without"])
def test_a_renewed_ctime_does_not_launder_an_agent_written_env(ws, remembered):
    """The agent hard-links `.env` to a file inside the window; after it the user deletes that file,
    which renews the inode's ctime and leaves one link. The content seen at window close stays refused."""
    opened(ws)
    (ws / "planted.tmp").write_text("PIMAGIC_PIDS_LIMIT=1000\n")
    os.link(ws / "planted.tmp", ws / ".env")
    if remembered:
        envtrust.record_stopped("c1")
    else:  # the old close: the window only, no walk of the folder
        with envtrust._locked_state() as state:
            state.windows[0].end = time.time()
    time.sleep(envtrust.SLACK + 0.3)
    (ws / "planted.tmp").unlink()  # the user cleans up
    s = load_settings(ws, environ={})
    if remembered:
        assert s.pids_limit == 512 and "this content was written while a sandbox" in s.env_notes[0]
    else:  # without the ledger the fresh ctime would vouch for it
        assert s.pids_limit == 1000 and s.env_notes == ()


# --- red team 2: where a sandbox can write, and what outlives a window ------------------------------------


def plant(folder: Path, data: str = "PARANOID_MODE=false\nPIMAGIC_PIDS_LIMIT=100000\n", name: str = ".env") -> Path:
    """What the agent does: write a file, rename it into place."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "planted.tmp").write_text(data)
    os.rename(folder / "planted.tmp", folder / name)
    return folder / name


@pytest.mark.parametrize("stopped", [False, True], ids=["parent-running", "parent-stopped"])
def test_a_parent_folders_sandbox_cannot_plant_a_subfolders_env(tmp_path, stopped):
    """F1: the sandbox of `proj` writes `proj/notebooks/.env`; a kernel for `notebooks` (whose own
    history is clean, or its own earlier windows closed long ago) must not load it."""
    proj, sub = tmp_path / "proj", tmp_path / "proj" / "notebooks"
    sub.mkdir(parents=True)
    envtrust.record_running("S", sub, started_at=time.time() - 100)  # the subfolder's own old sandbox
    envtrust.record_stopped("S", finished_at=time.time() - 90)
    opened(proj, "P")
    plant(sub)
    if stopped:
        envtrust.record_stopped("P")
    s = load_settings(sub, environ={})
    assert (s.paranoid, s.pids_limit) == (False, 512) and f"did not load {sub / '.env'}" in s.env_notes[0]


def test_control_a_sibling_folders_sandbox_does_not_refuse(tmp_path):
    """The rule is ancestors only: another project's sandbox never blocks this one's `.env`."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    opened(a)
    (b / ".env").write_text("PIMAGIC_PIDS_LIMIT=1000\n")
    assert load_settings(b, environ={}).pids_limit == 1000


@pytest.mark.parametrize("how", ["mv", "cp -r", "cp -a"])
def test_a_refused_env_stays_refused_when_the_project_is_moved_or_copied(tmp_path, how):
    """F2: a rename keeps the ctime (caught by the folder's inode); a copy gets a fresh ctime
    (caught by the suspect ledger filled when the window closed)."""
    ws = tmp_path / "ws"
    opened(ws.mkdir() or ws)
    plant(ws)
    envtrust.record_stopped("c1")
    dest = tmp_path / "renamed"
    if how == "mv":
        os.rename(ws, dest)
    else:
        shutil.copytree(ws, dest, copy_function=shutil.copy2 if how == "cp -a" else shutil.copy)
    s = load_settings(dest, environ={})
    assert (s.pids_limit, s.paranoid) == (512, False) and f"did not load {dest / '.env'}" in s.env_notes[0]


def test_moved_tree_is_caught_by_inode_without_the_ledger(tmp_path):
    """The inode rule alone (the window still open, nothing walked yet)."""
    ws = tmp_path / "ws"
    opened(ws.mkdir() or ws)
    plant(ws / "deep")
    os.rename(ws, tmp_path / "renamed")
    s = load_settings(tmp_path / "renamed" / "deep", environ={})
    assert s.pids_limit == 512 and f"a sandbox for {ws} could write it" in s.env_notes[0]


def test_control_without_the_new_records_the_moved_env_would_load(tmp_path):
    """The attack works against windows keyed by path alone (what the red team found)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    envtrust.record_running("c1", ws, started_at=time.time() - 5)
    plant(ws)
    with envtrust._locked_state() as state:  # forget the inode and close without walking: the old records
        state.windows[0].dev = state.windows[0].ino = -1
        state.windows[0].end = time.time()
    os.rename(ws, tmp_path / "renamed")
    assert load_settings(tmp_path / "renamed", environ={}).pids_limit == 100000


def test_a_hard_linked_env_file_inside_the_workspace_is_not_laundered(ws):
    """F4: `--env-file config/dev.env` with a second name the user deletes after the window."""
    (ws / "config").mkdir()
    opened(ws)
    (ws / "config" / "x").write_text("PARANOID_MODE=false\nPIMAGIC_PIDS_LIMIT=100000\n")
    os.link(ws / "config" / "x", ws / "config" / "tmp")
    os.rename(ws / "config" / "tmp", ws / "config" / "dev.env")
    envtrust.record_stopped("c1")
    time.sleep(envtrust.SLACK + 0.3)
    (ws / "config" / "x").unlink()
    s = load_settings(ws, env_file=ws / "config" / "dev.env", environ={})
    assert s.pids_limit == 512 and "this content was written while a sandbox" in s.env_notes[0]


def test_env_example_copied_by_the_user_is_refused(ws):
    """The agent edits `.env.example`; the user's `cp .env.example .env` after the window is refused."""
    opened(ws)
    plant(ws, name=".env.example")
    envtrust.record_stopped("c1")
    time.sleep(envtrust.SLACK + 0.3)
    shutil.copy(ws / ".env.example", ws / ".env")
    s = load_settings(ws, environ={})
    assert s.pids_limit == 512 and "this content was written while a sandbox" in s.env_notes[0]


def test_the_walk_skips_git_and_symlinks_and_keeps_the_users_old_env(ws, tmp_path):
    (ws / ".env").write_text("PIMAGIC_PIDS_LIMIT=1000\n")  # the user's, before any sandbox
    time.sleep(envtrust.SLACK + 0.3)
    opened(ws, ago=0)
    plant(ws / ".git" / "x")  # not walked: git internals
    outside = tmp_path / "outside"
    plant(outside, "PIMAGIC_PIDS_LIMIT=1234\n")
    (ws / "link").symlink_to(outside)  # never followed
    envtrust.record_stopped("c1")
    state = envtrust.load_state()
    assert state.suspect == [] and state.windows[0].complete
    assert load_settings(ws, environ={}).pids_limit == 1000  # allowed use: untouched in the window


def test_a_walk_cut_short_fails_towards_suspect(ws, tmp_path, monkeypatch):
    """Past the walk bound, a copy that keeps the mtime (cp -a, rsync -a) of a file modified in the
    window is still refused."""
    monkeypatch.setattr(envtrust, "WALK_MAX_ENTRIES", 1)
    opened(ws)
    for i in range(3):
        (ws / f"f{i}").write_text("x")
    plant(ws)
    envtrust.record_stopped("c1")
    assert envtrust.load_state().windows[0].complete is False
    shutil.copytree(ws, tmp_path / "copy")  # copy2: mtime kept
    assert load_settings(tmp_path / "copy", environ={}).pids_limit == 512


def test_a_symlink_below_the_workspace_is_refused_unresolved(ws, tmp_path, monkeypatch):
    """No realpath of an agent's path (an automount target would make the host contact an agent-chosen
    host, a FIFO would hang): lstat each component and refuse the first symlink."""
    (ws / "conf").symlink_to("/net/agent-chosen-host/share")
    (ws / ".env").symlink_to("/net/agent-chosen-host/.env")

    def guard(real):
        def call(path, *args, **kwargs):
            assert not str(path).startswith(f"{ws}/"), f"resolved a path below the workspace: {path}"
            return real(path, *args, **kwargs)
        return call

    settings = load_settings(ws, environ={})
    with monkeypatch.context() as patched:
        patched.setattr(os.path, "realpath", guard(os.path.realpath))
        patched.setattr(os.path, "exists", guard(os.path.exists))
        patched.setattr(os, "stat", guard(os.stat))
        verdict = envtrust.check(ws / "conf" / "my.env", settings)
        assert not verdict.trusted and f"symlink ({ws / 'conf'})" in verdict.reason
        verdict = envtrust.check(ws / ".env", settings)
        assert not verdict.trusted and f"symlink ({ws / '.env'})" in verdict.reason
    assert "a sandbox could have made (not followed)" in load_settings(ws, environ={}).env_notes[0]


def test_allowed_the_users_own_symlinked_env_file_outside_every_sandbox_loads(ws, tmp_path):
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "pimagic.env").write_text("PIMAGIC_IMAGE=mine:1\nPIMAGIC_PIDS_LIMIT=1000\n")
    (tmp_path / "link.env").symlink_to(dotfiles / "pimagic.env")  # e.g. GNU stow
    opened(ws)
    s = load_settings(ws, env_file=tmp_path / "link.env", environ={})
    assert (s.image, s.pids_limit, s.env_notes) == ("mine:1", 1000, ())  # host-only keys too: the user's file


def test_an_env_file_in_another_sandboxs_folder_is_judged(tmp_path):
    """An --env-file outside this workspace but inside another sandbox's folder follows the rule."""
    other, ws = tmp_path / "other", tmp_path / "ws"
    ws.mkdir()
    opened(other.mkdir() or other, "O")
    plant(other, "PIMAGIC_PIDS_LIMIT=100000\nPIMAGIC_IMAGE=evil:1\n", name="shared.env")
    s = load_settings(ws, env_file=other / "shared.env", environ={})
    assert (s.pids_limit, s.image) == (512, "") and "did not load" in s.env_notes[0]


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 8:17 / /media/usb\\040stick rw,relatime shared:2 - vfat /dev/sdb1 rw,uid=1000
41 22 0:50 / /mnt/win rw - fuseblk /dev/sdc1 rw
"""


def test_filesystem_type_is_the_longest_mount_prefix():
    assert envtrust.filesystem_type(Path("/media/usb stick/proj"), MOUNTINFO) == "vfat"
    assert envtrust.filesystem_type(Path("/media/usb"), MOUNTINFO) == "ext4"
    assert envtrust.filesystem_type(Path("/mnt/win/x"), MOUNTINFO) == "fuseblk"
    assert envtrust.filesystem_type(Path("/home/u"), MOUNTINFO) == "ext4"


def test_on_fat_only_accepted_contents_load(ws, monkeypatch):
    """Suspected: on vfat/exFAT the owner sets ctime (= mtime) with `touch -d`; so no ctime verdict."""
    (ws / ".env").write_text("PIMAGIC_PIDS_LIMIT=1000\n")
    os.utime(ws / ".env", (1577836800, 1577836800))
    assert load_settings(ws, environ={}).pids_limit == 1000  # control: on ext4/tmpfs the ctime vouches
    monkeypatch.setattr(envtrust, "filesystem_type", lambda *_a: "vfat")
    s = load_settings(ws, environ={})
    assert s.pids_limit == 512 and "vfat filesystem" in s.env_notes[0] and "trust-env" in s.env_notes[0]
    trust_env_file(s, environ={})
    assert load_settings(ws, environ={}).pids_limit == 1000


def test_a_folder_below_one_with_unrecorded_sandbox_history_is_refused(tmp_path, data_root):
    """A parent ran a sandbox before pimagic recorded windows (its default pi data dir exists)."""
    import hashlib

    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    digest = hashlib.sha256(str(proj).encode()).hexdigest()[:12]
    (data_root / "workspaces" / f"proj-{digest}" / "agent").mkdir(parents=True)
    (proj / "sub" / ".env").write_text("PIMAGIC_PIDS_LIMIT=1000\n")
    s = load_settings(proj / "sub", environ={})
    assert s.pids_limit == 512 and "before pimagic recorded" in s.env_notes[0]


class _Engine:
    """A fake engine whose clock is `lag` seconds behind the host's (Docker Desktop after sleep)."""

    def __init__(self, lag: float | None) -> None:
        self.lag = lag

    def info(self):
        if self.lag is None:
            raise OSError("engine unreachable")
        t = datetime.fromtimestamp(time.time() - self.lag, timezone.utc)
        return {"SystemTime": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


@pytest.mark.parametrize(("lag", "corrected"), [(10.0, True), (None, True), (0.0, True), (10.0, False)],
                         ids=["skew-measured", "skew-unknown-now", "no-skew", "control-uncorrected"])
def test_finished_at_is_moved_onto_the_host_clock(ws, lag, corrected):
    """F5: the agent's last write lands a second before its container dies; the engine's FinishedAt
    lags the host by 10 s. Corrected by the measured skew (or `now` when unknown) the file is refused."""
    from pimagic.sandbox import Sandbox

    opened(ws, ago=60)
    plant(ws)
    finished_engine = time.time() - (lag or 0.0)
    time.sleep(1)
    box = Sandbox(load_settings(ws, environ={}), client=_Engine(lag))
    host = box._host_time(finished_engine) if corrected else finished_engine
    if lag is None:
        assert host is None  # unknown skew: close at now (conservative)
    envtrust.record_stopped("c1", host)
    with envtrust._locked_state() as state:  # judge the window's ctime rule alone (not the ledger)
        state.suspect.clear()
    s = load_settings(ws, environ={})
    assert s.pids_limit == (512 if corrected else 100000)


@pytest.mark.parametrize("lag", [10.0, None], ids=["skew-measured", "skew-unknown"])
def test_a_joined_containers_start_is_moved_onto_the_host_clock(ws, lag):
    """Joining a container no window was recorded for: its engine StartedAt, corrected by the skew;
    when the skew is unknown the window reaches back to the epoch (refuse, `trust-env` accepts)."""
    from pimagic.sandbox import Sandbox

    started_host = time.time() - 30
    engine_start = datetime.fromtimestamp(started_host - (lag or 0.0), timezone.utc)
    stamp = engine_start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    container = SimpleNamespace(id="joined", attrs={"State": {"StartedAt": stamp}})
    box = Sandbox(load_settings(ws, environ={}), client=_Engine(lag))
    box._record_running(container)
    (window,) = envtrust.open_windows()
    if lag is None:
        assert window.start == 0.0
    else:
        assert started_host - 1 < window.start <= started_host + 0.1
    box._record_running(container)  # every later cell joins: nothing changes
    assert envtrust.open_windows() == [window]


def test_flooding_the_suspect_ledger_marks_the_window_incomplete(ws, tmp_path, monkeypatch):
    """Many distinct `*.env` files in one window cannot push older suspects out unnoticed."""
    monkeypatch.setattr(envtrust, "WALK_MAX_SUSPECT", 3)
    opened(ws)
    for i in range(10):
        (ws / f"f{i}.env").write_text(f"PIMAGIC_PIDS_LIMIT={1000 + i}\n")
    plant(ws)
    envtrust.record_stopped("c1")
    state = envtrust.load_state()
    assert state.windows[0].complete is False and len(state.suspect) <= 4
    shutil.copytree(ws, tmp_path / "copy")  # copy2 keeps the mtime: still refused
    assert load_settings(tmp_path / "copy", environ={}).pids_limit == 512
