"""The runaway bounds' settings and run options, without Docker: `idle_timeout` reaches the
supervisor's command line (so the run-config hash), `workspace_write_limit` the fsize ulimit,
and every exec names the agent's uid now that the container's own user is root."""

from __future__ import annotations

import pytest

from pimagic.config import load_settings, parse_size
from pimagic.errors import ConfigError
from pimagic.sandbox import IDLE_SUPERVISOR, LABEL_RUN_CONFIG, Sandbox


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(tmp_path / "data"))
    (tmp_path / "ws").mkdir()
    return load_settings(tmp_path / "ws", environ={"PIMAGIC_IDLE_TIMEOUT": "45", "PIMAGIC_WRITE_LIMIT": "1.5g"})


def kwargs(settings, tmp_path):
    return Sandbox(settings, client=object()).run_kwargs("img:tag")


def test_settings_from_the_environment(settings):
    assert settings.idle_timeout == 45.0
    assert settings.workspace_write_limit == "1.5g"
    assert settings.write_limit_bytes == int(1.5 * 2**30)


def test_defaults_bound_both():
    from pimagic.config import PimagicSettings

    s = PimagicSettings()
    assert s.idle_timeout == 120.0 and s.write_limit_bytes == 2 * 2**30


@pytest.mark.parametrize(
    "key, value",
    [("PIMAGIC_IDLE_TIMEOUT", "-1"), ("PIMAGIC_IDLE_TIMEOUT", "soon"), ("PIMAGIC_WRITE_LIMIT", "lots"),
     ("PIMAGIC_WRITE_LIMIT", "-5g")],
)
def test_bad_values_name_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        load_settings(tmp_path, environ={key: value})


def test_parse_size():
    assert [parse_size(t) for t in ("0", "4096", "512k", "64m", "2g", "1.5G")] == [
        0, 4096, 512 * 2**10, 64 * 2**20, 2 * 2**30, int(1.5 * 2**30)]


def test_main_process_is_the_root_supervisor_with_the_idle_timeout(settings, tmp_path):
    k = kwargs(settings, tmp_path)
    assert k["user"] == "0:0" and k["init"] is True and k["cap_drop"] == ["ALL"]
    assert k["command"] == ["python3", "-I", "-S", IDLE_SUPERVISOR, "--idle-timeout", "45"]


def test_fsize_ulimit_is_the_write_limit_and_absent_when_unbounded(settings, tmp_path):
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in kwargs(settings, tmp_path)["ulimits"]}
    assert limits["fsize"] == (int(1.5 * 2**30),) * 2
    settings.workspace_write_limit = "0"
    assert "fsize" not in {u["Name"] for u in kwargs(settings, tmp_path)["ulimits"]}


def test_both_settings_are_part_of_the_run_config(settings, tmp_path):
    first = kwargs(settings, tmp_path)["labels"][LABEL_RUN_CONFIG]
    settings.idle_timeout = 46
    second = kwargs(settings, tmp_path)["labels"][LABEL_RUN_CONFIG]
    settings.workspace_write_limit = "3g"
    third = kwargs(settings, tmp_path)["labels"][LABEL_RUN_CONFIG]
    assert len({first, second, third}) == 3


class _FakeApi:
    def __init__(self):
        self.users: list[str] = []

    def exec_create(self, container_id, cmd, **kw):
        self.users.append(kw["user"])
        return {"Id": "e1"}

    def exec_start(self, exec_id, **kw):
        return object()


class _FakeClient:
    def __init__(self):
        self.api = _FakeApi()


def test_every_exec_names_the_agents_uid_unless_told(settings, monkeypatch):
    client = _FakeClient()
    sandbox = Sandbox(settings, client)
    monkeypatch.setattr(sandbox, "running", lambda: type("C", (), {"id": "c1"})())
    sandbox.exec_socket(["pi"])
    sandbox.exec_socket(["put-secret"], user="0:0")
    assert client.api.users == [f"{settings.uid}:{settings.gid}", "0:0"]
