"""Real pi (``--mode rpc``) against the scripted model server on the host.

Needs Node >= 22.19 (``PIMAGIC_HOST_NODE`` or ``node`` on PATH) and pi's ``dist/cli.js``
(``PIMAGIC_HOST_PI_CLI``); skipped with a reason otherwise.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pimagic.scripted_model import (
    SCRIPTED_PROVIDER,
    ScriptedModelServer,
    Turn,
    call,
    drop,
    error,
    hang,
    pi_models_json,
    pi_settings,
    say,
)

HELLO = "Hello from the scripted model!\nSecond line ✓\n"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def node_bin(host_pi) -> str:
    return host_pi[0]


@pytest.fixture(scope="module")
def pi_cli(host_pi) -> str:
    return host_pi[1]


class PiRpc:
    """Minimal pi RPC client: JSONL on stdin, records split on LF only (see pi docs/rpc.md)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.records: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self._ids = iter(range(1, 1_000_000))
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # binary readline splits on b"\n" only
            line = line.rstrip(b"\r\n")
            if line:
                self.records.put(json.loads(line))
        self.records.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):  # type: ignore[union-attr]
            self.stderr += chunk

    def send(self, command: dict[str, Any]) -> str:
        command = {"id": f"req-{next(self._ids)}", **command}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        return command["id"]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s; stderr:\n{self.stderr.decode(errors='replace')}")
            try:
                record = self.records.get(timeout=left)
            except queue.Empty:
                continue
            if record is None:
                raise AssertionError(f"pi exited ({self.proc.poll()}); stderr:\n{self.stderr.decode(errors='replace')}")
            self.seen.append(record)
            if predicate(record):
                return record

    def request(self, command: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        cid = self.send(command)
        response = self.wait_for(lambda r: r.get("type") == "response" and r.get("id") == cid, timeout)
        assert response["success"], response
        return response

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()  # orderly shutdown per docs/rpc.md
            except OSError:
                pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def run_pi(node_bin: str, pi_cli: str, tmp_path: Path) -> Iterator[Callable[..., tuple[PiRpc, Path]]]:
    """Start ``pi --mode rpc --no-session`` wired to a scripted server; wait until it is ready."""
    clients: list[PiRpc] = []

    def start(server: ScriptedModelServer, **settings: Any) -> tuple[PiRpc, Path]:
        agent_dir = tmp_path / "agent"
        workdir = tmp_path / "work"
        home = tmp_path / "home"
        for d in (agent_dir, workdir, home):
            d.mkdir(exist_ok=True)
        (agent_dir / "models.json").write_text(json.dumps(pi_models_json(server.url, server.model_id), indent=2))
        doc = pi_settings(server.model_id)
        for key, value in settings.items():  # nested merge for "retry"
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        (agent_dir / "settings.json").write_text(json.dumps(doc, indent=2))
        env = {
            **os.environ,
            "HOME": str(home),
            "PI_CODING_AGENT_DIR": str(agent_dir),
            "PI_OFFLINE": "1",
            "PI_SKIP_VERSION_CHECK": "1",
            "PI_TELEMETRY": "0",
        }
        client = PiRpc([node_bin, pi_cli, "--mode", "rpc", "--no-session"], workdir, env)
        clients.append(client)
        state = client.request({"type": "get_state"}, timeout=60)["data"]
        assert state["model"]["provider"] == SCRIPTED_PROVIDER
        assert state["model"]["id"] == server.model_id
        assert state["isStreaming"] is False
        return client, workdir

    yield start
    for client in clients:
        client.close()


def _prompt_and_settle(pi: PiRpc, message: str, timeout: float = 60) -> list[dict[str, Any]]:
    start = len(pi.seen)
    response = pi.request({"type": "prompt", "message": message})
    assert response["data"]["disposition"] == "started"
    pi.wait_for(lambda r: r.get("type") == "agent_settled", timeout)
    return pi.seen[start:]


def _assistant_ends(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["message"] for e in events if e.get("type") == "message_end" and e["message"].get("role") == "assistant"]


def test_pi_writes_file_via_scripted_tool_call(run_pi: Callable[..., tuple[PiRpc, Path]]) -> None:
    with ScriptedModelServer([call("write", path="hello.txt", content=HELLO), say("done")]) as server:
        pi, workdir = run_pi(server)
        events = _prompt_and_settle(pi, "Please create hello.txt")

        assert (workdir / "hello.txt").read_text(encoding="utf-8") == HELLO

        tool_end = next(e for e in events if e.get("type") == "tool_execution_end")
        assert tool_end["toolName"] == "write" and tool_end["isError"] is False

        first, final = _assistant_ends(events)
        assert first["stopReason"] == "toolUse"
        (tool_call,) = [b for b in first["content"] if b["type"] == "toolCall"]
        assert tool_call["name"] == "write"
        assert tool_call["arguments"] == {"path": "hello.txt", "content": HELLO}
        assert final["stopReason"] == "stop"
        assert [b["text"] for b in final["content"] if b["type"] == "text"] == ["done"]
        assert final["usage"]["totalTokens"] > 0, "usage chunk was read"
        deltas = [
            e["assistantMessageEvent"]["delta"]
            for e in events
            if e.get("type") == "message_update" and e["assistantMessageEvent"]["type"] == "text_delta"
        ]
        assert "".join(deltas) == "done"

        requests = server.chat_requests
        assert len(requests) == 2
        body = requests[0].body
        assert body["model"] == server.model_id and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert {"bash", "read", "edit", "write"} <= {t["function"]["name"] for t in body["tools"]}
        assert body["messages"][0]["role"] == "system"
        assert requests[0].headers.get("authorization") == "<redacted>"

        second = server.messages(1)
        assistant = next(m for m in second if m["role"] == "assistant")
        (replayed,) = assistant["tool_calls"]
        assert replayed["id"] == tool_call["id"]
        assert json.loads(replayed["function"]["arguments"]) == {"path": "hello.txt", "content": HELLO}
        tool_msg = second[-1]
        assert tool_msg["role"] == "tool"
        assert tool_msg["tool_call_id"] == tool_call["id"]
        assert "hello.txt" in tool_msg["content"]


@pytest.mark.parametrize(
    ("turn", "settings", "expected"),
    [
        pytest.param(error(500, "boom"), {}, "boom", id="http-500"),
        pytest.param(drop("cut off " * 20), {}, "terminated", id="dropped-stream"),
        pytest.param(hang(), {"retry": {"provider": {"timeoutMs": 1500}}}, "timed out", id="hang-timeout"),
    ],
)
def test_provider_failure_ends_in_error_message_quickly(
    run_pi: Callable[..., tuple[PiRpc, Path]], turn: Turn, settings: dict[str, Any], expected: str
) -> None:
    # pi_settings() disables agent-level auto-retry (retry.enabled=false); with pi's defaults
    # (3 retries, 2 s base backoff) a 500 would take ~14 s to surface.
    with ScriptedModelServer([turn, turn, turn, turn], fallback="should not be reached") as server:
        pi, _ = run_pi(server, **settings)
        started = time.monotonic()
        events = _prompt_and_settle(pi, "hi", timeout=30)
        elapsed = time.monotonic() - started

        (message,) = _assistant_ends(events)
        assert message["stopReason"] == "error"
        assert expected in message["errorMessage"].lower()
        assert not [e for e in events if e.get("type") == "auto_retry_start"]
        assert len(server.chat_requests) == 1
        assert elapsed < 10, f"error took {elapsed:.1f}s to surface"
