"""Paranoid mode that sticks, without Docker: the precedence of the kernel's own sources and the
folder's recorded choice, what may lower it (only a deliberate choice), and what a push into a
running container keeps (pimagic.policy, through load_settings and the trait's validator)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pimagic import policy, statedir
from pimagic.config import load_settings, trust_env_file
from pimagic.errors import PimagicError


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(root))
    return root


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


def kernel(ws: Path, environ: dict | None = None, **overrides):
    """The settings a new kernel for `ws` starts with (its own environment, no shared state)."""
    return load_settings(ws, environ=environ or {}, **overrides)


def test_default_is_off_and_nothing_is_recorded(ws):
    s = kernel(ws)
    assert s.paranoid is False
    assert policy.read_choice(s) is None and policy.read_applied(s) is None
    assert policy.status(s, None) == "paranoid mode off"


def test_the_folders_choice_survives_a_new_kernel_and_is_host_only(ws):
    first = kernel(ws)
    policy.choose(first, True, "the settings panel")
    assert first.paranoid is True
    path = statedir.state_dir(first) / policy.CHOICE_FILE
    assert path.is_file() and not path.is_relative_to(ws)  # never in the workspace
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    second = kernel(ws)  # a restarted kernel: default settings
    assert second.paranoid is True
    assert "ON (chosen for this folder with the settings panel at " in policy.status(second, None)


@pytest.mark.parametrize("source", ["environ", "dotenv", "override"])
def test_an_own_off_does_not_undo_the_folders_on(ws, source):
    """Tightening wins: PARANOID_MODE=false (environment, trusted .env) or an explicit False does
    not turn off what the user chose for the folder."""
    policy.choose(kernel(ws), True, "`%pi paranoid on`")
    if source == "dotenv":
        (ws / ".env").write_text("PARANOID_MODE=false\n")  # written while no sandbox ran: trusted
        s = kernel(ws)
        assert not s.env_notes
    elif source == "environ":
        s = kernel(ws, {"PARANOID_MODE": "false"})
    else:
        s = kernel(ws, paranoid=False)
    assert s.paranoid is True


@pytest.mark.parametrize(("environ", "dotenv", "pin"), [
    ({"PARANOID_MODE": "1"}, None, "PARANOID_MODE in the environment"),
    ({}, "PARANOID_MODE=true\n", "PARANOID_MODE in "),
])
def test_a_tightening_source_pins_it_on_against_a_deliberate_off(ws, environ, dotenv, pin):
    if dotenv:
        (ws / ".env").write_text(dotenv)
    s = kernel(ws, environ)
    assert s.paranoid is True
    with pytest.raises(PimagicError, match=f"stays ON: {pin}"):
        policy.choose(s, False, "the settings panel")
    assert s.paranoid is True and policy.read_choice(s) is None  # nothing recorded
    s.paranoid = False  # %config
    assert s.paranoid is True


def test_config_off_does_not_undo_the_choice_and_says_how(ws, capsys):
    s = kernel(ws)
    policy.choose(s, True, "the settings panel")
    capsys.readouterr()
    s.paranoid = False  # what `%config PimagicSettings.paranoid = False` does
    assert s.paranoid is True
    out = capsys.readouterr().out
    assert "paranoid mode stays ON" in out and "%pi paranoid off" in out and "the settings panel" in out


def test_config_on_then_off_in_one_kernel_is_that_kernels_own_business(ws):
    s = kernel(ws)
    s.paranoid = True  # %config: this kernel's own value, not a choice for the folder
    assert policy.read_choice(s) is None
    s.paranoid = False
    assert s.paranoid is False
    assert kernel(ws).paranoid is False


def test_a_deliberate_off_is_recorded_and_sticks(ws):
    s = kernel(ws)
    policy.choose(s, True, "the settings panel")
    policy.choose(s, False, "`%pi paranoid off`")
    assert s.paranoid is False
    assert policy.read_choice(s).paranoid is False
    assert kernel(ws).paranoid is False


def test_two_kernels_follow_the_latest_deliberate_choice(ws):
    a, b = kernel(ws), kernel(ws)
    policy.choose(a, True, "the settings panel")
    assert b.paranoid is False  # not yet looked
    notes = policy.sync(b)
    assert b.paranoid is True and "paranoid mode is ON: chosen for this folder with the settings panel" in notes[0]
    policy.choose(a, False, "the settings panel")
    notes = policy.sync(b)  # b's "on" came from the folder's choice: it follows the new one
    assert b.paranoid is False and "turned OFF" in notes[0]
    b.paranoid = True  # b's own %config
    policy.choose(a, False, "the settings panel")
    assert policy.sync(b) == [] and b.paranoid is True  # b's own value stays
    policy.choose(b, True, "the settings panel")  # a choice made in b is the folder's, not b's own:
    policy.choose(b, False, "the settings panel")
    policy.choose(b, True, "the settings panel")
    policy.choose(a, False, "`%pi paranoid off`")  # so a later deliberate off elsewhere reaches b
    assert "turned OFF" in policy.sync(b)[0] and b.paranoid is False


def test_a_push_never_lowers_the_running_containers_policy_without_a_deliberate_off(ws):
    a, b = kernel(ws), kernel(ws)
    a.paranoid = True  # a's own %config: nothing recorded for the folder
    want, why, _ = policy.decide(a, "c1")
    assert want is True
    policy.record_applied(a, "c1", want, why)

    want, why, notes = policy.decide(b, "c1")  # b joins the running container with its default
    assert want is True and "kept paranoid mode ON in the running sandbox" in notes[0]
    assert "%pi paranoid off" in notes[0]
    assert "this kernel's settings say off" in notes[0]
    assert policy.decide(b, "c2")[0] is False  # a new container: b's own setting
    assert policy.decide(b, "c2", replaced="c1")[0] is True  # ... unless it replaces the running one

    policy.choose(b, False, "`%pi paranoid off`")  # deliberate: after the push, so it may lower it
    assert policy.decide(b, "c1") == (False, "off", [])


def test_status_says_what_the_running_sandbox_has(ws):
    s = kernel(ws)
    assert policy.status(s, "c1") == "paranoid mode off; the running sandbox gets it at the next %%pi cell"
    policy.record_applied(s, "c1", True, "PARANOID_MODE in the environment")
    line = policy.status(s, "c1")
    assert line.startswith("paranoid mode off; the running sandbox has it ON (set there at ")
    assert line.endswith(": PARANOID_MODE in the environment); " + policy.OFF_HOW)
    policy.choose(s, True, "the settings panel")
    policy.record_applied(s, "c1", True, policy.describe(s))
    assert policy.status(s, "c1").startswith("paranoid mode ON (chosen for this folder with the settings panel")


def test_an_unreadable_choice_fails_closed(ws):
    s = kernel(ws)
    path = statedir.state_dir(s) / policy.CHOICE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert kernel(ws).paranoid is True
    os.unlink(path)
    os.symlink(ws / "elsewhere.json", path)  # never followed
    assert policy.read_choice(s).paranoid is True
    policy.choose(s, False, "`%pi paranoid off`")  # choosing again rewrites it
    assert kernel(ws).paranoid is False


def test_trust_env_reloads_the_kernels_own_value_but_the_choice_still_applies(ws):
    (ws / ".env").write_text("PARANOID_MODE=true\n")
    s = kernel(ws)
    with pytest.raises(PimagicError, match="PARANOID_MODE in"):
        policy.choose(s, False, "the settings panel")
    (ws / ".env").write_text("PARANOID_MODE=false\n")
    trust_env_file(s, environ={})
    assert s.paranoid is False  # the file said so, nothing else did
    policy.choose(s, True, "the settings panel")
    trust_env_file(s, environ={})
    assert s.paranoid is True  # the folder's choice is on top of the file


def test_a_running_pi_pushes_again_only_when_the_record_lags(ws):
    """Each cell on a running pi checks the host's record: a missing or weaker record (a failed
    push) or a deliberate off newer than it is pushed again; a kept-on floor is not re-announced."""
    s = kernel(ws)
    assert policy.needs_push(s, "c1") is True  # never recorded
    policy.record_applied(s, "c1", False, "off")
    assert policy.needs_push(s, "c1") is False
    assert policy.needs_push(s, "c2") is True  # another container
    s.paranoid = True  # set, but the push failed: the record still says off
    assert policy.needs_push(s, "c1") is True
    policy.record_applied(s, "c1", True, policy.describe(s))
    assert policy.needs_push(s, "c1") is False
    s.paranoid = False  # own off while the sandbox keeps on (the floor): nothing to push again
    assert policy.needs_push(s, "c1") is False
    policy.choose(s, False, "`%pi paranoid off`")  # deliberate, and its push failed
    assert policy.needs_push(s, "c1") is True


def test_pi_paranoid_subcommand_parses_on_off_and_refuses_the_rest():
    from IPython.core.error import UsageError

    from pimagic.parsers import HELP_TEXT, parse_line

    assert parse_line("paranoid").on is None
    assert parse_line("paranoid on").on is True and parse_line("paranoid OFF").on is False
    with pytest.raises(UsageError, match="expected on or off"):
        parse_line("paranoid maybe")
    assert "paranoid [on|off]" in HELP_TEXT
