"""envtrust without Docker: write windows, the accepted-content ledger, safe reading of `.env`,
and `load_settings` / `trust_env_file` on top of them."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pimagic import envtrust
from pimagic.config import load_settings, trust_env_file
from pimagic.envtrust import EnvFile, TrustState, Window, decide
from pimagic.errors import ConfigError

HOSTILE = "PARANOID_MODE=0\nPIMAGIC_PIDS_LIMIT=100000\nGITHUB_TOKEN=ghp_value_never_shown\n"


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


def state_of(ws: Path) -> Path:
    return envtrust.state_dir(load_settings(ws, environ={}))


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
    assert decide(env_file(ctime), state, history_unknown=True, now=1000.0).trusted is trusted


def test_an_open_window_covers_everything_after_its_start():
    state = TrustState([Window("c1", 100.0, 200.0), Window("c2", 500.0, None)])
    assert decide(env_file(300.0), state, history_unknown=True, now=1000.0).trusted
    assert not decide(env_file(999.0), state, history_unknown=True, now=1000.0).trusted


def test_accepted_content_is_trusted_inside_a_window():
    data = b"PARANOID_MODE=0\n"
    state = TrustState([Window("c1", 100.0, None)])
    assert not decide(env_file(150.0, data), state, history_unknown=True, now=1000.0).trusted
    state.accepted.append(env_file(150.0, data).sha256)
    assert decide(env_file(150.0, data), state, history_unknown=True, now=1000.0).trusted
    other = env_file(150.0, data + b"PIMAGIC_PIDS_LIMIT=100000\n")  # one byte more: not what was accepted
    assert not decide(other, state, history_unknown=True, now=1000.0).trusted


# --- recording -----------------------------------------------------------------------------------


def test_windows_open_join_and_close(tmp_path):
    d = tmp_path / "state"
    envtrust.record_running(d, "c1", started_at=time.time() - 60)
    envtrust.record_running(d, "c1")  # a second kernel joins: still one window, same start
    state = envtrust.load_state(d)
    assert len(state.windows) == 1 and state.windows[0].end is None
    assert state.windows[0].start < time.time() - 59
    envtrust.record_stopped(d, "c1", finished_at=time.time() - 30)
    w = envtrust.load_state(d).windows[0]
    assert w.end is not None and w.end < time.time() - 29  # the engine's FinishedAt, not now
    assert oct((d / envtrust.STATE_FILE).stat().st_mode & 0o777) == "0o600"


def test_a_new_container_closes_the_gone_ones_window_at_now(tmp_path):
    d = tmp_path / "state"
    envtrust.record_running(d, "old", started_at=time.time() - 100)
    before = time.time()
    envtrust.record_running(d, "new")
    old, new = envtrust.load_state(d).windows
    assert old.end is not None and old.end >= before and new.end is None


def test_gone_with_unknown_time_closes_at_now_and_nothing_recorded_writes_nothing(tmp_path):
    d = tmp_path / "state"
    envtrust.record_stopped(d)
    assert not d.exists()
    envtrust.record_running(d, "c1", started_at=time.time() - 100)
    before = time.time()
    envtrust.record_stopped(d)
    assert envtrust.load_state(d).windows[0].end >= before


def test_many_windows_are_merged_conservatively(tmp_path):
    d = tmp_path / "state"
    for i in range(envtrust.MAX_WINDOWS + 5):
        envtrust.record_running(d, f"c{i}", started_at=1000.0 + i)
    windows = envtrust.load_state(d).windows
    assert len(windows) <= envtrust.MAX_WINDOWS
    assert windows[0].start == 1000.0  # the merged span still starts at the oldest window


def test_engine_time_parsing():
    assert envtrust.parse_engine_time("0001-01-01T00:00:00Z") is None
    assert envtrust.parse_engine_time("2026-12-02T10:00:00.123456789Z") == pytest.approx(1796205600.123456789)


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


def test_records_inside_the_workspace_vouch_for_nothing(ws):
    (ws / ".env").write_text("PARANOID_MODE=1\n")
    fake = SimpleNamespace(workspace_path=ws, pi_data_path=ws / "state" / "agent")
    verdict = envtrust.check(ws / ".env", fake)
    assert not verdict.trusted and "inside the folder" in verdict.reason


# --- load_settings / trust_env_file ------------------------------------------------------------------


def test_env_written_during_a_window_is_not_loaded_and_the_note_names_keys_not_values(ws):
    envtrust.record_running(state_of(ws), "c1", started_at=time.time() - 5)
    (ws / ".env").write_text(HOSTILE)
    s = load_settings(ws, environ={})
    assert (s.paranoid, s.pids_limit, s.github_token) == (False, 512, "")
    (note,) = s.env_notes
    assert str(ws / ".env") in note and "PARANOID_MODE" in note and "PIMAGIC_PIDS_LIMIT" in note
    assert "ghp_value_never_shown" not in note and "100000" not in note
    assert "trust-env" in note


def test_a_refused_env_still_turns_paranoid_on_but_never_off(ws):
    """The user who edits `.env` while the sandbox runs keeps paranoid mode; the agent cannot drop it."""
    envtrust.record_running(state_of(ws), "c1", started_at=time.time() - 5)
    (ws / ".env").write_text("PARANOID_MODE=true\nPIMAGIC_PIDS_LIMIT=100000\n")
    s = load_settings(ws, environ={})
    assert (s.paranoid, s.pids_limit) == (True, 512) and s.env_notes
    (ws / ".env").write_text("PARANOID_MODE=0\n")
    assert load_settings(ws, environ={"PARANOID_MODE": "1"}).paranoid is True


def test_allowed_env_written_while_no_sandbox_runs_is_loaded(ws):
    d = state_of(ws)
    envtrust.record_running(d, "c1", started_at=time.time() - 60)
    envtrust.record_stopped(d, "c1", finished_at=time.time() - 30)
    (ws / ".env").write_text("PARANOID_MODE=1\nPIMAGIC_PIDS_LIMIT=1000\n")
    s = load_settings(ws, environ={})
    assert (s.paranoid, s.pids_limit, s.env_notes) == (True, 1000, ())


def test_refused_then_trusted_then_loaded(ws):
    envtrust.record_running(state_of(ws), "c1", started_at=time.time() - 5)
    (ws / ".env").write_text("PARANOID_MODE=1\nPIMAGIC_MEMORY=2g\n")
    s = load_settings(ws, environ={})
    assert (s.paranoid, s.memory) == (True, "4g")  # refused, but paranoid only tightens: it applies
    path, digest, keys, notes = trust_env_file(s, environ={})
    assert (s.paranoid, s.memory, keys, notes) == (True, "2g", ["PARANOID_MODE", "PIMAGIC_MEMORY"], [])
    assert digest in json.loads((state_of(ws) / envtrust.STATE_FILE).read_text())["accepted"]
    again = load_settings(ws, environ={})  # the next kernel: accepted content loads
    assert (again.paranoid, again.memory, again.env_notes) == (True, "2g", ())
    (ws / ".env").write_text("PARANOID_MODE=0\nPIMAGIC_MEMORY=2g\n")  # changed again in the window
    assert load_settings(ws, environ={}).paranoid is False


def test_trust_env_refuses_bad_files_and_records_nothing(ws):
    envtrust.record_running(state_of(ws), "c1", started_at=time.time() - 5)
    (ws / ".env").write_text("PIMAGIC_MEMORY=lots\n")
    s = load_settings(ws, environ={})
    with pytest.raises(ConfigError, match="PIMAGIC_MEMORY"):
        trust_env_file(s, environ={})
    assert envtrust.load_state(state_of(ws)).accepted == []
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
    envtrust.record_running(state_of(ws), "c1", started_at=time.time() - 5)
    s = load_settings(ws, env_file=outside, environ={})
    assert (s.image, s.paranoid, s.env_notes) == ("mine:1", True, ())


def test_env_file_inside_the_workspace_follows_the_same_rule(ws):
    envtrust.record_running(state_of(ws), "c1", started_at=time.time() - 5)
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
    d = state_of(ws)
    envtrust.record_running(d, "c1", started_at=time.time() - 5)
    (ws / "planted.tmp").write_text("PIMAGIC_PIDS_LIMIT=1000\n")
    os.link(ws / "planted.tmp", ws / ".env")
    envtrust.record_stopped(d, "c1", env_path=(ws / ".env") if remembered else None)
    time.sleep(envtrust.SLACK + 0.3)
    (ws / "planted.tmp").unlink()  # the user cleans up
    s = load_settings(ws, environ={})
    if remembered:
        assert s.pids_limit == 512 and "this content was written while a sandbox" in s.env_notes[0]
    else:  # without the ledger the fresh ctime would vouch for it
        assert s.pids_limit == 1000 and s.env_notes == ()
