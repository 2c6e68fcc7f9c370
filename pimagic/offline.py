"""Point the sandbox at a model server on the host: the shipped scripted model
(offline demo, tests) or any OpenAI-compatible server. The container reaches
the host through Docker's bridge gateway (`host.docker.internal`)."""

from __future__ import annotations

from typing import Any

from . import piconfig
from .config import PimagicSettings
from .sandbox import HOST_GATEWAY_NAME
from .scripted_model import SCRIPTED_PROVIDER, ScriptedModelServer, pi_provider_config


def bridge_gateway(client: Any) -> str:
    """The host's address on Docker's default bridge: where containers find host services."""
    network = client.networks.get("bridge")
    for config in network.attrs.get("IPAM", {}).get("Config") or []:
        if config.get("Gateway"):
            return config["Gateway"]
    return "172.17.0.1"


def register_provider(
    settings: PimagicSettings, name: str, provider: dict[str, Any], *, model_id: str | None = None,
    retry: bool | None = None,
) -> None:
    """Merge a provider into the folder's host-owned models.json (never pi's agent dir, which the
    agent can write) and, with `model_id`, make it the default; refreshes the sandbox's view."""
    cfg = piconfig.config_dir(settings)
    piconfig.merge_provider(cfg, name, provider)
    values: dict[str, Any] = {}
    if model_id:
        values.update(defaultProvider=name, defaultModel=model_id)
        settings.model = f"{name}/{model_id}"
    if retry is not None:
        values["retry"] = {"enabled": retry, "provider": {"maxRetries": 0}}
        if not retry:
            values["retry"]["maxRetries"] = 0
    if values:
        piconfig.merge_settings(cfg, values)
    piconfig.refresh_view(settings)


def start_scripted_model(client: Any, script: Any = None, **kwargs: Any) -> ScriptedModelServer:
    """A scripted model server bound to the bridge gateway (reachable from containers, not the LAN)."""
    return ScriptedModelServer(script=script, host=bridge_gateway(client), **kwargs).start()


def use_scripted_model(settings: PimagicSettings, server: ScriptedModelServer, *, retry: bool = False) -> str:
    """Make the workspace's pi use `server`; returns the `provider/model` it selected."""
    url = server.base_url(HOST_GATEWAY_NAME)
    model_id = server.model_ids[0]
    register_provider(settings, SCRIPTED_PROVIDER, pi_provider_config(url, model_id), model_id=model_id,
                      retry=retry)
    return f"{SCRIPTED_PROVIDER}/{model_id}"
