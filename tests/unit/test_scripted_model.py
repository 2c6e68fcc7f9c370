"""Unit tests for the scripted OpenAI-compatible model server, over real loopback HTTP."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pimagic.scripted_model import (
    EXHAUSTED_TEXT,
    SCRIPTED_PROVIDER,
    ScriptedModelServer,
    ToolCall,
    Turn,
    call,
    drop,
    error,
    hang,
    load_script,
    main,
    pi_models_json,
    pi_provider_config,
    pi_settings,
    say,
    think,
    tool,
)

MESSAGES = [{"role": "user", "content": "hi"}]


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    srv = ScriptedModelServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def _conn(srv: ScriptedModelServer, timeout: float = 5.0) -> http.client.HTTPConnection:
    parts = urlsplit(srv.url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def _post(
    srv: ScriptedModelServer,
    body: dict[str, Any] | None = None,
    *,
    stream: bool = True,
    usage: bool = True,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    payload: dict[str, Any] = {"model": srv.model_id, "messages": MESSAGES, "stream": stream}
    if stream and usage:
        payload["stream_options"] = {"include_usage": True}
    payload.update(body or {})
    conn = _conn(srv, timeout)
    hdrs = {"Content-Type": "application/json", "Authorization": "Bearer sk-secret"}
    hdrs.update(headers or {})
    conn.request("POST", "/v1/chat/completions", json.dumps(payload), hdrs)
    return conn.getresponse()


def _events(raw: bytes) -> list[Any]:
    """Parse an SSE body into JSON chunks, with the literal string "[DONE]" for the terminator."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _stream(srv: ScriptedModelServer, **kwargs: Any) -> list[Any]:
    resp = _post(srv, **kwargs)
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    return _events(resp.read())


def _choice_chunks(events: list[Any]) -> list[dict[str, Any]]:
    return [e for e in events if isinstance(e, dict) and e["choices"]]


def _text(events: list[Any], field: str = "content") -> str:
    return "".join(c["choices"][0]["delta"].get(field) or "" for c in _choice_chunks(events))


def _tool_calls(events: list[Any]) -> list[dict[str, Any]]:
    """Reassemble streamed tool_call deltas the way OpenAI clients do (keyed by index)."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in _choice_chunks(events):
        for tc in chunk["choices"][0]["delta"].get("tool_calls") or []:
            entry = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
            entry["id"] = tc.get("id") or entry["id"]
            fn = tc.get("function") or {}
            entry["name"] += fn.get("name") or ""
            entry["arguments"] += fn.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def _finish_reasons(events: list[Any]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"] for c in _choice_chunks(events) if c["choices"][0]["finish_reason"]
    ]


# -- streaming -------------------------------------------------------------------------------------


def test_streams_text_in_several_deltas(server: ScriptedModelServer) -> None:
    text = "Hello from the scripted model, streamed in pieces."
    server.push(say(text, chunk_size=5))
    events = _stream(server)
    assert events[-1] == "[DONE]"
    chunks = _choice_chunks(events)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "scripted" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    content_deltas = [
        c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")
    ]
    assert len(content_deltas) == (len(text) + 4) // 5
    assert _text(events) == text
    assert _finish_reasons(events) == ["stop"]


def test_unicode_text_and_reasoning(server: ScriptedModelServer) -> None:
    server.push(think("let me think… ✓", "Grüße 🌍\nline\u2028two"))
    events = _stream(server)
    assert _text(events, "reasoning_content") == "let me think… ✓"
    assert _text(events) == "Grüße 🌍\nline\u2028two"
    chunks = _choice_chunks(events)
    first_reasoning = next(
        i for i, c in enumerate(chunks) if c["choices"][0]["delta"].get("reasoning_content")
    )
    first_content = next(i for i, c in enumerate(chunks) if c["choices"][0]["delta"].get("content"))
    assert first_reasoning < first_content


def test_tool_call_deltas_reassemble_to_scripted_arguments(server: ScriptedModelServer) -> None:
    content = 'print("hi")\n' * 10
    server.push(call("write", path="hello.py", content=content))
    events = _stream(server)
    chunks = _choice_chunks(events)
    pieces = [c for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert len(pieces) > 3, "arguments must arrive in several pieces"
    head = pieces[0]["choices"][0]["delta"]["tool_calls"][0]
    assert head["id"] and head["type"] == "function" and head["function"]["name"] == "write"
    # later pieces carry only the index and argument text
    assert all("id" not in p["choices"][0]["delta"]["tool_calls"][0] for p in pieces[1:])
    (only,) = _tool_calls(events)
    assert only["name"] == "write"
    assert json.loads(only["arguments"]) == {"path": "hello.py", "content": content}
    assert _finish_reasons(events) == ["tool_calls"]


def test_several_tool_calls_with_text_and_explicit_ids(server: ScriptedModelServer) -> None:
    server.push(
        Turn(
            text="Running two things.",
            tool_calls=[tool("bash", command="ls -la"), ToolCall("read", {"path": "a.txt"}, id="call_x")],
        )
    )
    events = _stream(server)
    calls = _tool_calls(events)
    assert [c["name"] for c in calls] == ["bash", "read"]
    assert json.loads(calls[0]["arguments"]) == {"command": "ls -la"}
    assert calls[1]["id"] == "call_x"
    assert calls[0]["id"] != calls[1]["id"]
    assert _text(events) == "Running two things."


def test_raw_string_arguments_and_finish_reason_override(server: ScriptedModelServer) -> None:
    server.push(Turn(tool_calls=[ToolCall("bash", '{"command": "ec')], finish_reason="length"))
    events = _stream(server)
    assert _tool_calls(events)[0]["arguments"] == '{"command": "ec'
    assert _finish_reasons(events) == ["length"]


def test_usage_chunk_only_when_requested(server: ScriptedModelServer) -> None:
    server.push("one", "two", say("three", usage={"prompt_tokens": 11, "completion_tokens": 3}))
    with_usage = _stream(server)
    usage_chunks = [e for e in with_usage if isinstance(e, dict) and "usage" in e]
    assert len(usage_chunks) == 1
    assert usage_chunks[0]["choices"] == []
    usage = usage_chunks[0]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert with_usage.index(usage_chunks[0]) == len(with_usage) - 2, "usage comes after finish, before [DONE]"

    without = _stream(server, usage=False)
    assert not [e for e in without if isinstance(e, dict) and "usage" in e]

    scripted = [e for e in _stream(server) if isinstance(e, dict) and "usage" in e][0]["usage"]
    assert scripted == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def test_non_streaming_response(server: ScriptedModelServer) -> None:
    server.push(Turn(text="sure", tool_calls=[tool("bash", command="pwd")]))
    resp = _post(server, stream=False)
    assert resp.status == 200
    body = json.loads(resp.read())
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "sure"
    (tc,) = choice["message"]["tool_calls"]
    assert tc["function"]["name"] == "bash" and json.loads(tc["function"]["arguments"]) == {"command": "pwd"}
    assert body["usage"]["total_tokens"] > 0


def test_keep_alive_connection_serves_consecutive_requests(server: ScriptedModelServer) -> None:
    server.push("first", "second")
    conn = _conn(server)
    got = []
    for _ in range(2):
        body = {"model": "scripted", "messages": MESSAGES, "stream": True}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        got.append(_text(_events(conn.getresponse().read())))
    conn.close()
    assert got == ["first", "second"]


# -- fault injection -------------------------------------------------------------------------------


def test_http_error_injection(server: ScriptedModelServer) -> None:
    server.push(error(500, "boom"), error(429, "slow down", headers={"retry-after": "1"}), "recovered")
    resp = _post(server)
    assert resp.status == 500
    assert resp.getheader("Content-Type") == "application/json"
    assert json.loads(resp.read())["error"] == {"message": "boom", "type": "scripted_error", "code": 500}
    resp = _post(server)
    assert resp.status == 429 and resp.getheader("retry-after") == "1"
    assert json.loads(resp.read())["error"]["message"] == "slow down"
    assert _text(_stream(server)) == "recovered"


def test_delay_before_first_byte(server: ScriptedModelServer) -> None:
    server.push(say("late", delay=0.6))
    start = time.monotonic()
    resp = _post(server)
    assert time.monotonic() - start >= 0.55
    assert _text(_events(resp.read())) == "late"


def test_delay_longer_than_client_timeout_times_out(server: ScriptedModelServer) -> None:
    server.push(say("too late", delay=3))
    with pytest.raises(TimeoutError):
        _post(server, timeout=0.5)


def test_chunk_delay_spaces_out_events(server: ScriptedModelServer) -> None:
    server.push(say("abcdef", chunk_size=2, chunk_delay=0.1))
    resp = _post(server)
    assert resp.status == 200  # headers arrive immediately
    start = time.monotonic()
    events = _events(resp.read())
    # role, 3 content, finish, usage, [DONE] = 7 events -> 6 gaps
    assert len(events) == 7
    assert time.monotonic() - start >= 0.5
    assert _text(events) == "abcdef"


def test_hang_times_out_client_and_stop_is_fast() -> None:
    srv = ScriptedModelServer([hang(), hang(delay=0.1)]).start()
    try:
        with pytest.raises(TimeoutError):
            _post(srv, timeout=0.5)
        assert len(srv.chat_requests) == 1, "a hung request is still recorded"
        second = _conn(srv, timeout=10)  # a second client stuck in a hang when stop() is called
        second.request("POST", "/v1/chat/completions", json.dumps({"messages": MESSAGES, "stream": True}))
        srv.wait_for_requests(2)
    finally:
        start = time.monotonic()
        srv.stop()
        elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"stop() took {elapsed:.2f}s with hung requests"
    with pytest.raises((http.client.HTTPException, OSError)):
        second.getresponse()  # the connection was closed by stop(), not left hanging


def test_drop_closes_connection_mid_stream(server: ScriptedModelServer) -> None:
    server.push(drop("x" * 200, chunk_size=10), "after the drop")
    resp = _post(server)
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    partial = info.value.partial.decode()
    assert "data: " in partial and "[DONE]" not in partial and 'finish_reason":"stop' not in partial
    assert _text(_stream(server)) == "after the drop", "server keeps serving after a drop"


def test_drop_after_n_events_and_non_streaming_drop(server: ScriptedModelServer) -> None:
    server.push(drop("abcdefgh", after=2, chunk_size=2), drop("abcdefgh"))
    resp = _post(server)
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert len(_events(info.value.partial)) == 2
    resp = _post(server, stream=False)
    with pytest.raises(http.client.IncompleteRead):
        resp.read()


# -- recording, script sources, fallback -----------------------------------------------------------


def test_records_requests_and_redacts_authorization(server: ScriptedModelServer) -> None:
    server.push("a", "b")
    _stream(server, body={"messages": [{"role": "user", "content": "first"}]}, headers={"X-Trace": "t1"})
    _stream(server, body={"messages": [{"role": "user", "content": "second"}], "temperature": 0.5})
    urllib.request.urlopen(server.url + "/models", timeout=5).read()

    reqs = server.requests
    assert [(r.method, r.path) for r in reqs] == [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    ]
    headers = {k.lower(): v for k, v in reqs[0].headers.items()}
    assert headers["authorization"] == "<redacted>"
    assert "sk-secret" not in json.dumps([r.headers for r in reqs])
    assert headers["x-trace"] == "t1"
    assert reqs[1].body["temperature"] == 0.5 and reqs[1].body["stream"] is True
    assert reqs[0].turn is not None and reqs[0].turn.text == "a"
    assert len(server.chat_requests) == 2
    assert server.messages(0) == [{"role": "user", "content": "first"}]
    assert server.messages(-1)[0]["content"] == "second"
    assert server.requests is not server.requests  # snapshots, safe to iterate while serving


def test_reset_clears_requests_and_script(server: ScriptedModelServer) -> None:
    server.push("old", "older")
    _stream(server)
    server.reset(["new"])
    assert server.requests == [] and server.remaining == 1
    assert _text(_stream(server)) == "new"


def test_default_fallback_when_script_exhausted() -> None:
    with ScriptedModelServer(["only turn"]) as srv:
        assert _text(_stream(srv)) == "only turn"
        assert _text(_stream(srv)) == EXHAUSTED_TEXT
        assert _text(_stream(srv)) == EXHAUSTED_TEXT


def test_custom_and_disabled_fallback() -> None:
    with ScriptedModelServer([], fallback=say("fallback!")) as srv:
        assert _text(_stream(srv)) == "fallback!"
    with ScriptedModelServer([], fallback=None) as srv:
        resp = _post(srv)
        assert resp.status == 400 and resp.getheader("x-should-retry") == "false"
        assert "exhausted" in json.loads(resp.read())["error"]["message"]


def test_callable_script_reacts_to_request() -> None:
    seen: list[dict[str, Any]] = []

    def script(request: dict[str, Any]) -> Turn | str | None:
        seen.append(request)
        last = request["messages"][-1]
        if last["role"] == "tool":
            return say(f"tool said: {last['content']}")
        if last["content"] == "pass":
            return None  # -> fallback
        return call("bash", command=f"echo {last['content']}")

    with ScriptedModelServer(script) as srv:
        (tc,) = _tool_calls(_stream(srv, body={"messages": [{"role": "user", "content": "hey"}]}))
        assert json.loads(tc["arguments"]) == {"command": "echo hey"}
        tool_msg = {"role": "tool", "tool_call_id": tc["id"], "content": "hey"}
        assert _text(_stream(srv, body={"messages": [*MESSAGES, tool_msg]})) == "tool said: hey"
        assert _text(_stream(srv, body={"messages": [{"role": "user", "content": "pass"}]})) == EXHAUSTED_TEXT
        srv.push("pushed turns win over the callable")
        assert _text(_stream(srv)) == "pushed turns win over the callable"
    assert len(seen) == 3 and seen[0]["stream"] is True


def test_json_script_loading(tmp_path: Path) -> None:
    script = {
        "turns": [
            "plain text",
            {"call": "write", "arguments": {"path": "a.txt", "content": "A"}},
            {"text": "x", "tool_calls": [{"name": "bash", "arguments": {"command": "ls"}, "id": "c1"}]},
            {"status": 503, "error": "unavailable"},
            {"text": "slow", "delay": 0.01, "chunk_delay": 0.01, "chunk_size": 2, "drop": 1},
        ],
        "fallback": "from the file",
    }
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    turns, fallback = load_script(path)
    assert turns[0] == say("plain text")
    assert turns[1].tool_calls == [ToolCall("write", {"path": "a.txt", "content": "A"})]
    assert turns[2].tool_calls[0].id == "c1"
    assert (turns[3].status, turns[3].error_message) == (503, "unavailable")
    assert turns[4].drop == 1 and turns[4].chunk_size == 2
    assert fallback == say("from the file")
    # round trip through to_dict
    assert [Turn.from_obj(t.to_dict()) for t in turns] == turns

    (tmp_path / "list.json").write_text(json.dumps(["just", "a list"]))
    assert load_script(tmp_path / "list.json") == ([say("just"), say("a list")], None)

    with ScriptedModelServer(path) as srv:
        assert _text(_stream(srv)) == "plain text"
        assert _tool_calls(_stream(srv))[0]["name"] == "write"
        assert srv.remaining == 3
        srv.reset()
        assert _text(_stream(srv)) == "from the file"

    with pytest.raises(ValueError, match="unknown turn field"):
        Turn.from_obj({"txt": "typo"})


def test_models_and_health_endpoints() -> None:
    with ScriptedModelServer(model_id="m1", extra_model_ids=["m2"]) as srv:
        body = json.loads(urllib.request.urlopen(srv.url + "/models", timeout=5).read())
        assert body["object"] == "list"
        assert [m["id"] for m in body["data"]] == ["m1", "m2"]
        assert json.loads(urllib.request.urlopen(srv.url + "/health", timeout=5).read())["scripted"] is True
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(srv.url + "/nope", timeout=5)
        assert info.value.code == 404
        assert srv.requests[0].path == "/v1/models"
        assert srv.chat_requests == []


def test_binds_wildcard_address_and_reports_loopback_url() -> None:
    with ScriptedModelServer(["hi"], host="0.0.0.0") as srv:
        assert srv.url == f"http://127.0.0.1:{srv.port}/v1"
        assert srv.base_url("172.17.0.1") == f"http://172.17.0.1:{srv.port}/v1"
        assert _text(_stream(srv)) == "hi"


def test_stop_without_start_and_twice() -> None:
    srv = ScriptedModelServer()
    srv.stop()
    srv.stop()


def test_wait_for_requests_times_out(server: ScriptedModelServer) -> None:
    with pytest.raises(TimeoutError):
        server.wait_for_requests(1, timeout=0.1)


# -- pi configuration & CLI ------------------------------------------------------------------------


def test_pi_provider_config_shape() -> None:
    cfg = pi_provider_config("http://127.0.0.1:9/v1", model_id="m")
    assert cfg["baseUrl"] == "http://127.0.0.1:9/v1"
    assert cfg["api"] == "openai-completions"
    assert cfg["apiKey"] == "none"
    (model,) = cfg["models"]
    assert model["id"] == "m" and model["reasoning"] is False
    assert model["contextWindow"] > 0 and model["maxTokens"] > 0
    assert pi_models_json("http://x/v1")["providers"][SCRIPTED_PROVIDER]["models"][0]["id"] == "scripted"
    settings = pi_settings("m")
    assert settings["defaultProvider"] == SCRIPTED_PROVIDER and settings["defaultModel"] == "m"
    assert settings["defaultThinkingLevel"] == "off" and settings["retry"]["enabled"] is False
    assert pi_settings(retry=True)["retry"]["enabled"] is True


def test_main_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0", "--print-config", "--model-id", "demo"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["providers"][SCRIPTED_PROVIDER]["models"][0]["id"] == "demo"


def test_cli_runs_standalone(tmp_path: Path) -> None:
    script = tmp_path / "demo.json"
    script.write_text(json.dumps(["standalone hello"]))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pimagic.scripted_model",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--script",
            str(script),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline() + proc.stdout.readline()
        assert "NOT a real LLM" in banner
        url = banner.split("base URL: ", 1)[1].split()[0]
        req = urllib.request.Request(
            url + "/chat/completions",
            data=json.dumps({"messages": MESSAGES, "stream": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert _text(_events(urllib.request.urlopen(req, timeout=5).read())) == "standalone hello"
    finally:
        proc.terminate()
        proc.wait(10)
