"""Configuration parsing: `.env` < environment < overrides, and clear errors."""

from __future__ import annotations

import os

import pytest

from pimagic.config import PimagicSettings, load_settings, read_env_file
from pimagic.errors import ConfigError


def write_env(tmp_path, text: str):
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def test_env_file_keys_from_the_seed(tmp_path):
    write_env(
        tmp_path,
        "GITHUB_TOKEN=ghp_canary\nGIT_NAME='Ada L'\nGIT_EMAIL=ada@example.com\n"
        "GIT_GPG_KEY=ABC123\nGIT_GPG_SIGN=true\nPARANOID_MODE=yes\nHOST_UID=1234\nHOST_GID=99\n",
    )
    s = load_settings(tmp_path, environ={})
    assert (s.github_token, s.git_name, s.git_email) == ("ghp_canary", "Ada L", "ada@example.com")
    assert (s.git_gpg_key, s.git_gpg_sign, s.paranoid) == ("ABC123", True, True)
    assert (s.uid, s.gid) == (1234, 99)


def test_environment_overrides_env_file_and_overrides_win(tmp_path):
    write_env(tmp_path, "PARANOID_MODE=false\nPIMAGIC_MEMORY=1g\n")
    s = load_settings(tmp_path, environ={"PARANOID_MODE": "true"}, memory="2g")
    assert s.paranoid is True
    assert s.memory == "2g"


def test_env_file_is_read_not_exported(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    write_env(tmp_path, "GITHUB_TOKEN=ghp_not_exported\n")
    load_settings(tmp_path, environ={})
    assert "GITHUB_TOKEN" not in os.environ


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("PARANOID_MODE=maybe", "PARANOID_MODE"),
        ("HOST_UID=abc", "HOST_UID"),
        ("HOST_UID=0", "HOST_UID"),
        ("PIMAGIC_MEMORY=lots", "PIMAGIC_MEMORY"),
        ("PIMAGIC_CPUS=-1", "PIMAGIC_CPUS"),
        ("PIMAGIC_MODEL=no-slash", "PIMAGIC_MODEL"),
        ("PIMAGIC_THINKING=extreme", "PIMAGIC_THINKING"),
        ("GIT_GPG_SIGN=2", "GIT_GPG_SIGN"),
    ],
)
def test_malformed_value_names_the_key(tmp_path, line, key):
    write_env(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, environ={})
    assert key in str(info.value)
    assert ".env" in str(info.value)  # says where to fix it


def test_unparseable_line_names_file_and_line_without_echoing_it(tmp_path):
    path = write_env(tmp_path, "GIT_NAME=ok\nGITHUB_TOKEN ghp_secret_value\n")
    with pytest.raises(ConfigError) as info:
        read_env_file(path)
    text = str(info.value)
    assert "line 2" in text and str(path) in text
    assert "ghp_secret_value" not in text


def test_token_never_in_repr_or_errors(tmp_path):
    s = PimagicSettings(github_token="ghp_hidden")
    assert "ghp_hidden" not in repr(s)
    err = ConfigError("GITHUB_TOKEN", "ghp_hidden", "bad")
    assert "ghp_hidden" not in str(err)


def test_uid_defaults_to_current_user_but_never_root():
    s = PimagicSettings()
    expected = os.getuid() if os.getuid() != 0 else 1000
    assert s.uid == expected and s.uid != 0


def test_workspace_identity_is_stable_and_distinct(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    sa, sa2, sb = (load_settings(p, environ={}) for p in (a, a, b))
    assert sa.container_name == sa2.container_name
    assert sa.container_name != sb.container_name
    assert sa.pi_data_path != sb.pi_data_path
    assert not sa.pi_data_path.is_relative_to(a)  # pi's credentials live outside the workspace


def test_explicit_env_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path, env_file=tmp_path / "missing.env", environ={})


def test_extra_ca_certs_list_from_environment(tmp_path):
    s = load_settings(tmp_path, environ={"PIMAGIC_EXTRA_CA_CERTS": f"/a.pem{os.pathsep}/b.pem"})
    assert s.extra_ca_certs == ["/a.pem", "/b.pem"]


def test_config_magic_never_prints_the_token(tmp_path, monkeypatch, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    import pimagic

    (tmp_path / ".env").write_text("GITHUB_TOKEN=ghp_canary_config_listing\nPARANOID_MODE=true\n")
    monkeypatch.chdir(tmp_path)
    ip = InteractiveShell.instance()
    pimagic.load_ipython_extension(ip)
    try:
        ip.run_line_magic("config", "PimagicSettings")
        listing = capsys.readouterr().out
        assert "paranoid" in listing  # the listing works ...
        assert "ghp_canary_config_listing" not in listing  # ... and the token is not in it
        assert pimagic._magics.settings.github_token == "ghp_canary_config_listing"
    finally:
        ip.configurables.remove(pimagic._magics.settings)
        pimagic.unload_ipython_extension(ip)


def test_one_list_of_thinking_levels_and_one_model_parser(tmp_path):
    """The settings accept what the magics accept (`max` included) and parse the model spec the same way."""
    from pimagic import parsers
    from pimagic.config import THINKING_LEVELS, ModelRef

    assert parsers.THINKING_LEVELS is THINKING_LEVELS and "max" in THINKING_LEVELS
    s = load_settings(tmp_path, environ={"PIMAGIC_THINKING": "max", "PIMAGIC_MODEL": "openrouter/qwen/qwen3"})
    assert s.thinking == "max" and s.model_ref == ModelRef("openrouter", "qwen/qwen3")
    assert parsers.parse_cell_args("-m openrouter/qwen/qwen3").model == s.model_ref
    for bad in ("anthropic//x", "_a/b"):
        with pytest.raises(ConfigError, match="PIMAGIC_MODEL"):
            load_settings(tmp_path, environ={"PIMAGIC_MODEL": bad})
