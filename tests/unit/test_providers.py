"""Providers in pi's host-owned config, the loopback-URL rewrite and local servers (no Docker)."""

from __future__ import annotations

import json
import socket

import pytest
from _loopback import free_port, recv_all

from pimagic import providers, relay, statedir
from pimagic.config import load_settings
from pimagic.errors import ConfigError, RelayError
from pimagic.scripted_model import ScriptedModelServer

pytestmark = pytest.mark.usefixtures("no_leftover_relays")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:1337", "http://127.0.0.1:1337/v1"),
        ("127.0.0.1:1337/v1/", "http://127.0.0.1:1337/v1"),
        ("http://localhost:11434/v1", "http://localhost:11434/v1"),
        ("https://models.example:8443/openai/v1", "https://models.example:8443/openai/v1"),
    ],
)
def test_normalize_base_url(url, expected):
    assert providers.normalize_base_url(url) == expected


@pytest.mark.parametrize("url", ["", "ftp://x/v1", "http://:80", "http://h:99999/v1"])
def test_normalize_rejects_bad_urls(url):
    with pytest.raises(ConfigError):
        providers.normalize_base_url(url)


def test_container_url_rewrites_only_loopback(echo):
    url = f"http://127.0.0.1:{echo.port}/v1"
    out = providers.container_url(url, listen_host="127.0.0.1")
    port = relay.relays()[0].port
    assert out == f"http://host.docker.internal:{port}/v1"
    assert providers.container_url(f"http://localhost:{echo.port}/v1", listen_host="127.0.0.1").startswith(
        "http://host.docker.internal:"
    )
    assert providers.container_url("http://192.168.1.5:8000/v1", listen_host="127.0.0.1") == "http://192.168.1.5:8000/v1"
    assert providers.is_local_url("http://[::1]:8080/v1")


@pytest.fixture
def settings(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    return load_settings(ws, environ={}, pi_data_dir=str(tmp_path / "pi" / "agent"))


SEED_MODELS = {
    "providers": {
        "llama-cpp": {
            "baseUrl": "http://127.0.0.1:{port}/v1",
            "api": "openai-completions",
            "apiKey": "none",
            "models": [{"id": "qwen", "contextWindow": 4096, "myNote": "hand-written"}],
        },
        "remote": {"baseUrl": "https://api.example/v1", "api": "openai-completions", "models": [{"id": "m"}]},
    },
    "myTopLevelKey": [1, 2, 3],
}


def test_relay_local_providers_rewrites_hand_written_models_json(settings, echo):
    """The host-owned models.json keeps the loopback URL; the sandbox's read-only view gets the relay."""
    cfg = statedir.config_dir(settings)
    cfg.mkdir(parents=True)
    text = json.dumps(SEED_MODELS).replace("{port}", str(echo.port))
    (cfg / "models.json").write_text(text)
    out = providers.relay_local_providers(settings, None, listen_host="127.0.0.1")
    r = relay.relays()[0]
    assert out == {"llama-cpp": f"http://host.docker.internal:{r.port}/v1"}
    assert statedir.read_json(cfg / "models.json") == json.loads(text)  # the user's file is untouched
    data = statedir.read_json(statedir.view_dir(settings) / "models.json")
    assert data["myTopLevelKey"] == [1, 2, 3]
    assert data["providers"]["remote"] == SEED_MODELS["providers"]["remote"]
    llama = data["providers"]["llama-cpp"]
    assert llama["baseUrl"] == out["llama-cpp"]
    assert llama["models"] == [{"id": "qwen", "contextWindow": 4096, "myNote": "hand-written"}]
    record = json.loads((statedir.state_dir(settings) / "relays.json").read_text())
    assert record["llama-cpp"]["hostUrl"] == f"http://127.0.0.1:{echo.port}/v1"

    # Same kernel: the relay is reused, nothing changes.
    assert providers.relay_local_providers(settings, None, listen_host="127.0.0.1") == out
    assert len(relay.relays()) == 1
    # A "restarted kernel" (relays gone) relays again from the record, on the same port.
    relay.stop_all()
    assert providers.relay_local_providers(settings, None, listen_host="127.0.0.1") == out
    with socket.create_connection(relay.relays()[0].address) as c:
        c.sendall(b"ping")
        assert recv_all(c, 4) == b"PING"


def test_provider_written_into_pi_agent_dir_is_not_relayed(settings, echo):
    """pi's agent dir is the agent's: a loopback provider planted there opens no relay."""
    agent = settings.pi_data_path
    agent.mkdir(parents=True)
    (agent / "models.json").write_text(json.dumps(SEED_MODELS).replace("{port}", str(echo.port)))
    assert providers.relay_local_providers(settings, None, listen_host="127.0.0.1") == {}
    assert relay.relays() == []
    assert echo.connections == 0


def test_relay_local_providers_broken_file_is_a_clear_error(settings):
    cfg = statedir.config_dir(settings)
    cfg.mkdir(parents=True)
    (cfg / "models.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        providers.relay_local_providers(settings, None, listen_host="127.0.0.1")


def test_list_models_and_add_server_through_a_relay(settings):
    with ScriptedModelServer(host="127.0.0.1", model_id="qwen", extra_model_ids=["llama"]) as server:
        assert providers.list_server_models(f"http://127.0.0.1:{server.port}") == ["qwen", "llama"]
        provider, ids, url = providers.add_model_server(settings, None, server.url, listen_host="127.0.0.1")
        assert provider == f"local-{server.port}" and ids == ["qwen", "llama"]
        assert url.startswith("http://host.docker.internal:")
        entry = providers.configured_providers(statedir.config_dir(settings))[provider]
        assert entry["baseUrl"] == server.url and entry["api"] == "openai-completions"
        assert [m["id"] for m in entry["models"]] == ["qwen", "llama"]
        view = statedir.read_json(statedir.view_dir(settings) / "models.json")
        assert view["providers"][provider]["baseUrl"] == url
        # The relay really reaches the server.
        r = relay.relays()[0]
        with socket.create_connection(r.address) as c:
            c.sendall(b"GET /v1/models HTTP/1.0\r\nHost: x\r\n\r\n")
            assert b'"qwen"' in recv_all(c, 10**6)


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(RelayError, match="cannot reach"):
        providers.list_server_models(f"http://127.0.0.1:{free_port()}/v1", timeout=3)


def test_provider_names():
    assert providers.provider_name_for("http://127.0.0.1:1337/v1") == "llama-cpp"
    assert providers.provider_name_for("http://localhost:11434") == "ollama"
    assert providers.provider_name_for("http://127.0.0.1:9999/v1") == "local-9999"
    assert providers.provider_name_for("http://gpu.lan:8000/v1") == "gpu-lan-8000"


def test_view_drops_a_stale_relay_url(settings, echo):
    """The record applies only while the host-owned baseUrl is the one relayed: a provider the user
    moved to another URL is shown to the sandbox as written, never at the old relay."""
    cfg = statedir.config_dir(settings)
    cfg.mkdir(parents=True)
    (cfg / "models.json").write_text(json.dumps(SEED_MODELS).replace("{port}", str(echo.port)))
    providers.relay_local_providers(settings, None, listen_host="127.0.0.1")
    providers.merge_provider(cfg, "llama-cpp", {"baseUrl": "https://gpu.example/v1"})
    providers.refresh_view(settings)
    view = providers.configured_providers(statedir.view_dir(settings))
    assert view["llama-cpp"]["baseUrl"] == "https://gpu.example/v1"


def test_register_provider_selects_the_model_and_keeps_hand_written_settings(settings):
    cfg = statedir.config_dir(settings)
    providers.merge_settings(cfg, {"mine": 1, "retry": {"enabled": True, "keep": "me"}})
    entry = providers.provider_config("http://gpu.example/v1", ["a", "b"], name="gpu")
    providers.register_provider(settings, "gpu", entry, model_id="b", retry=False)
    assert settings.model == "gpu/b"
    saved = statedir.read_json(cfg / "settings.json")
    assert saved["mine"] == 1 and saved["defaultProvider"] == "gpu" and saved["defaultModel"] == "b"
    assert saved["retry"] == {"enabled": False, "keep": "me", "maxRetries": 0, "provider": {"maxRetries": 0}}
    assert statedir.read_json(statedir.view_dir(settings) / "settings.json") == saved  # the sandbox sees it
    assert [m["id"] for m in providers.configured_providers(cfg)["gpu"]["models"]] == ["a", "b"]
