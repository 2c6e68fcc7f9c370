"""Local model servers for the sandbox: a small TCP relay plus the URL rewrite.

A model server started the usual way on the host (llama.cpp ``--host 127.0.0.1
--port 1337``, Ollama, LM Studio, vLLM) listens on loopback only. The sandbox
reaches the host as ``host.docker.internal``, i.e. Docker's bridge gateway
(e.g. 172.17.0.1), where such a server does not listen. A :class:`Relay` in the
kernel process listens on the bridge gateway address (never 0.0.0.0: the model
server must not be exposed to the LAN) and forwards every connection to
``127.0.0.1:PORT``.

What this exposes, and to whom: anything that can reach the bridge gateway
address on the relay's port -- processes on this host and every container on
Docker's default bridge network, the pimagic agent included -- can use the
local model server, without credentials, for as long as the kernel runs. It is
not reachable from other machines (the gateway address is not routed from the
LAN), and nothing else on the host is forwarded.

Relays live as long as the kernel (stopped at interpreter exit, or with
:func:`stop_all`). Only providers of the host-owned config (see pimagic.piconfig)
are relayed -- never a URL from pi's agent dir, which the agent can write. Which
port each used is recorded in the host-only ``relays.json``, so a restarted
kernel reuses it.
"""

from __future__ import annotations

import atexit
import json
import re
import selectors
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

from . import piconfig
from .errors import ConfigError, PimagicError

__all__ = [
    "LOCAL_HOSTS",
    "Relay",
    "RelayError",
    "add_model_server",
    "container_url",
    "ensure_relay",
    "is_local_url",
    "list_server_models",
    "normalize_base_url",
    "relay_local_providers",
    "relays",
    "stop_all",
]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
RELAYS_FILE = "relays.json"
CONNECT_TIMEOUT = 10.0
MAX_CONNECTIONS = 64  # open at once per relay; a model client needs a handful
_BUFSIZE = 65536

# Well-known default ports -> a readable provider name.
_KNOWN_PORTS = {11434: "ollama", 1234: "lm-studio", 8000: "vllm", 8080: "llama-cpp", 1337: "llama-cpp"}


class RelayError(PimagicError):
    """A local model server could not be relayed into the sandbox, or listed."""


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
# URLs
# --------------------------------------------------------------------------------------------------


def normalize_base_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; a given path is kept (trailing slash removed)."""
    text = (url or "").strip()
    if text and "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("server URL", url, "expected an http(s) URL such as http://127.0.0.1:8080/v1")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError("server URL", url, "the port is not a number between 0 and 65535") from None
    path = parts.path.rstrip("/") or "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def is_local_url(url: str) -> bool:
    """True when the URL's host is this machine's loopback (which the sandbox cannot reach)."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return False
    return (host or "").lower() in LOCAL_HOSTS


def _port_of(parts: urllib.parse.SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def container_url(
    url: str, client: Any = None, *, listen_host: str | None = None, preferred_ports: Iterable[int] = ()
) -> str:
    """``url`` as the sandbox must use it. A loopback URL gets a relay (started or reused)
    and becomes ``http://host.docker.internal:<relay port>/<same path>``; others are returned as is."""
    from .sandbox import HOST_GATEWAY_NAME

    if not is_local_url(url):
        return url
    parts = urllib.parse.urlsplit(url)
    if listen_host is None:
        if client is None:
            raise RelayError("relaying a local model server needs a Docker client (to find the bridge gateway)")
        from .offline import bridge_gateway

        listen_host = bridge_gateway(client)
    target = "127.0.0.1" if parts.hostname == "127.0.0.1" else parts.hostname or "127.0.0.1"
    port = _port_of(parts)
    relay = ensure_relay(port, listen_host=listen_host, target_host=target, preferred_ports=[*preferred_ports, port])
    netloc = f"{HOST_GATEWAY_NAME}:{relay.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------------------------------
# Providers in models.json
# --------------------------------------------------------------------------------------------------


def read_record(settings: Any) -> dict[str, dict[str, str]]:
    """relays.json in the folder's host-only state dir: provider -> {hostUrl, containerUrl}."""
    try:
        data = piconfig.read_json(piconfig.state_dir(settings) / RELAYS_FILE)
    except PimagicError:  # a broken record only costs the preferred port
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _write_record(settings: Any, record: dict[str, dict[str, str]]) -> None:
    piconfig.write_json(piconfig.state_dir(settings) / RELAYS_FILE, record)


def _relay_one(client: Any, url: str, entry: dict[str, str], listen_host: str | None) -> str:
    """The sandbox URL for loopback `url`; an earlier kernel's relay port is preferred."""
    preferred = []
    if entry.get("hostUrl") == url and entry.get("containerUrl"):
        preferred = [urllib.parse.urlsplit(entry["containerUrl"]).port or 0]
    return container_url(url, client, listen_host=listen_host, preferred_ports=preferred)


def relay_local_providers(settings: Any, client: Any, *, listen_host: str | None = None) -> dict[str, str]:
    """Relay every provider of the HOST-OWNED models.json whose baseUrl is on loopback.

    Called before pi starts, so a hand-written config (the seed's ``providers.llama-cpp``
    at ``http://127.0.0.1:1337/v1``) works in the sandbox. Only what the user configured on
    the host counts: pi's agent dir is the agent's and is never read. The host config keeps
    the loopback URL; the sandbox's read-only view gets ``host.docker.internal:<relay port>``,
    and ``relays.json`` remembers the port for later kernels.
    Returns ``{provider: sandbox baseUrl}`` for the relayed providers.
    Failures are a :class:`RelayError` (or the ConfigError of a broken models.json).
    """
    try:
        providers = piconfig.configured_providers(piconfig.config_dir(settings))
        record = read_record(settings)
        before = json.dumps(record, sort_keys=True)
        out: dict[str, str] = {}
        for name, provider in providers.items():
            url = provider.get("baseUrl") if isinstance(provider, dict) else None
            if not isinstance(url, str) or not is_local_url(url):
                continue
            out[name] = _relay_one(client, url, record.get(name) or {}, listen_host)
            record[name] = {"hostUrl": url, "containerUrl": out[name]}
        if json.dumps(record, sort_keys=True) != before:
            _write_record(settings, record)
        piconfig.refresh_view(settings)
        return out
    except PimagicError:
        raise
    except Exception as e:
        raise RelayError(
            f"could not relay local model servers into the sandbox: {type(e).__name__}: {e}",
            hint=f"check models.json in {piconfig.config_dir(settings)}, or use a baseUrl the sandbox can reach",
        ) from e


# --------------------------------------------------------------------------------------------------
# Adding a local OpenAI-compatible server
# --------------------------------------------------------------------------------------------------


def list_server_models(url: str, *, timeout: float = 10.0) -> list[str]:
    """Model ids served by an OpenAI-compatible server: ``GET <base>/models`` (base ends in /v1)."""
    base = normalize_base_url(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    request = urllib.request.Request(base + "/models", headers={"Accept": "application/json"})
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(4 * 2**20)
    except urllib.error.HTTPError as e:
        raise RelayError(
            f"{base}/models answered HTTP {e.code}", hint="is this an OpenAI-compatible server (…/v1)?"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RelayError(
            f"cannot reach {base}/models: {reason}", hint="is the model server running on this machine?"
        ) from None
    try:
        data = json.loads(body)
        items = data.get("data") if isinstance(data, dict) else data
        if not isinstance(items, list) and isinstance(data, dict):
            items = data.get("models")  # Ollama's native /api/tags shape
        ids = [str(m.get("id") or m.get("name") or m.get("model")) for m in items or [] if isinstance(m, dict)]
    except (ValueError, AttributeError, TypeError):
        raise RelayError(f"{base}/models did not return an OpenAI-style model list") from None
    ids = [i for i in dict.fromkeys(ids) if i and i != "None"]
    if not ids:
        raise RelayError(f"{base}/models lists no models", hint="load a model in the server first")
    return ids


def provider_name_for(url: str) -> str:
    """A readable provider id for a server URL: llama-cpp, ollama, lm-studio, vllm or local-PORT."""
    parts = urllib.parse.urlsplit(normalize_base_url(url))
    port = _port_of(parts)
    if parts.hostname and parts.hostname.lower() not in LOCAL_HOSTS:
        host = re.sub(r"[^a-z0-9]+", "-", parts.hostname.lower()).strip("-")
        return f"{host}-{port}"
    return _KNOWN_PORTS.get(port, f"local-{port}")


def provider_config(base_url: str, model_ids: list[str], *, name: str | None = None) -> dict[str, Any]:
    """A models.json provider entry for a generic OpenAI-compatible server (llama.cpp, Ollama, LM Studio, vLLM)."""
    from .scripted_model import pi_provider_config

    config = pi_provider_config(base_url, model_ids[0])
    config["name"] = name or "local OpenAI-compatible server"
    template = config["models"][0]
    config["models"] = [{**template, "id": mid, "name": mid} for mid in model_ids]
    return config


def add_model_server(
    settings: Any, client: Any, url: str, *, name: str | None = None, model_ids: list[str] | None = None,
    listen_host: str | None = None,
) -> tuple[str, list[str], str]:
    """List a server's models and register it in the workspace's models.json.

    A loopback URL is relayed (see :func:`container_url`). Returns ``(provider, model ids,
    sandbox baseUrl)``. Does not select a model: the caller does (pi only sees a new provider
    after its process restarts).
    """
    from .offline import register_provider

    base = normalize_base_url(url)
    ids = model_ids or list_server_models(base)
    provider = name or provider_name_for(base)
    sandbox_url = container_url(base, client, listen_host=listen_host)
    # The host config keeps the URL the user gave; the sandbox's view gets the relay's.
    register_provider(settings, provider, provider_config(base, ids, name=f"{provider} ({base})"))
    if sandbox_url != base:
        record = read_record(settings)
        record[provider] = {"hostUrl": base, "containerUrl": sandbox_url}
        _write_record(settings, record)
    piconfig.refresh_view(settings)
    return provider, ids, sandbox_url
