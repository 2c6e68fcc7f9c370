"""The TCP relay and the loopback-URL rewrite, on loopback only (no Docker)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from pimagic import piconfig, relay
from pimagic.config import load_settings
from pimagic.errors import ConfigError
from pimagic.relay import Relay, RelayError
from pimagic.scripted_model import ScriptedModelServer


class EchoServer:
    """Loopback TCP server: upper-cases what it receives, closes after the client's EOF."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                self.received.extend(data)
                conn.sendall(data.upper())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _no_leftover_relays():
    yield
    relay.stop_all()


def recv_all(sock: socket.socket, size: int, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf.extend(chunk)
    return bytes(buf)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_forwards_bytes_both_ways(echo):
    with Relay(echo.port, listen_host="127.0.0.1") as r:
        assert r.port != echo.port
        with socket.create_connection(r.address) as c:
            c.sendall(b"hello relay")
            assert recv_all(c, 11) == b"HELLO RELAY"
            payload = bytes(range(97, 123)) * 40000  # ~1 MB, more than any buffer
            sender = threading.Thread(target=c.sendall, args=(payload,))
            sender.start()
            assert recv_all(c, len(payload), timeout=30) == payload.upper()
            sender.join()
            c.shutdown(socket.SHUT_WR)  # half-close travels through: the echo server closes
            assert c.recv(10) == b""
        assert bytes(echo.received).startswith(b"hello relay")
        assert r.connections == 1


def test_several_connections_at_once(echo):
    with Relay(echo.port, listen_host="127.0.0.1") as r:
        clients = [socket.create_connection(r.address) for _ in range(5)]
        for i, c in enumerate(clients):
            c.sendall(f"client{i}".encode())
        for i, c in enumerate(clients):
            assert recv_all(c, 7) == f"CLIENT{i}".encode()
            c.close()


def test_open_connections_are_capped(echo, monkeypatch):
    """Red-team finding: 1500 connections from the sandbox took the kernel to its fd limit (each
    costs two fds and two threads). Past the cap a connection is closed at once; the open ones work."""
    monkeypatch.setattr(relay, "MAX_CONNECTIONS", 4)
    with Relay(echo.port, listen_host="127.0.0.1") as r:
        held = [socket.create_connection(r.address) for _ in range(4)]
        for c in held:
            c.sendall(b"ok")
            assert recv_all(c, 2) == b"OK"
        extra = [socket.create_connection(r.address) for _ in range(20)]
        for c in extra:
            assert recv_all(c, 1, timeout=5) == b"", "closed at once"
            c.close()
        assert r.refused == 20 and r.active_connections() == 4
        for c in held:
            c.close()
        deadline = time.monotonic() + 5
        while r.active_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(r.address) as again:  # room again once they closed
            again.sendall(b"back")
            assert recv_all(again, 4) == b"BACK"


def test_stops_cleanly_and_cuts_open_connections(echo):
    r = Relay(echo.port, listen_host="127.0.0.1").start()
    address = r.address
    c = socket.create_connection(address)
    c.sendall(b"x")
    assert recv_all(c, 1) == b"X"
    started = time.monotonic()
    r.stop()
    assert time.monotonic() - started < 3
    assert r.active_threads == 0
    assert not r.running
    c.settimeout(5)
    try:
        assert c.recv(10) == b""  # the open connection was closed
    except ConnectionResetError:
        pass
    c.close()
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2)


def test_binds_only_the_requested_address(echo):
    with Relay(echo.port, listen_host="127.0.0.1") as r:
        assert r.address[0] == "127.0.0.1"
        with socket.create_connection(r.address):
            pass
        # 127.0.0.2 is this machine too, but the relay did not bind it.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", r.port), timeout=2)


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", ""])
def test_refuses_wildcard_addresses(wildcard):
    with pytest.raises(RelayError, match="wildcard"):
        Relay(1337, listen_host=wildcard)


def test_target_down_closes_the_client_connection():
    with Relay(free_port(), listen_host="127.0.0.1") as r:
        with socket.create_connection(r.address) as c:
            c.settimeout(10)
            try:
                assert c.recv(10) == b""
            except ConnectionResetError:
                pass
        deadline = time.monotonic() + 5
        while r.failures < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.failures == 1


def test_bind_failure_is_a_clear_error():
    with pytest.raises(RelayError, match="cannot listen on 192.0.2.1"):
        Relay(1337, listen_host="192.0.2.1").start()  # TEST-NET: not an address of this machine


def test_ensure_relay_reuses_and_never_loops(echo):
    a = relay.ensure_relay(echo.port, listen_host="127.0.0.1", preferred_ports=[echo.port])
    assert a.port != echo.port  # same host and port as the target would forward to itself
    b = relay.ensure_relay(echo.port, listen_host="127.0.0.1")
    assert a is b and relay.relays() == [a]
    relay.stop_all()
    assert relay.relays() == [] and not a.running


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
    assert relay.normalize_base_url(url) == expected


@pytest.mark.parametrize("url", ["", "ftp://x/v1", "http://:80", "http://h:99999/v1"])
def test_normalize_rejects_bad_urls(url):
    with pytest.raises(ConfigError):
        relay.normalize_base_url(url)


def test_container_url_rewrites_only_loopback(echo):
    url = f"http://127.0.0.1:{echo.port}/v1"
    out = relay.container_url(url, listen_host="127.0.0.1")
    port = relay.relays()[0].port
    assert out == f"http://host.docker.internal:{port}/v1"
    assert relay.container_url(f"http://localhost:{echo.port}/v1", listen_host="127.0.0.1").startswith(
        "http://host.docker.internal:"
    )
    assert relay.container_url("http://192.168.1.5:8000/v1", listen_host="127.0.0.1") == "http://192.168.1.5:8000/v1"
    assert relay.is_local_url("http://[::1]:8080/v1")


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
    cfg = piconfig.config_dir(settings)
    cfg.mkdir(parents=True)
    text = json.dumps(SEED_MODELS).replace("{port}", str(echo.port))
    (cfg / "models.json").write_text(text)
    out = relay.relay_local_providers(settings, None, listen_host="127.0.0.1")
    r = relay.relays()[0]
    assert out == {"llama-cpp": f"http://host.docker.internal:{r.port}/v1"}
    assert piconfig.read_json(cfg / "models.json") == json.loads(text)  # the user's file is untouched
    data = piconfig.read_json(piconfig.view_dir(settings) / "models.json")
    assert data["myTopLevelKey"] == [1, 2, 3]
    assert data["providers"]["remote"] == SEED_MODELS["providers"]["remote"]
    llama = data["providers"]["llama-cpp"]
    assert llama["baseUrl"] == out["llama-cpp"]
    assert llama["models"] == [{"id": "qwen", "contextWindow": 4096, "myNote": "hand-written"}]
    record = json.loads((piconfig.state_dir(settings) / "relays.json").read_text())
    assert record["llama-cpp"]["hostUrl"] == f"http://127.0.0.1:{echo.port}/v1"

    # Same kernel: the relay is reused, nothing changes.
    assert relay.relay_local_providers(settings, None, listen_host="127.0.0.1") == out
    assert len(relay.relays()) == 1
    # A "restarted kernel" (relays gone) relays again from the record, on the same port.
    relay.stop_all()
    assert relay.relay_local_providers(settings, None, listen_host="127.0.0.1") == out
    with socket.create_connection(relay.relays()[0].address) as c:
        c.sendall(b"ping")
        assert recv_all(c, 4) == b"PING"


def test_provider_written_into_pi_agent_dir_is_not_relayed(settings, echo):
    """pi's agent dir is the agent's: a loopback provider planted there opens no relay."""
    agent = settings.pi_data_path
    agent.mkdir(parents=True)
    (agent / "models.json").write_text(json.dumps(SEED_MODELS).replace("{port}", str(echo.port)))
    assert relay.relay_local_providers(settings, None, listen_host="127.0.0.1") == {}
    assert relay.relays() == []
    assert echo.connections == 0


def test_relay_local_providers_broken_file_is_a_clear_error(settings):
    cfg = piconfig.config_dir(settings)
    cfg.mkdir(parents=True)
    (cfg / "models.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        relay.relay_local_providers(settings, None, listen_host="127.0.0.1")


def test_list_models_and_add_server_through_a_relay(settings):
    with ScriptedModelServer(host="127.0.0.1", model_id="qwen", extra_model_ids=["llama"]) as server:
        assert relay.list_server_models(f"http://127.0.0.1:{server.port}") == ["qwen", "llama"]
        provider, ids, url = relay.add_model_server(settings, None, server.url, listen_host="127.0.0.1")
        assert provider == f"local-{server.port}" and ids == ["qwen", "llama"]
        assert url.startswith("http://host.docker.internal:")
        entry = piconfig.configured_providers(piconfig.config_dir(settings))[provider]
        assert entry["baseUrl"] == server.url and entry["api"] == "openai-completions"
        assert [m["id"] for m in entry["models"]] == ["qwen", "llama"]
        view = piconfig.read_json(piconfig.view_dir(settings) / "models.json")
        assert view["providers"][provider]["baseUrl"] == url
        # The relay really reaches the server.
        r = relay.relays()[0]
        with socket.create_connection(r.address) as c:
            c.sendall(b"GET /v1/models HTTP/1.0\r\nHost: x\r\n\r\n")
            assert b'"qwen"' in recv_all(c, 10**6)


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(RelayError, match="cannot reach"):
        relay.list_server_models(f"http://127.0.0.1:{free_port()}/v1", timeout=3)


def test_provider_names():
    assert relay.provider_name_for("http://127.0.0.1:1337/v1") == "llama-cpp"
    assert relay.provider_name_for("http://localhost:11434") == "ollama"
    assert relay.provider_name_for("http://127.0.0.1:9999/v1") == "local-9999"
    assert relay.provider_name_for("http://gpu.lan:8000/v1") == "gpu-lan-8000"
