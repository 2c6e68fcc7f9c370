"""What a notebook user sees when the machine is not ready: one actionable line, no traceback."""

from __future__ import annotations

import copy

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from pimagic.config import InvalidSettingsError, load_settings
from pimagic.errors import ConfigError, DockerUnavailableError
from pimagic.magics import PiMagics


@pytest.fixture
def shell(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    ip = InteractiveShell.instance()
    ip.register_magics(PiMagics(ip, load_settings(tmp_path, environ={})))
    return ip


def test_no_docker_engine_is_one_clear_error(shell, capsys):
    result = shell.run_cell("%%pi\nhello")
    assert isinstance(result.error_in_exec, DockerUnavailableError)
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "pimagic DockerUnavailableError: cannot reach the Docker engine" in text
    assert "hint:" in text and "Traceback" not in text


@pytest.fixture
def fresh_shell(monkeypatch):
    """The shell with pimagic loaded by a test; unloaded after, so other tests start clean."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    ip = InteractiveShell.instance()
    before = list(ip.configurables)
    config = copy.deepcopy(ip.config.get("PimagicSettings")) if "PimagicSettings" in ip.config else None
    yield ip
    if "pimagic" in ip.extension_manager.loaded:
        ip.extension_manager.unload_extension("pimagic")
    # Neither `%config PimagicSettings` nor the next test's settings may see this test's values.
    ip.configurables[:] = before
    ip.config.pop("PimagicSettings", None)
    if config is not None:
        ip.config["PimagicSettings"] = config


def test_bad_env_values_name_every_key_and_the_extension_still_loads(tmp_path, monkeypatch, fresh_shell, capsys):
    (tmp_path / ".env").write_text("PIMAGIC_MEMORY=plenty\nPARANOID_MODE=ture\nPIMAGIC_CPUS=2\n")
    monkeypatch.chdir(tmp_path)
    ip = fresh_shell
    assert ip.extension_manager.load_extension("pimagic") is None  # loaded, no exception
    out = capsys.readouterr().out
    assert "2 invalid settings" in out and "PIMAGIC_MEMORY='plenty'" in out and "PARANOID_MODE='ture'" in out
    assert "%%pi Create a snake game" in out  # the greeting shows the prompt forms
    assert "pi" in ip.magics_manager.magics["cell"]

    # A cell that needs the sandbox is refused (never started with paranoid mode silently off)...
    result = ip.run_cell("%%pi\nhello")
    assert isinstance(result.error_in_exec, InvalidSettingsError)
    shown = capsys.readouterr()
    assert "PARANOID_MODE" in shown.out + shown.err and "Traceback" not in shown.out + shown.err
    # ...what needs no sandbox still works...
    ip.run_line_magic("pi", "help")
    assert "%pi SUBCOMMAND" in capsys.readouterr().out
    # ...and setting the keys for this kernel lifts the refusal: the next start is Docker's business.
    ip.run_line_magic("config", "PimagicSettings.memory = '4g'")
    ip.run_line_magic("config", "PimagicSettings.paranoid = True")
    result = ip.run_cell("%%pi\nhello")
    assert isinstance(result.error_in_exec, DockerUnavailableError)


def test_an_unparsable_env_line_refuses_cells_until_fixed_and_reloaded(tmp_path, monkeypatch, fresh_shell, capsys):
    (tmp_path / ".env").write_text("PARANOID_MODE=true\nthis is not a setting\n")
    monkeypatch.chdir(tmp_path)
    ip = fresh_shell
    ip.extension_manager.load_extension("pimagic")
    assert "cannot parse this line" in capsys.readouterr().out
    assert isinstance(ip.run_cell("%%pi\nhello").error_in_exec, ConfigError)
    (tmp_path / ".env").write_text("PARANOID_MODE=true\n")
    ip.extension_manager.reload_extension("pimagic")
    assert isinstance(ip.run_cell("%%pi\nhello").error_in_exec, DockerUnavailableError)


def test_the_cli_still_refuses_bad_settings_naming_all_of_them(tmp_path):
    (tmp_path / ".env").write_text("PIMAGIC_MEMORY=plenty\nPIMAGIC_CPUS=lots\n")
    with pytest.raises(InvalidSettingsError) as e:
        load_settings(tmp_path, environ={})
    assert "PIMAGIC_MEMORY" in str(e.value) and "PIMAGIC_CPUS" in str(e.value)


def test_a_good_environment_value_overrides_a_bad_env_file_value(tmp_path):
    (tmp_path / ".env").write_text("PIMAGIC_MEMORY=plenty\n")
    settings = load_settings(tmp_path, environ={"PIMAGIC_MEMORY": "2g"}, defer_errors=True)
    assert settings.memory == "2g" and not settings.env_errors


def test_prompt_on_the_magic_line_reaches_the_magic(shell, capsys):
    """`%%pi Create a snake game` (empty body) and `%pi Create a snake game` are prompts: they get
    as far as starting the sandbox (no engine here), not IPython's "cell body is empty"."""
    from pimagic.magics import prompt_on_magic_line

    shell.input_transformers_cleanup.append(prompt_on_magic_line)
    try:
        for cell in ("%%pi Create a snake game", "%pi Create a snake game", "%pi -q Create a snake game"):
            result = shell.run_cell(cell)
            assert isinstance(result.error_in_exec, DockerUnavailableError), cell
        result = shell.run_cell("%pi stauts")
        assert isinstance(result.error_in_exec, UsageError)
        assert "did you mean 'status'" in capsys.readouterr().err
    finally:
        shell.input_transformers_cleanup.remove(prompt_on_magic_line)


def test_an_empty_cell_says_where_the_prompt_goes(shell):
    with pytest.raises(UsageError, match="on the line"):
        shell.run_cell_magic("pi", "-q", "  \n")


def test_interrupted_and_failed_turns_render_as_one_line():
    from pimagic.errors import TurnFailed, TurnInterrupted

    assert TurnInterrupted()._render_traceback_() == [
        "pimagic: interrupted; the turn was aborted, the sandbox and the session are kept"
    ]
    assert isinstance(TurnInterrupted(), KeyboardInterrupt)  # code that stops on Ctrl-C still does
    line = TurnFailed("cannot reach provider 'x'\nsecond line", hint="start it")._render_traceback_()
    assert line == ["pimagic: cannot reach provider 'x' second line"]
