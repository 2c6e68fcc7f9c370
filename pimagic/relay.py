"""A small TCP relay in the kernel: how the sandbox reaches a server on the host's loopback.

A model server started the usual way on the host (llama.cpp ``--host 127.0.0.1
--port 1337``, Ollama, LM Studio, vLLM) listens on loopback only. The sandbox
reaches the host as ``host.docker.internal``, i.e. Docker's bridge gateway
(e.g. 172.17.0.1, see :func:`bridge_gateway`), where such a server does not listen.
A :class:`Relay` listens on the bridge gateway address (never 0.0.0.0: the model
server must not be exposed to the LAN) and forwards every connection to
``127.0.0.1:PORT``.

What this exposes, and to whom: anything that can reach the bridge gateway
address on the relay's port -- processes on this host and every container on
Docker's default bridge network, the pimagic agent included -- can use the
local model server, without credentials, for as long as the kernel runs. It is
not reachable from other machines (the gateway address is not routed from the
LAN), and nothing else on the host is forwarded.

Relays live as long as the kernel (stopped at interpreter exit, or with
:func:`stop_all`). Which targets get one is pimagic.providers' decision (only
providers of the host-owned config, never a URL the agent can write). Which port
each used is recorded in the host-only ``relays.json`` (:func:`read_record`), so a
restarted kernel reuses it.
"""

from __future__ import annotations

import atexit
import selectors
import socket
import threading
from collections.abc import Iterable
from typing import Any

from . import statedir
from .errors import PimagicError, RelayError

__all__ = [
    "LOCAL_HOSTS",
    "Relay",
    "bridge_gateway",
    "ensure_relay",
    "read_record",
    "relays",
    "stop_all",
    "write_record",
]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
RELAYS_FILE = "relays.json"
CONNECT_TIMEOUT = 10.0
MAX_CONNECTIONS = 64  # open at once per relay; a model client needs a handful
_BUFSIZE = 65536


# --------------------------------------------------------------------------------------------------
# The relay
# --------------------------------------------------------------------------------------------------


class Relay:
    """Forward TCP connections from ``listen_host:listen_port`` to ``target_host:target_port``.

    One accept thread; two copy threads per connection. ``listen_port=0`` lets the
    OS choose. Wildcard listen addresses are refused: bind the one address the
    clients use (the bridge gateway), so nothing else on the network can connect.
    """

    def __init__(
        self, target_port: int, *, listen_host: str, listen_port: int = 0, target_host: str = "127.0.0.1"
    ) -> None:
        if listen_host in WILDCARD_HOSTS:
            raise RelayError(
                f"refusing to relay on the wildcard address {listen_host!r}: that would expose "
                f"{target_host}:{target_port} to the whole network",
                hint="listen on the Docker bridge gateway address",
            )
        self.listen_host = listen_host
        self.target_host = target_host
        self.target_port = int(target_port)
        self._requested_port = int(listen_port)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self.connections = 0  # accepted so far
        self.failures = 0  # connections the target refused
        self.refused = 0  # connections closed at once: MAX_CONNECTIONS were open

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Relay:
        if self._listener is not None:
            return self
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen_host, self._requested_port))
            sock.listen(64)
        except OSError as e:
            sock.close()
            raise RelayError(
                f"cannot listen on {self.listen_host}:{self._requested_port} to relay "
                f"{self.target_host}:{self.target_port}: {e.strerror or e}",
                hint="the kernel must run on the Docker host (not in a VM or another container); "
                "or start the model server on the bridge gateway address yourself",
            ) from None
        sock.setblocking(False)
        self._listener = sock
        self._thread = threading.Thread(target=self._accept_loop, name=f"pimagic-relay-{self.port}", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._listener is not None and not self._stopping.is_set()

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise RelayError("this relay is not running")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        return self.address[1]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, cut open connections, and wait for every thread to end."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets = list(self._sockets)
            workers = list(self._workers)
        for s in sockets:
            _shutdown(s)
        for t in workers:
            t.join(timeout)

    @property
    def active_threads(self) -> int:
        with self._lock:
            return sum(t.is_alive() for t in self._workers) + int(bool(self._thread and self._thread.is_alive()))

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.listen_host}:{self.port}" if self._listener is not None else "stopped"
        return f"Relay({where} -> {self.target_host}:{self.target_port})"

    # -- work ------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        if listener is None:
            return
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not sel.select(timeout=0.1):
                    continue
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    if self._stopping.is_set():
                        return
                    continue
                if self.active_connections() >= MAX_CONNECTIONS:
                    # Each connection costs the kernel two fds and two threads: the sandbox must
                    # not be able to exhaust the notebook's process by opening thousands.
                    self.refused += 1
                    conn.close()
                    continue
                conn.setblocking(True)
                self.connections += 1
                self._spawn(self._serve, conn)

    def active_connections(self) -> int:
        with self._lock:
            self._workers = {w for w in self._workers if w.is_alive()}
            return len(self._workers)

    def _spawn(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name="pimagic-relay-conn", daemon=True)
        with self._lock:
            self._workers = {w for w in self._workers if w.is_alive()}
            self._workers.add(t)
        t.start()

    def _track(self, *socks: socket.socket, add: bool) -> None:
        with self._lock:
            for s in socks:
                (self._sockets.add if add else self._sockets.discard)(s)

    def _serve(self, client: socket.socket) -> None:
        self._track(client, add=True)
        try:
            upstream = socket.create_connection((self.target_host, self.target_port), timeout=CONNECT_TIMEOUT)
        except OSError:
            self.failures += 1
            self._track(client, add=False)
            _shutdown(client)
            client.close()
            return
        upstream.settimeout(None)
        self._track(upstream, add=True)
        if self._stopping.is_set():
            _shutdown(client)
            _shutdown(upstream)
        back = threading.Thread(target=_pipe, args=(upstream, client), name="pimagic-relay-pipe", daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        self._track(client, upstream, add=False)
        client.close()
        upstream.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until EOF, then half-close ``dst`` so the other side sees the end too."""
    try:
        while True:
            data = src.recv(_BUFSIZE)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        _shutdown(src)
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------
# Relays of this kernel
# --------------------------------------------------------------------------------------------------

_registry_lock = threading.Lock()
_relays: dict[tuple[str, str, int], Relay] = {}


def ensure_relay(
    target_port: int, *, listen_host: str, target_host: str = "127.0.0.1", preferred_ports: Iterable[int] = ()
) -> Relay:
    """The running relay of this kernel to ``target_host:target_port`` on ``listen_host``, started if needed.

    A new relay tries ``preferred_ports`` first (e.g. the port a restarted kernel
    used before, or the target's own port, so URLs stay recognisable), then lets
    the OS choose.
    """
    key = (listen_host, target_host, int(target_port))
    with _registry_lock:
        relay = _relays.get(key)
        if relay is not None and relay.running:
            return relay
        last: RelayError | None = None
        loops = listen_host == target_host or {listen_host, target_host} <= LOCAL_HOSTS
        for port in [*dict.fromkeys(p for p in preferred_ports if p), 0]:
            if loops and port == int(target_port):
                continue  # would forward to itself
            try:
                relay = Relay(target_port, listen_host=listen_host, listen_port=port, target_host=target_host)
                relay.start()
                break
            except RelayError as e:
                last = e
        else:
            assert last is not None
            raise last
        _relays[key] = relay
        return relay


def relays() -> list[Relay]:
    """The running relays of this kernel."""
    with _registry_lock:
        return [r for r in _relays.values() if r.running]


def stop_all(timeout: float = 5.0) -> None:
    """Stop every relay of this kernel (also run at interpreter exit)."""
    with _registry_lock:
        items = list(_relays.values())
        _relays.clear()
    for relay in items:
        relay.stop(timeout)


atexit.register(stop_all)


# --------------------------------------------------------------------------------------------------
# Where relays listen, and what they were
# --------------------------------------------------------------------------------------------------


def bridge_gateway(client: Any) -> str:
    """The host's address on Docker's default bridge: where containers find host services."""
    network = client.networks.get("bridge")
    for config in network.attrs.get("IPAM", {}).get("Config") or []:
        if config.get("Gateway"):
            return config["Gateway"]
    return "172.17.0.1"


def read_record(settings: Any) -> dict[str, dict[str, str]]:
    """relays.json in the folder's host-only state dir: provider -> {hostUrl, containerUrl}."""
    try:
        data = statedir.read_json(statedir.state_dir(settings) / RELAYS_FILE)
    except PimagicError:  # a broken record only costs the preferred port
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def write_record(settings: Any, record: dict[str, dict[str, str]]) -> None:
    statedir.write_json(statedir.state_dir(settings) / RELAYS_FILE, record)
