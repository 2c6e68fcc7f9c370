"""What a notebook user sees when the machine is not ready: one actionable line, no traceback."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

from pimagic.config import load_settings
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


def test_bad_env_file_is_named_when_the_extension_loads(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("PIMAGIC_MEMORY=plenty\n")
    monkeypatch.chdir(tmp_path)
    ip = InteractiveShell.instance()
    with pytest.raises(ConfigError, match="PIMAGIC_MEMORY"):
        ip.extension_manager.load_extension("pimagic")
    ip.extension_manager.loaded.discard("pimagic")
