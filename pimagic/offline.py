"""Point the sandbox at the shipped scripted model (offline demo, tests). The container
reaches the host through Docker's bridge gateway (`host.docker.internal`), so the server
listens there, not on the LAN."""

from __future__ import annotations

from typing import Any

from .config import PimagicSettings
from .hardening import HOST_GATEWAY_NAME
from .providers import register_provider
from .relay import bridge_gateway
from .scripted_model import SCRIPTED_PROVIDER, ScriptedModelServer, pi_provider_config


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
