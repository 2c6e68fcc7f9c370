"""The TCP relay, its registry and its host-only record, on loopback only (no Docker)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from _loopback import free_port, recv_all

from pimagic import relay, statedir
from pimagic.config import load_settings
from pimagic.errors import RelayError
from pimagic.relay import Relay

pytestmark = pytest.mark.usefixtures("no_leftover_relays")


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


class _FakeNetwork:
    def __init__(self, config: list[dict[str, str]]) -> None:
        self.attrs = {"IPAM": {"Config": config}}


class _FakeClient:
    """The one Docker call bridge_gateway makes: networks.get("bridge")."""

    def __init__(self, config: list[dict[str, str]]) -> None:
        self.networks = self
        self._config = config

    def get(self, name: str) -> _FakeNetwork:
        assert name == "bridge"
        return _FakeNetwork(self._config)


def test_bridge_gateway_is_the_default_bridges_gateway():
    assert relay.bridge_gateway(_FakeClient([{"Subnet": "fd00::/64"}, {"Gateway": "172.18.0.1"}])) == "172.18.0.1"
    assert relay.bridge_gateway(_FakeClient([])) == "172.17.0.1"  # Docker's default when IPAM says nothing


@pytest.fixture
def settings(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    return load_settings(ws, environ={}, pi_data_dir=str(tmp_path / "pi" / "agent"))


def test_record_round_trip_and_broken_record(settings):
    """relays.json is host-only bookkeeping: a broken or planted one only costs the preferred port."""
    assert relay.read_record(settings) == {}
    entry = {"hostUrl": "http://127.0.0.1:1337/v1", "containerUrl": "http://host.docker.internal:41337/v1"}
    relay.write_record(settings, {"llama-cpp": entry, "junk": "not an entry"})  # type: ignore[dict-item]
    assert relay.read_record(settings) == {"llama-cpp": entry}
    path = statedir.state_dir(settings) / relay.RELAYS_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.write_text("{ not json")
    assert relay.read_record(settings) == {}
    path.unlink()
    target = settings.workspace_path / "elsewhere.json"
    target.write_text('{"llama-cpp": {"hostUrl": "x", "containerUrl": "y"}}')
    path.symlink_to(target)
    assert relay.read_record(settings) == {}  # a symlink is never followed
