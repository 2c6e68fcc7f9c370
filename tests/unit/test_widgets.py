"""The settings panel over the one settings object, without Docker: `.env` -> object ->
widget -> `%config` and back, pi's config files merged, every failure shown in the panel."""

from __future__ import annotations

import json
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import pimagic
from pimagic import policy, providers, relay, statedir
from pimagic.config import PimagicSettings, load_settings
from pimagic.errors import RpcError, SandboxError
from pimagic.sandbox import ContainerState, SandboxStatus
from pimagic.scripted_model import ScriptedModelServer
from pimagic.session import PiSession, StartReport
from pimagic.widgets import SettingsPanel, configured_models, model_choices, settings_panel


class FakeNetwork:
    attrs = {"IPAM": {"Config": [{"Gateway": "127.0.0.1"}]}}


class FakeClient:
    class networks:  # noqa: N801 - mimics docker-py's client.networks
        @staticmethod
        def get(name: str) -> FakeNetwork:
            return FakeNetwork()


class FakeContainer:
    status = "running"
    id = "fake-container-id"

    def reload(self) -> None:
        pass


class FakeSandbox:
    def __init__(self, owner: FakeSession) -> None:
        self.owner = owner
        self.name = "pimagic-fake"
        self.client = FakeClient()
        self.policies: list[bool] = []
        self.stale = False
        self.fail_policy: Exception | None = None

    def find(self):
        return FakeContainer() if self.owner.running else None

    def state(self) -> ContainerState | None:
        return ContainerState("running", container_id=FakeContainer.id) if self.owner.running else None

    def status(self, *, with_stats: bool = False) -> SandboxStatus:
        if not self.owner.running:
            return SandboxStatus(self.name, "missing")
        return SandboxStatus(self.name, "running", "pimagic:dev", None, 75.0, 50 * 2**20, 4 * 2**30, self.stale)

    def apply_policy(self, container_id: str | None = None) -> list[str]:
        """The real decision and host-side record; only the exec into a container is faked."""
        if self.fail_policy:
            raise self.fail_policy
        paranoid, why, notes = policy.decide(self.owner.settings, container_id or FakeContainer.id, None)
        policy.record_applied(self.owner.settings, container_id or FakeContainer.id, paranoid, why)
        self.policies.append(paranoid)
        return notes


class FakeSession:
    """What the panel uses of PiSession, recording calls; the paranoid parts are the real ones."""

    _on_paranoid = PiSession._on_paranoid
    push_policy = PiSession.push_policy
    set_paranoid = PiSession.set_paranoid
    policy_status = PiSession.policy_status

    def __init__(self, settings: PimagicSettings, running: bool = True) -> None:
        self.settings = settings
        self.running = running
        self.sandbox = FakeSandbox(self)
        self.calls: list[tuple] = []
        self.model = {"provider": "pimagic-scripted", "id": "scripted"}
        self.thinking = "off"
        self.available = [{"provider": "pimagic-scripted", "id": "scripted"}, {"provider": "other", "id": "b"}]
        self.fail: dict[str, Exception] = {}
        self.session_id = "nb-test-1"
        self.start_notes: tuple[str, ...] = ()
        policy.track(settings)
        settings.observe(self._on_paranoid, names=["paranoid"])

    @property
    def rpc(self) -> Any:
        return self if self.running else None

    def alive(self) -> bool:
        return self.running

    def _maybe_fail(self, name: str) -> None:
        self.calls.append((name,))
        if name in self.fail:
            raise self.fail[name]

    def open(self, progress=None) -> StartReport:
        self._maybe_fail("open")
        if self.running:
            return StartReport("running")
        self.running = True
        return StartReport("joined", self.start_notes)

    def ensure(self, progress=None) -> FakeSession:
        self._maybe_fail("ensure")
        self.running = True
        return self

    def get_session_stats(self) -> dict:
        return {"userMessages": 2}

    def get_available_models(self) -> list[dict]:
        return self.available

    def state(self) -> dict | None:
        if not self.running:
            return None
        return {"model": self.model, "thinkingLevel": self.thinking, "sessionId": self.session_id, "messageCount": 4}

    def set_model(self, provider: str, model_id: str) -> dict:
        self._maybe_fail("set_model")
        self.model = {"provider": provider, "id": model_id}
        return self.model

    def set_thinking(self, level: str) -> None:
        self._maybe_fail("set_thinking")
        self.thinking = level

    def new_session(self) -> str:
        self._maybe_fail("new_session")
        self.session_id = "nb-test-2"
        return self.session_id

    def restart(self, progress=None) -> StartReport:
        self._maybe_fail("restart")
        self.running = True
        return StartReport("created", self.start_notes)

    def stop(self) -> None:
        self._maybe_fail("stop")
        self.running = False

    def close(self) -> None:
        self._maybe_fail("close")
        self.running = False


ENV_KEYS = ["PARANOID_MODE", "PIMAGIC_MODEL", "PIMAGIC_THINKING", "PIMAGIC_MEMORY", "PIMAGIC_CPUS",
            "PIMAGIC_PI_DATA_DIR", "HOST_UID", "HOST_GID"]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIMAGIC_PI_DATA_DIR", str(tmp_path / "pi" / "agent"))
    monkeypatch.chdir(ws)
    return ws


@pytest.fixture
def settings(workspace):
    return load_settings(workspace, environ={"PIMAGIC_PI_DATA_DIR": str(workspace.parent / "pi" / "agent")})


@pytest.fixture
def shell(workspace):
    """A real IPython shell with the extension loaded the way `%load_ext pimagic` does."""
    (workspace / ".env").write_text(
        "PARANOID_MODE=false\nPIMAGIC_MODEL=pimagic-scripted/scripted\nPIMAGIC_THINKING=low\nPIMAGIC_MEMORY=2g\n"
    )
    ip = InteractiveShell.instance()
    before = list(ip.configurables)
    saved = ip.config.PimagicSettings.copy()  # another test's %config must not leak into this kernel
    ip.config.PimagicSettings.clear()
    pimagic.load_ipython_extension(ip)
    magics = pimagic._magics
    magics._session = FakeSession(magics.settings)  # no Docker in unit tests
    yield ip
    pimagic.unload_ipython_extension(ip)
    ip.configurables[:] = before
    ip.config.PimagicSettings.clear()
    ip.config.PimagicSettings.update(saved)


def config_current(ip, capsys) -> dict[str, str]:
    """`%config PimagicSettings` as {trait: its "Current:" value}."""
    capsys.readouterr()
    ip.run_line_magic("config", "PimagicSettings")
    current: dict[str, str] = {}
    name = None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("PimagicSettings."):
            name = line.split(".", 1)[1].split("=", 1)[0]
        elif line.strip().startswith("Current:") and name:
            current[name] = line.split("Current:", 1)[1].strip()
    return current


def test_round_trip_env_object_widget_config(shell, capsys):
    magics = pimagic._magics
    settings = magics.settings
    # .env -> object
    assert (settings.paranoid, settings.model, settings.thinking, settings.memory) == (
        False, "pimagic-scripted/scripted", "low", "2g")
    # object -> widget
    panel = shell.run_line_magic("pi", "settings")
    assert isinstance(panel, SettingsPanel)
    assert panel.paranoid_box.value is False
    assert panel.model_dropdown.value == "pimagic-scripted/scripted"
    assert panel.thinking_dropdown.value == "low"
    assert panel.memory_text.value == "2g"
    assert "other/b" in [v for _, v in panel.model_dropdown.options]  # pi's models (running)

    # %config -> object -> widget
    shell.run_line_magic("config", "PimagicSettings.paranoid = True")
    assert settings.paranoid is True and panel.paranoid_box.value is True
    shell.run_line_magic("config", "PimagicSettings.model = 'other/b'")
    assert panel.model_dropdown.value == "other/b"
    shell.run_line_magic("config", "PimagicSettings.thinking = 'high'")
    assert panel.thinking_dropdown.value == "high"
    shell.run_line_magic("config", "PimagicSettings.memory = '3g'")
    assert panel.memory_text.value == "3g"
    # ... and it reached pi (conversation kept: set_model over RPC, not a restart)
    assert magics._session.model == {"provider": "other", "id": "b"}
    assert magics._session.thinking == "high"
    assert ("restart",) not in magics._session.calls

    # widget -> object -> %config
    panel.paranoid_box.value = False
    panel.model_dropdown.value = "pimagic-scripted/scripted"
    panel.thinking_dropdown.value = "medium"
    panel.cpus_text.value = 1.5
    assert (settings.paranoid, settings.model, settings.thinking, settings.cpus) == (
        False, "pimagic-scripted/scripted", "medium", 1.5)
    current = config_current(shell, capsys)
    assert current["paranoid"] == "False" and current["cpus"] == "1.5"
    assert current["model"] == "'pimagic-scripted/scripted'" and current["thinking"] == "'medium'"


def test_paranoid_from_the_panel_goes_through_the_trait_to_the_sandbox(shell):
    magics = pimagic._magics
    panel = settings_panel(magics)
    sandbox = magics._session.sandbox
    panel.paranoid_box.value = True
    panel.paranoid_box.value = False
    # The session's observer pushed it, once per change (the panel does not push a second time).
    assert sandbox.policies == [True, False]
    assert "next gh call" in panel.messages[-1]

    sandbox.fail_policy = SandboxError("exec failed in the sandbox")
    panel.paranoid_box.value = True
    assert magics.settings.paranoid is True
    assert "saved, but applying it failed" in panel.messages[-1]
    assert "exec failed" in panel.message_html.value


def test_the_session_pushes_the_policy_only_while_its_sandbox_runs(settings):
    session = FakeSession(settings)
    panel = SettingsPanel(settings, session)
    panel.paranoid_box.value = True
    assert session.sandbox.policies == [True]
    session.running = False  # not running: nothing to push, applied when it starts
    panel.paranoid_box.value = False
    assert session.sandbox.policies == [True]
    assert "when the sandbox starts" in panel.messages[-1]


def test_invalid_values_are_shown_and_the_widget_snaps_back(settings):
    panel = SettingsPanel(settings, FakeSession(settings))
    panel.memory_text.value = "lots"
    assert settings.memory == "4g" and panel.memory_text.value == "4g"
    assert "PIMAGIC_MEMORY" in panel.message_html.value and "pimagic-error" in panel.message_html.value


def test_pi_rejecting_a_model_reverts_it_and_says_why(settings):
    session = FakeSession(settings)
    session.fail["set_model"] = RpcError("pi rejected 'set_model': Model not found: other/b")
    panel = SettingsPanel(settings, session)
    panel.model_dropdown.value = "other/b"
    assert settings.model == ""
    assert panel.model_dropdown.value == ""
    assert "Model not found" in panel.messages[-1]


def test_buttons_call_the_session_and_show_errors(settings):
    session = FakeSession(settings)
    panel = SettingsPanel(settings, session)
    panel.new_button.click()
    assert ("new_session",) in session.calls and "nb-test-2" in panel.messages[-1]
    assert panel.stop_button.disabled is False  # something runs
    panel.stop_button.click()
    assert not session.running and "stopped" in panel.messages[-1]
    assert "not started yet" in panel.status_html.value  # the fake removes it: no container at all
    assert panel.stop_button.disabled is True
    panel.stop()  # the button is off, but the method says so instead of pretending
    assert "nothing to stop" in panel.messages[-1] and session.calls.count(("stop",)) == 1
    panel.restart_button.click()
    assert session.running and "restarted" in panel.messages[-1]
    assert "running" in panel.status_html.value and "pimagic:dev" in panel.status_html.value
    assert "up 1m 15s" in panel.status_html.value and "50 / 4096 MiB" in panel.status_html.value
    assert "session nb-test-2" in panel.status_html.value

    session.fail["restart"] = SandboxError("the sandbox died while starting")
    panel.restart_button.click()  # must not raise
    assert "restart failed" in panel.messages[-1] and "died while starting" in panel.message_html.value
    session.fail["new_session"] = RuntimeError("a bug")
    panel.new_button.click()
    assert "RuntimeError: a bug" in panel.messages[-1]


def test_what_a_start_did_is_shown_in_the_panel(settings):
    session = FakeSession(settings)
    session.start_notes = ("the sandbox's settings changed: replaced its container",)
    panel = SettingsPanel(settings, session)
    panel.restart_button.click()
    assert "note: the sandbox's settings changed: replaced its container" in panel.messages
    assert "restarted" in panel.messages[-1]


def test_status_says_when_a_restart_is_needed(settings):
    session = FakeSession(settings)
    panel = SettingsPanel(settings, session)
    assert "restart needed" not in panel.status_html.value
    session.sandbox.stale = True  # what Sandbox.status() reports once the run options differ
    panel.memory_text.value = "8g"
    assert settings.memory == "8g"
    assert "restart needed" in panel.status_html.value
    assert "press Restart" in panel.messages[-1]


def test_no_docker_is_shown_not_raised(settings):
    session = FakeSession(settings)

    def no_docker(with_stats: bool = False):
        from pimagic.errors import DockerUnavailableError

        raise DockerUnavailableError("cannot reach the Docker engine", hint="start it")

    session.sandbox.status = no_docker
    panel = SettingsPanel(settings, session)  # building the panel does not fail
    assert "cannot reach the Docker engine" in panel.message_html.value


def test_model_list_from_models_json_when_pi_is_not_running(settings):
    providers.merge_provider(statedir.config_dir(settings), "llama-cpp", {
        "baseUrl": "http://127.0.0.1:1337/v1", "api": "openai-completions", "models": [{"id": "qwen"}]})
    assert configured_models(settings) == ["llama-cpp/qwen"]
    session = FakeSession(settings, running=False)
    panel = SettingsPanel(settings, session)
    assert [v for _, v in panel.model_dropdown.options] == ["", "llama-cpp/qwen"]
    assert ("ensure",) not in session.calls  # opening the panel starts nothing
    assert model_choices([{"provider": "a", "id": "b"}, {"provider": "a", "id": "b"}, {"id": "x"}]) == ["a/b"]


SEED_SETTINGS = {"defaultProvider": "llama-cpp", "defaultModel": "qwen", "defaultThinkingLevel": "off",
                 "theme": "dark", "myKey": {"nested": True}}


def test_provider_merge_keeps_hand_written_keys(settings):
    """The seed's offline recipe survives the panel writing pi's files (the host-owned copies)."""
    cfg = statedir.config_dir(settings)
    cfg.mkdir(parents=True)
    models = {"providers": {"llama-cpp": {
        "baseUrl": "http://127.0.0.1:1337/v1", "api": "openai-completions", "apiKey": "none",
        "models": [{"id": "qwen", "contextWindow": 8192, "note": "mine"}]}}, "extra": 1}
    (cfg / "models.json").write_text(json.dumps(models))
    (cfg / "settings.json").write_text(json.dumps(SEED_SETTINGS))
    session = FakeSession(settings, running=False)
    panel = SettingsPanel(settings, session)
    panel.thinking_dropdown.value = "low"
    panel.model_dropdown.value = "llama-cpp/qwen"
    with ScriptedModelServer(host="127.0.0.1", model_id="served") as server:
        panel.server_url.value = server.url
        panel.add_server_button.click()
        provider = f"local-{server.port}"
        assert settings.model == f"{provider}/served", panel.messages
        assert "relayed" in panel.messages[-1]
    relay.stop_all()
    saved = statedir.read_json(cfg / "settings.json")
    assert saved["theme"] == "dark" and saved["myKey"] == {"nested": True}
    assert saved["defaultProvider"] == provider and saved["defaultModel"] == "served"
    assert saved["defaultThinkingLevel"] == "low"
    data = statedir.read_json(cfg / "models.json")
    assert data["extra"] == 1
    assert data["providers"]["llama-cpp"]["models"] == [{"id": "qwen", "contextWindow": 8192, "note": "mine"}]
    assert data["providers"][provider]["baseUrl"] == server.url  # the host config keeps the user's URL
    view = statedir.read_json(statedir.view_dir(settings) / "models.json")
    assert view["providers"][provider]["baseUrl"].startswith("http://host.docker.internal:")


def test_add_server_restarts_pi_not_the_container_when_running(settings):
    session = FakeSession(settings, running=True)
    panel = SettingsPanel(settings, session)
    with ScriptedModelServer(host="127.0.0.1", model_id="served") as server:
        session.available = [*session.available, {"provider": f"local-{server.port}", "id": "served"}]
        panel.add_server(server.url)
    relay.stop_all()
    assert ("close",) in session.calls and ("ensure",) in session.calls  # pi process, same session id
    assert ("restart",) not in session.calls
    assert session.model["id"] == "served"


def test_add_server_errors_are_shown(settings):
    panel = SettingsPanel(settings, FakeSession(settings))
    panel.add_server_button.click()
    assert "enter the server's URL" in panel.messages[-1]
    panel.server_url.value = "http://127.0.0.1:9/v1"
    panel.add_server_button.click()
    assert "cannot reach" in panel.messages[-1]
    panel.server_url.value = "ftp://nope"
    panel.add_server_button.click()
    assert "expected an http(s) URL" in panel.messages[-1]


def test_close_detaches_from_settings(settings):
    session = FakeSession(settings)
    panel = SettingsPanel(settings, session)
    panel.close()
    settings.model = "other/b"
    assert session.model["id"] == "scripted"  # no longer pushed by the closed panel


def test_before_the_first_run_the_panel_says_not_started_and_stop_is_off(settings):
    panel = SettingsPanel(settings, FakeSession(settings, running=False))
    status = panel.status_html.value
    assert "not started yet (the first %%pi cell starts it)" in status
    assert "missing" not in status
    assert panel.stop_button.disabled is True
    assert "paranoid mode off" in status


def test_paranoid_ticked_in_the_panel_outlives_the_kernel(settings, workspace):
    session = FakeSession(settings)
    panel = SettingsPanel(settings, session)
    panel.paranoid_box.value = True
    assert session.sandbox.policies == [True]
    assert "kept for this folder" in panel.messages[-1]
    assert "paranoid mode ON (chosen for this folder with the settings panel" in panel.status_html.value

    # A restarted kernel: new settings from the same sources, a new panel.
    again = load_settings(workspace, environ={"PIMAGIC_PI_DATA_DIR": str(workspace.parent / "pi" / "agent")})
    assert again.paranoid is True
    fresh = SettingsPanel(again, FakeSession(again))
    assert fresh.paranoid_box.value is True

    # %config False does not undo it; unticking does (and says so in the status line).
    again.paranoid = False
    assert again.paranoid is True and fresh.paranoid_box.value is True
    fresh.paranoid_box.value = False
    assert again.paranoid is False and fresh.session.sandbox.policies[-1] is False
    assert "paranoid mode off" in fresh.status_html.value
    assert policy.read_choice(again).paranoid is False


def test_unticking_is_refused_while_the_environment_pins_it(settings, workspace):
    pinned = load_settings(workspace, environ={
        "PIMAGIC_PI_DATA_DIR": str(workspace.parent / "pi" / "agent"), "PARANOID_MODE": "1"})
    panel = SettingsPanel(pinned, FakeSession(pinned))
    panel.paranoid_box.value = False
    assert pinned.paranoid is True and panel.paranoid_box.value is True  # snapped back
    assert "paranoid not changed" in panel.messages[-1] and "PARANOID_MODE in the environment" in panel.messages[-1]


def test_a_saved_panel_shows_a_truthful_snapshot(settings):
    """What a notebook keeps: the widget view for a live front end, and text/plain + text/html that
    say the values at display time (not ipywidgets' Python repr)."""
    import nbformat
    from nbconvert import HTMLExporter

    panel = SettingsPanel(settings, FakeSession(settings))
    panel.paranoid_box.value = True
    settings.model = "other/b"
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    text, page = bundle["text/plain"], bundle["text/html"]
    assert "SettingsPanel(" not in text and "snapshot" in text and "not live" in text
    assert "Paranoid mode: ON" in text and "Model: other/b" in text
    assert "<th style='text-align:left'>Paranoid mode</th><td>ON (" in page and "other/b" in page

    panel.paranoid_box.value = False
    assert "Paranoid mode: off" in panel._repr_mimebundle_()["text/plain"]  # taken at display time

    # nbconvert without saved widget state falls back to the snapshot.
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("%pi settings")
    cell.outputs = [nbformat.v4.new_output("display_data", data=bundle)]
    nb.cells.append(cell)
    html_out, _ = HTMLExporter().from_notebook_node(nb)
    assert "pimagic-settings-snapshot" in html_out and "SettingsPanel(" not in html_out
    panel.close()
    assert panel._repr_mimebundle_ is None  # ipywidgets: a closed widget displays nothing
