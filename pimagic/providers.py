"""pi's model providers: the host-owned models.json / settings.json and local model servers.

The user, the settings panel and pimagic write providers into the folder's host-owned config
(``pi-config/`` in the state dir, see pimagic.statedir); pi reads a read-only copy of it, the
*view*, where a provider on the host's loopback gets its relay's URL (pimagic.relay). Only the
host-owned config decides what is relayed: pi's agent dir is the agent's and is never read, so
a URL the agent writes never opens a host port. Credentials in models.json stay in those
host-owned files; nothing here reads what the sandbox can write.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import relay, statedir
from .config import PimagicSettings
from .errors import ConfigError, PimagicError, RelayError
from .hardening import HOST_GATEWAY_NAME
from .scripted_model import pi_provider_config

__all__ = [
    "add_model_server",
    "configured_providers",
    "container_url",
    "deep_merge",
    "is_local_url",
    "list_server_models",
    "merge_provider",
    "merge_settings",
    "normalize_base_url",
    "provider_config",
    "provider_name_for",
    "refresh_view",
    "register_provider",
    "relay_local_providers",
]

# Well-known default ports -> a readable provider name.
_KNOWN_PORTS = {11434: "ollama", 1234: "lm-studio", 8000: "vllm", 8080: "llama-cpp", 1337: "llama-cpp"}


# --------------------------------------------------------------------------------------------------
# The host-owned files and the sandbox's view of them
# --------------------------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` over `base`, recursing into objects; keys only in `base` survive."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_provider(cfg_dir: Path, name: str, provider: Mapping[str, Any]) -> None:
    """Add or update one provider in the host-owned models.json; other providers and keys are kept.

    Models of the provider are merged by id, so a model the user tuned by hand
    keeps its extra fields.
    """
    path = Path(cfg_dir) / statedir.MODELS_FILE
    data = statedir.read_json(path)
    providers = dict(data.get("providers") or {})
    current = dict(providers.get(name) or {})
    merged = deep_merge(current, {k: v for k, v in provider.items() if k != "models"})
    if "models" in provider:
        by_id = {m.get("id"): dict(m) for m in current.get("models") or [] if isinstance(m, Mapping)}
        for model in provider["models"]:
            by_id[model["id"]] = deep_merge(by_id.get(model["id"], {}), model)
        merged["models"] = list(by_id.values())
    providers[name] = merged
    data["providers"] = providers
    statedir.write_json(path, data)


def merge_settings(cfg_dir: Path, values: Mapping[str, Any]) -> None:
    """Merge keys into the host-owned settings.json (e.g. defaultProvider, defaultModel, retry)."""
    path = Path(cfg_dir) / statedir.SETTINGS_FILE
    statedir.write_json(path, deep_merge(statedir.read_json(path), values))


def configured_providers(cfg_dir: Path) -> dict[str, Any]:
    """The ``providers`` of the models.json in `cfg_dir` (the host-owned config or the view)."""
    return dict(statedir.read_json(Path(cfg_dir) / statedir.MODELS_FILE).get("providers") or {})


def refresh_view(settings: Any) -> None:
    """The view = the host-owned config, with each relayed provider's baseUrl replaced by its
    relay's sandbox URL (from the host-only relays record)."""
    cfg = statedir.config_dir(settings)
    models = statedir.read_json(cfg / statedir.MODELS_FILE)
    record = relay.read_record(settings)
    providers = dict(models.get("providers") or {})
    for name, provider in providers.items():
        entry = record.get(name) or {}
        if isinstance(provider, Mapping) and entry.get("containerUrl") and provider.get("baseUrl") == entry.get(
            "hostUrl"
        ):
            providers[name] = {**provider, "baseUrl": entry["containerUrl"]}
    if providers:
        models = {**models, "providers": providers}
    statedir.write_view(settings, models, statedir.read_json(cfg / statedir.SETTINGS_FILE))


def register_provider(
    settings: PimagicSettings, name: str, provider: dict[str, Any], *, model_id: str | None = None,
    retry: bool | None = None,
) -> None:
    """Merge a provider into the folder's host-owned models.json (never pi's agent dir, which the
    agent can write) and, with `model_id`, make it the default; refreshes the sandbox's view."""
    cfg = statedir.config_dir(settings)
    merge_provider(cfg, name, provider)
    values: dict[str, Any] = {}
    if model_id:
        values.update(defaultProvider=name, defaultModel=model_id)
        settings.model = f"{name}/{model_id}"
    if retry is not None:
        values["retry"] = {"enabled": retry, "provider": {"maxRetries": 0}}
        if not retry:
            values["retry"]["maxRetries"] = 0
    if values:
        merge_settings(cfg, values)
    refresh_view(settings)


# --------------------------------------------------------------------------------------------------
# URLs as the sandbox sees them
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
    return (host or "").lower() in relay.LOCAL_HOSTS


def _port_of(parts: urllib.parse.SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def container_url(
    url: str, client: Any = None, *, listen_host: str | None = None, preferred_ports: Iterable[int] = ()
) -> str:
    """``url`` as the sandbox must use it. A loopback URL gets a relay (started or reused)
    and becomes ``http://host.docker.internal:<relay port>/<same path>``; others are returned as is."""
    if not is_local_url(url):
        return url
    parts = urllib.parse.urlsplit(url)
    if listen_host is None:
        if client is None:
            raise RelayError("relaying a local model server needs a Docker client (to find the bridge gateway)")
        listen_host = relay.bridge_gateway(client)
    target = parts.hostname or "127.0.0.1"
    port = _port_of(parts)
    tcp = relay.ensure_relay(
        port, listen_host=listen_host, target_host=target, preferred_ports=[*preferred_ports, port]
    )
    netloc = f"{HOST_GATEWAY_NAME}:{tcp.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------------------------------
# Relaying the host-owned providers
# --------------------------------------------------------------------------------------------------


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
        providers = configured_providers(statedir.config_dir(settings))
        record = relay.read_record(settings)
        before = json.dumps(record, sort_keys=True)
        out: dict[str, str] = {}
        for name, provider in providers.items():
            url = provider.get("baseUrl") if isinstance(provider, dict) else None
            if not isinstance(url, str) or not is_local_url(url):
                continue
            out[name] = _relay_one(client, url, record.get(name) or {}, listen_host)
            record[name] = {"hostUrl": url, "containerUrl": out[name]}
        if json.dumps(record, sort_keys=True) != before:
            relay.write_record(settings, record)
        refresh_view(settings)
        return out
    except PimagicError:
        raise
    except Exception as e:
        raise RelayError(
            f"could not relay local model servers into the sandbox: {type(e).__name__}: {e}",
            hint=f"check models.json in {statedir.config_dir(settings)}, or use a baseUrl the sandbox can reach",
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
    if parts.hostname and parts.hostname.lower() not in relay.LOCAL_HOSTS:
        host = re.sub(r"[^a-z0-9]+", "-", parts.hostname.lower()).strip("-")
        return f"{host}-{port}"
    return _KNOWN_PORTS.get(port, f"local-{port}")


def provider_config(base_url: str, model_ids: list[str], *, name: str | None = None) -> dict[str, Any]:
    """A models.json provider entry for a generic OpenAI-compatible server (llama.cpp, Ollama, LM Studio, vLLM)."""
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
    base = normalize_base_url(url)
    ids = model_ids or list_server_models(base)
    provider = name or provider_name_for(base)
    sandbox_url = container_url(base, client, listen_host=listen_host)
    # The host config keeps the URL the user gave; the sandbox's view gets the relay's.
    register_provider(settings, provider, provider_config(base, ids, name=f"{provider} ({base})"))
    if sandbox_url != base:
        record = relay.read_record(settings)
        record[provider] = {"hostUrl": base, "containerUrl": sandbox_url}
        relay.write_record(settings, record)
    refresh_view(settings)
    return provider, ids, sandbox_url
