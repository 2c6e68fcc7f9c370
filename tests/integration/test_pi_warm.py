"""container/pi-warm.js: in pi's RPC process, the model API's module is loaded in the background
after start-up (so the first prompt does not load it); nothing is loaded for other node processes,
and a name from pi's config files cannot make it load anything but one of pi-ai's own API modules.
Real image, real pi, a sandbox from the real start path; the preload's trace (PIMAGIC_WARM_TRACE=1)
says what it did."""

from __future__ import annotations

import json
import time

import pytest

from pimagic.rpc import RpcClient, SocketTransport
from pimagic.scripted_model import say
from pimagic.session import PI_SAFE_FLAGS, PiSession

pytestmark = pytest.mark.timeout(180)

TRACE = {"PIMAGIC_WARM_TRACE": "1"}
FIREWALL_ONLY = "--require=/usr/local/lib/pimagic/app-firewall.js"


@pytest.fixture
def session(settings, scripted):
    s = PiSession(settings, "pi-warm")
    s.open()
    yield s
    s.close()


def rpc_pi(session: PiSession, environment: dict[str, str]) -> RpcClient:
    """A second pi RPC process in the session's sandbox, with extra environment."""
    _, sock = session.sandbox.exec_socket(["pi", "--mode", "rpc", *PI_SAFE_FLAGS], environment=environment)
    rpc = RpcClient(SocketTransport(sock))
    rpc.wait_ready(90)
    return rpc


def trace_of(rpc: RpcClient, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in rpc.stderr_tail.splitlines() if line.startswith("pi-warm:")]
        if lines:
            return lines[0]
        time.sleep(0.05)
    return ""


def answer(rpc: RpcClient, prompt: str) -> str:
    ends = [e["message"] for e in rpc.prompt(prompt, timeout=60)
            if e.get("type") == "message_end" and (e.get("message") or {}).get("role") == "assistant"]
    return "".join(c.get("text", "") for c in ends[-1]["content"] if c.get("type") == "text")


def test_pi_loads_the_models_api_in_the_background_and_still_answers(session, scripted):
    scripted.push(say("warm answer"))
    rpc = rpc_pi(session, TRACE)
    try:
        assert trace_of(rpc) == "pi-warm: loaded openai-completions", rpc.stderr_tail
        assert answer(rpc, "hello") == "warm answer"
    finally:
        rpc.close(timeout=2)


def test_control_without_the_preload_there_is_no_trace(session, scripted):
    """The trace above is the preload's: with only the firewall preloaded, pi says nothing."""
    scripted.push(say("cold answer"))
    rpc = rpc_pi(session, {**TRACE, "NODE_OPTIONS": FIREWALL_ONLY})
    try:
        assert answer(rpc, "hello") == "cold answer"
        assert trace_of(rpc, timeout=2) == ""
    finally:
        rpc.close(timeout=2)


def test_other_node_processes_load_nothing(session):
    code, out, err = session.sandbox.exec(
        ["sh", "-c", "PIMAGIC_WARM_TRACE=1 node -e 'setTimeout(() => {}, 1500)'; "
                     "PIMAGIC_WARM_TRACE=1 pi --version"])
    assert code == 0, err
    assert b"pi-warm" not in out + err


@pytest.mark.parametrize("api", ["../../../../../../tmp/evil", "lazy", "/tmp/evil"])
def test_a_name_from_the_config_loads_only_pi_ais_own_api_modules(session, api):
    """Agent-chosen config (an agent dir it wrote: pi's real one is host-owned and read-only) naming
    a path or a module that is not a lazily loaded API: nothing is loaded, pi still starts."""
    files = {
        "/tmp/evil.js": "import { writeFileSync } from 'node:fs'; writeFileSync('/tmp/evil-ran', 'x');\n",
        "/tmp/agent/settings.json": json.dumps({"defaultProvider": "x", "defaultModel": "m"}),
        "/tmp/agent/models.json": json.dumps({"providers": {"x": {"api": api, "models": [{"id": "m"}]}}}),
    }
    for path, text in files.items():
        code, _, err = session.sandbox.exec(["sh", "-c", f"mkdir -p /tmp/agent && cat > {path}"], stdin=text.encode())
        assert code == 0, err
    rpc = rpc_pi(session, {**TRACE, "PI_CODING_AGENT_DIR": "/tmp/agent"})
    try:
        assert trace_of(rpc) == "pi-warm: nothing to load", rpc.stderr_tail
    finally:
        rpc.close(timeout=2)
    code, _, _ = session.sandbox.exec(["test", "-e", "/tmp/evil-ran"])
    assert code != 0
