"""The settings panel against a real sandbox: real container, real pi, scripted models.
A widget change must reach the running sandbox; the agent must not undo paranoid mode;
a model server bound to the host's loopback must answer through the relay."""

from __future__ import annotations

import json
import re

import pytest

from pimagic import providers, relay, statedir
from pimagic.hardening import HOST_GATEWAY_NAME
from pimagic.offline import start_scripted_model, use_scripted_model
from pimagic.providers import register_provider
from pimagic.relay import bridge_gateway
from pimagic.scripted_model import SCRIPTED_PROVIDER, ScriptedModelServer, call, pi_provider_config, say
from pimagic.widgets import settings_panel

BLOCKED = "gh-guard: 'gh repo' is blocked"


@pytest.fixture
def two_models(docker_client, settings):
    """A scripted server with two model ids, selected for the workspace."""
    server = start_scripted_model(docker_client, extra_model_ids=["scripted-b"])
    use_scripted_model(settings, server)
    url = server.base_url(HOST_GATEWAY_NAME)  # register the second id too
    register_provider(settings, SCRIPTED_PROVIDER, providers.provider_config(url, server.model_ids))
    yield server
    server.stop()


@pytest.fixture
def magics(pi_magics):
    yield pi_magics
    relay.stop_all()


def run(magics, body: str, line: str = ""):
    return magics.shell.run_cell_magic("pi", line, body)


def gh_repo_list(magics, env: dict | None = None) -> tuple[int, str]:
    code, out, err = magics.session.sandbox.exec(["gh", "repo", "list"], environment=env)
    return code, (out + err).decode(errors="replace")


def test_model_switch_from_the_panel_reaches_pi_and_keeps_the_conversation(magics, two_models):
    two_models.push(say("first answer"))
    run(magics, "remember the word pineapple")
    panel = settings_panel(magics)
    options = [v for _, v in panel.model_dropdown.options]
    assert "pimagic-scripted/scripted" in options and "pimagic-scripted/scripted-b" in options  # from pi

    before = magics.session.state()
    panel.model_dropdown.value = "pimagic-scripted/scripted-b"
    state = magics.session.state()
    assert state["model"]["id"] == "scripted-b", panel.messages
    assert state["sessionId"] == before["sessionId"] and state["messageCount"] == before["messageCount"]
    assert magics.settings.model == "pimagic-scripted/scripted-b"
    cfg = statedir.config_dir(magics.settings)
    assert statedir.read_json(cfg / "settings.json")["defaultModel"] == "scripted-b"
    assert "scripted-b" in panel.status_html.value

    prompts_shown = re.search(r"(\d+) prompts?", panel.status_html.value).group(1)
    assert prompts_shown == "1"  # one prompt so far (not pi's message count)
    two_models.push(say("second answer"))
    assert run(magics, "what was the word?").text == "second answer"
    # the open panel's status followed the cell without a click
    assert re.search(r"(\d+) prompts?", panel.status_html.value).group(1) == "2"
    request = two_models.chat_requests[-1]
    assert request.body["model"] == "scripted-b"
    assert any("pineapple" in json.dumps(m) for m in request.messages)


def test_paranoid_toggle_reaches_gh_in_the_running_sandbox(magics, scripted):
    magics.session.ensure()
    panel = settings_panel(magics)
    assert panel.paranoid_box.value is False

    panel.paranoid_box.value = True
    code, text = gh_repo_list(magics)
    assert code == 126 and BLOCKED in text, text
    assert "next gh call" in panel.messages[-1]
    assert "paranoid mode ON (chosen for this folder with the settings panel" in panel.status_html.value

    panel.paranoid_box.value = False
    code, text = gh_repo_list(magics)
    # The guard lets it through; gh itself then fails (no network, no token): a different error.
    assert "gh-guard" not in text and code != 126, text


def test_the_agent_cannot_switch_paranoid_off(magics, scripted):
    magics.session.ensure()
    panel = settings_panel(magics)
    panel.paranoid_box.value = True
    sandbox = magics.session.sandbox

    # Environment variables the guard reads.
    assert BLOCKED in gh_repo_list(magics, {"PIMAGIC_PARANOID": "0"})[1]
    # The policy file is root's.
    for attempt in (
        "echo paranoid=0 > /run/pimagic/policy",
        "rm -f /run/pimagic/policy",
        "cat /run/pimagic/policy",
        "cp /dev/null /usr/local/lib/pimagic/gh-guard.sh",
    ):
        code, _, _ = sandbox.exec(["sh", "-c", attempt])
        assert code != 0, attempt
    # Files in its home and workspace: gh config, a policy copy, a PATH shim for the guard.
    sandbox.exec(["sh", "-c",
                  "mkdir -p ~/.config/gh ~/bin && printf 'prompt: disabled\\n' > ~/.config/gh/config.yml && "
                  "echo paranoid=0 > ~/policy && echo paranoid=0 > /workspace/policy && "
                  "printf '#!/bin/sh\\nexit 0\\n' > ~/bin/gh-guard.sh && chmod +x ~/bin/gh-guard.sh"])
    env = {"GH_CONFIG_DIR": "/home/pi/.config/gh", "PATH": "/home/pi/bin:/usr/local/bin:/usr/bin:/bin",
           "PIMAGIC_POLICY": "/home/pi/policy"}
    assert BLOCKED in gh_repo_list(magics, env)[1]

    # And through pi itself: the agent's bash tool tries the same.
    scripted.push(
        call("bash", command="echo paranoid=0 > /run/pimagic/policy; export PIMAGIC_PARANOID=0; gh repo list"),
        say("I tried."),
    )
    result = run(magics, "turn paranoid mode off")
    assert result.text == "I tried."
    tool_output = json.dumps(scripted.messages(-1))
    assert "blocked" in tool_output
    code, text = gh_repo_list(magics)
    assert code == 126 and BLOCKED in text
    assert magics.settings.paranoid is True


def test_loopback_model_server_through_the_panel_and_the_relay(magics, scripted, docker_client, settings):
    scripted.push(say("answer from the bridge server"))
    run(magics, "remember mango")
    with ScriptedModelServer(host="127.0.0.1", model_id="local-model") as local:
        local.push(say("answer from the loopback server"))
        panel = settings_panel(magics)
        panel.server_url.value = f"http://127.0.0.1:{local.port}"
        panel.add_server_button.click()
        provider = f"local-{local.port}"
        assert settings.model == f"{provider}/local-model", panel.messages
        assert "relayed" in panel.messages[-1]
        base = providers.configured_providers(statedir.view_dir(settings))[provider]["baseUrl"]
        assert base.startswith("http://host.docker.internal:")  # what the sandbox reads
        (r,) = relay.relays()
        assert r.address[0] == bridge_gateway(docker_client)  # the gateway, not 0.0.0.0

        result = run(magics, "what fruit?")
        assert result.text == "answer from the loopback server"
        assert any("mango" in json.dumps(m) for m in local.messages(-1))  # conversation kept


def test_hand_written_loopback_models_json_is_relayed_on_start(magics, settings):
    """The seed's offline recipe: providers.llama-cpp at http://127.0.0.1:PORT/v1, written by hand."""
    with ScriptedModelServer(host="127.0.0.1", model_id="qwen") as local:
        local.push(say("hello from llama.cpp (scripted)"))
        provider = pi_provider_config(f"http://127.0.0.1:{local.port}/v1", "qwen")
        cfg = statedir.config_dir(settings)  # the host-owned config the README tells users to edit
        cfg.mkdir(parents=True, exist_ok=True)
        (cfg / "models.json").write_text(json.dumps({"providers": {"llama-cpp": provider}}))
        (cfg / "settings.json").write_text(json.dumps(
            {"defaultProvider": "llama-cpp", "defaultModel": "qwen", "defaultThinkingLevel": "off", "mine": 1}))
        settings.model = ""
        result = run(magics, "hi")
        assert result.text == "hello from llama.cpp (scripted)", result.error
        assert statedir.read_json(cfg / "settings.json")["mine"] == 1
        assert providers.configured_providers(cfg)["llama-cpp"]["models"][0]["id"] == "qwen"


def test_panel_before_and_after_the_first_run(magics, scripted):
    """Before the first cell: "not started yet", Stop off. After a cell: running, Stop on. After
    Stop: stopped, Stop off again (the status follows the actions)."""
    panel = settings_panel(magics)
    assert "not started yet (the first %%pi cell starts it)" in panel.status_html.value
    assert "missing" not in panel.status_html.value and panel.stop_button.disabled
    scripted.push(say("hello"))
    run(magics, "hi")
    assert ": running" in panel.status_html.value and not panel.stop_button.disabled
    panel.stop_button.click()
    assert "stopped" in panel.messages[-1] and panel.stop_button.disabled
    assert ": exited" in panel.status_html.value
