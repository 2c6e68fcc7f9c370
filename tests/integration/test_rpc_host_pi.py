"""RpcClient against REAL pi (``pi --mode rpc``) running as a host subprocess via ProcessTransport.

Needs Node >= 22.19 (``PIMAGIC_HOST_NODE``, else ``node`` on PATH) and pi's ``dist/cli.js``
(``PIMAGIC_HOST_PI_CLI``); skipped with a reason otherwise. No model server is needed except for the
last test, which uses pimagic's scripted OpenAI-compatible server.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pimagic.errors import RpcError
from pimagic.rpc import ProcessTransport, RpcClient, assistant_error

pytestmark = pytest.mark.timeout(120)

DEAD = {"provider": "dead", "model": "m1"}  # nothing listens on port 9 (discard): connection refused
HUNG = {"provider": "hung", "model": "h1"}  # accepts the connection, never answers




@pytest.fixture(scope="module")
def hung_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: a model that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for c in conns:
        c.close()
    server.close()


def _provider(base_url: str, model_id: str) -> dict[str, Any]:
    return {"baseUrl": base_url, "api": "openai-completions", "apiKey": "none", "models": [{"id": model_id}]}


def start_pi(
    host_pi: tuple[str, str],
    tmp_path: Path,
    providers: dict[str, Any],
    default: dict[str, str] | None = None,
) -> RpcClient:
    node, cli = host_pi
    agent_dir, work = tmp_path / "agent", tmp_path / "work"
    agent_dir.mkdir()
    work.mkdir()
    (agent_dir / "models.json").write_text(json.dumps({"providers": providers}))
    settings: dict[str, Any] = {"retry": {"enabled": False, "provider": {"maxRetries": 0}}}
    if default:
        settings |= {"defaultProvider": default["provider"], "defaultModel": default["model"]}
    (agent_dir / "settings.json").write_text(json.dumps(settings))
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PI_CODING_AGENT_DIR": str(agent_dir),
        "PI_OFFLINE": "1",
        "PI_SKIP_VERSION_CHECK": "1",
        "PI_TELEMETRY": "0",
    }
    popen = subprocess.Popen(
        [node, cli, "--mode", "rpc", "--no-session"],
        cwd=work,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return RpcClient(ProcessTransport(popen), call_timeout=20.0)


@pytest.fixture
def pi(host_pi: tuple[str, str], tmp_path: Path, hung_server: int) -> Iterator[RpcClient]:
    providers = {
        DEAD["provider"]: _provider("http://127.0.0.1:9/v1", DEAD["model"]),
        HUNG["provider"]: _provider(f"http://127.0.0.1:{hung_server}/v1", HUNG["model"]),
    }
    client = start_pi(host_pi, tmp_path, providers, DEAD)
    try:
        client.wait_ready(60)
        yield client
    finally:
        client.close()


def test_ready_state_and_models(pi: RpcClient) -> None:
    state = pi.get_state()
    for key in (
        "thinkingLevel",
        "isStreaming",
        "isCompacting",
        "steeringMode",
        "followUpMode",
        "sessionId",
        "autoCompactionEnabled",
        "messageCount",
        "pendingMessageCount",
    ):
        assert key in state, f"get_state lacks {key}: {sorted(state)}"
    assert state["isStreaming"] is False and state["messageCount"] == 0
    assert (state["model"]["provider"], state["model"]["id"]) == ("dead", "m1")
    assert state["model"]["api"] == "openai-completions"

    models = {(m["provider"], m["id"]) for m in pi.get_available_models()}
    assert {("dead", "m1"), ("hung", "h1")} <= models

    assert pi.set_model("hung", "h1")["baseUrl"].startswith("http://127.0.0.1:")
    assert pi.get_state()["model"]["provider"] == "hung"
    pi.set_thinking_level("off")
    assert pi.get_session_stats()["totalMessages"] == 0
    assert pi.get_messages() == []
    assert pi.new_session() == {"cancelled": False}


def test_unknown_model_is_rejected_with_pis_message(pi: RpcClient) -> None:
    with pytest.raises(RpcError, match=re.escape("Model not found: nope/x")):
        pi.set_model("nope", "x")
    assert pi.get_state()["model"]["provider"] == "dead"  # unchanged, client still usable


def test_unreachable_model_ends_with_error_message_then_settles(pi: RpcClient) -> None:
    started = time.monotonic()
    events = list(pi.prompt("hello?", timeout=30, event_timeout=20))
    elapsed = time.monotonic() - started
    types = [e["type"] for e in events]
    assert types[0] == "agent_start" and types[-1] == "agent_settled"
    errors = [assistant_error(e) for e in events if assistant_error(e)]
    assert len(errors) == 1 and "connection error" in errors[0].lower()
    end = types.index("message_end", max(i for i, e in enumerate(events) if e["type"] == "message_start"))
    assert types[end:] == ["message_end", "turn_end", "agent_end", "agent_settled"]
    assert events[-1]["aborted"] is False
    assert events[types.index("agent_end")]["willRetry"] is False
    assert elapsed < 10, f"retries should be off; took {elapsed:.1f}s"
    roles = [m["role"] for m in pi.get_messages()]
    assert roles[-2:] == ["user", "assistant"]


def test_interrupt_in_consumer_aborts_then_next_prompt_works(pi: RpcClient) -> None:
    pi.set_model(HUNG["provider"], HUNG["model"])
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        for event in pi.prompt("this will hang"):
            seen.append(event["type"])
            if event["type"] == "message_end" and event["message"]["role"] == "user":
                raise KeyboardInterrupt  # Ctrl-C while the model hangs
    assert seen[0] == "agent_start"
    assert not pi.busy and not pi.closed
    assert pi.get_state()["isStreaming"] is False

    pi.set_model(DEAD["provider"], DEAD["model"])
    events = list(pi.prompt("again", timeout=30))
    assert events[0]["type"] == "agent_start" and events[-1]["type"] == "agent_settled"
    user_texts = [
        e["message"]["content"] for e in events if e["type"] == "message_end" and e["message"]["role"] == "user"
    ]
    assert user_texts == [[{"type": "text", "text": "again"}]]  # no leftovers from the aborted run


def test_second_prompt_refused_until_abort(pi: RpcClient) -> None:
    pi.set_model(HUNG["provider"], HUNG["model"])
    turn = pi.prompt("this will hang")
    assert next(turn)["type"] == "agent_start"
    with pytest.raises(RpcError, match="a turn is already running"):
        next(pi.prompt("second"))
    assert pi.abort(10) is True
    rest = list(turn)  # the held iterator still ends properly
    assert rest[-1] == {"type": "agent_settled", "aborted": True}
    pi.set_model(DEAD["provider"], DEAD["model"])
    assert list(pi.prompt("third", timeout=30))[-1]["type"] == "agent_settled"


def test_abort_of_a_hung_model(pi: RpcClient) -> None:
    pi.set_model(HUNG["provider"], HUNG["model"])
    turn = pi.prompt("hang")
    collected: list[dict[str, Any]] = []
    consumer = threading.Thread(target=lambda: collected.extend(turn))
    consumer.start()
    deadline = time.monotonic() + 10
    while not pi.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert pi.abort(10) is True
    consumer.join(10)
    assert collected[-1] == {"type": "agent_settled", "aborted": True}
    stops = [
        e["message"]["stopReason"]
        for e in collected
        if e["type"] == "message_end" and e["message"]["role"] == "assistant"
    ]
    assert stops == ["aborted"]


def test_pi_killed_fails_with_exit_status(pi: RpcClient) -> None:
    transport = pi.transport
    assert isinstance(transport, ProcessTransport)
    transport.popen.kill()
    with pytest.raises(RpcError, match=r"pi exited \(exit status -9\)"):
        for _ in range(50):
            pi.get_state()
            time.sleep(0.1)
    assert pi.closed


def test_close_ends_pi(pi: RpcClient) -> None:
    transport = pi.transport
    assert isinstance(transport, ProcessTransport)
    pi.close()
    assert transport.popen.poll() is not None
    assert pi.closed


def test_text_turn_through_scripted_model(host_pi: tuple[str, str], tmp_path: Path) -> None:
    scripted = pytest.importorskip("pimagic.scripted_model")
    text = "Hello from the script ✓\u2028second line"
    with scripted.ScriptedModelServer([scripted.say(text)], fallback=None) as server:
        providers = scripted.pi_models_json(server.url)["providers"]
        client = start_pi(host_pi, tmp_path, providers, {"provider": scripted.SCRIPTED_PROVIDER, "model": "scripted"})
        with client:
            client.wait_ready(60)
            events = list(client.prompt("say hello", timeout=60))
    types = [e["type"] for e in events]
    assert types[-1] == "agent_settled" and "agent_end" in types
    deltas = "".join(
        e["assistantMessageEvent"]["delta"]
        for e in events
        if e["type"] == "message_update" and e["assistantMessageEvent"]["type"] == "text_delta"
    )
    assert deltas == text
    final = [e["message"] for e in events if e["type"] == "message_end" and e["message"]["role"] == "assistant"]
    assert final[-1]["stopReason"] == "stop"
    assert final[-1]["content"] == [{"type": "text", "text": text}]
    assert not [e for e in events if assistant_error(e)]
