"""A scripted, OpenAI-compatible chat-completions server that stands in for an LLM.

No cloud model is reachable in tests or in the offline demo, so pi is pointed at this server instead.
It speaks the subset of ``POST /v1/chat/completions`` that pi's ``openai-completions`` API uses
(SSE streaming with content, ``reasoning_content`` and ``tool_calls`` deltas, a ``finish_reason``
chunk, an optional ``usage`` chunk and ``data: [DONE]``), answers from a *script* of turns, can
inject faults (HTTP errors, delays, hangs, dropped connections) and records every request so tests
can assert on what pi actually sent.

Stdlib only: it is also shipped to run standalone (``python -m pimagic.scripted_model``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "EXHAUSTED_TEXT",
    "SCRIPTED_PROVIDER",
    "RecordedRequest",
    "ScriptedModelServer",
    "ToolCall",
    "Turn",
    "call",
    "drop",
    "error",
    "hang",
    "load_script",
    "main",
    "pi_models_json",
    "pi_provider_config",
    "pi_settings",
    "say",
    "think",
    "tool",
]

SCRIPTED_PROVIDER = "pimagic-scripted"
"""Provider id under which the scripted model is registered in pi's ``models.json``."""

DEFAULT_MODEL_ID = "scripted"
DEFAULT_CHUNK_SIZE = 8
EXHAUSTED_TEXT = "(scripted model: script exhausted)"
REDACTED = "<redacted>"

_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_MODELS_PATHS = ("/v1/models", "/models")


# --------------------------------------------------------------------------------------------------
# Script model
# --------------------------------------------------------------------------------------------------


@dataclass
class ToolCall:
    """One tool call the scripted model makes; ``arguments`` may be a raw string to test bad JSON."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "arguments": self.arguments}
        if self.id is not None:
            out["id"] = self.id
        return out

    @classmethod
    def from_obj(cls, obj: ToolCall | Mapping[str, Any]) -> ToolCall:
        if isinstance(obj, ToolCall):
            return obj
        if not isinstance(obj, Mapping) or "name" not in obj:
            raise ValueError(f"tool call needs a 'name': {obj!r}")
        args = obj.get("arguments", {})
        if not isinstance(args, (str, Mapping)):
            raise ValueError(f"tool call arguments must be an object or a string: {args!r}")
        return cls(
            name=str(obj["name"]), arguments=args if isinstance(args, str) else dict(args), id=obj.get("id")
        )


@dataclass
class Turn:
    """What the model does for one request.

    Content: ``text`` (streamed in ``chunk_size`` pieces), ``reasoning`` (sent as
    ``reasoning_content`` deltas before the text) and ``tool_calls``.
    Faults: ``status`` (HTTP error with a JSON body carrying ``error_message``), ``delay`` (seconds
    before the first byte), ``chunk_delay`` (seconds between SSE events), ``hang`` (never answer
    until the server stops) and ``drop`` (close the connection mid-stream: ``True`` drops after about
    half of the events, an int after that many events).
    """

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: str = ""
    status: int | None = None
    error_message: str = "scripted error"
    delay: float = 0.0
    chunk_delay: float = 0.0
    hang: bool = False
    drop: bool | int = False
    chunk_size: int | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tool_calls = [ToolCall.from_obj(tc) for tc in self.tool_calls]

    @property
    def effective_finish_reason(self) -> str:
        if self.finish_reason:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    def to_dict(self) -> dict[str, Any]:
        """Serialise without defaults, in the same shape :meth:`from_obj` reads."""
        out: dict[str, Any] = {}
        defaults = Turn()
        for name in (
            "text",
            "reasoning",
            "status",
            "error_message",
            "delay",
            "chunk_delay",
            "hang",
            "drop",
            "chunk_size",
            "finish_reason",
            "usage",
            "headers",
        ):
            value = getattr(self, name)
            default = getattr(defaults, name)
            changed = value is not False if name == "drop" else value != default
            if changed:
                out[name] = value
        if self.tool_calls:
            out["tool_calls"] = [tc.to_dict() for tc in self.tool_calls]
        return out

    @classmethod
    def from_obj(cls, obj: TurnLike) -> Turn:
        """Coerce a ``Turn``, a plain string (a text answer) or a JSON-style dict into a ``Turn``."""
        if isinstance(obj, Turn):
            return obj
        if isinstance(obj, str):
            return cls(text=obj)
        if not isinstance(obj, Mapping):
            raise TypeError(f"cannot make a Turn from {type(obj).__name__}: {obj!r}")
        data = dict(obj)
        if "error" in data and "error_message" not in data:
            data["error_message"] = data.pop("error")
        if "call" in data:  # shorthand: {"call": "write", "arguments": {...}}
            data.setdefault("tool_calls", []).append(
                {"name": data.pop("call"), "arguments": data.pop("arguments", {})}
            )
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown turn field(s) {sorted(unknown)}; known: {sorted(known)}")
        data["tool_calls"] = [ToolCall.from_obj(tc) for tc in data.get("tool_calls") or []]
        return cls(**data)


TurnLike = Turn | str | Mapping[str, Any]
ScriptFunction = Callable[[dict[str, Any]], TurnLike | None]
Script = Sequence[TurnLike] | ScriptFunction | None


def say(text: str, **options: Any) -> Turn:
    """A plain text answer (ends with ``finish_reason: "stop"``)."""
    return Turn(text=text, **options)


def think(reasoning: str, text: str = "", **options: Any) -> Turn:
    """An answer preceded by reasoning deltas (shown by pi as a thinking block)."""
    return Turn(text=text, reasoning=reasoning, **options)


def tool(name: str, /, **arguments: Any) -> ToolCall:
    """One tool call, for turns that make several: ``Turn(tool_calls=[tool(...), tool(...)])``."""
    return ToolCall(name=name, arguments=arguments)


def call(name: str, /, **arguments: Any) -> Turn:
    """A turn that calls one of pi's tools, e.g. ``call("write", path="a.txt", content="hi")``.

    pi 1.5 tools: ``bash`` {command, timeout?}, ``read`` {path, offset?, limit?},
    ``write`` {path, content}, ``edit`` {path, edits: [{oldText, newText}]}.
    """
    return Turn(tool_calls=[ToolCall(name=name, arguments=arguments)])


def error(status: int = 500, message: str = "scripted error", **options: Any) -> Turn:
    """An HTTP error response with an OpenAI-style JSON error body."""
    return Turn(status=status, error_message=message, **options)


def hang(**options: Any) -> Turn:
    """Accept the request and never answer (until the server stops)."""
    return Turn(hang=True, **options)


def drop(text: str = "this answer is cut off mid-stream", after: int | bool = True, **options: Any) -> Turn:
    """Start streaming ``text`` and close the connection before the stream is complete."""
    return Turn(text=text, drop=after, **options)


def load_script(source: str | Path | Any) -> tuple[list[Turn], Turn | None]:
    """Load turns from a JSON file path or already-parsed JSON.

    Accepted shapes: a list of turns, or ``{"turns": [...], "fallback": turn-or-null}``. A turn is a
    string (text answer) or an object with :class:`Turn` field names (``error`` is accepted for
    ``error_message``, ``{"call": name, "arguments": {...}}`` for a single tool call). Returns
    ``(turns, fallback)``; the fallback is ``None`` when the file does not set one.
    """
    data = json.loads(Path(source).read_text(encoding="utf-8")) if isinstance(source, (str, Path)) else source
    fallback: Turn | None = None
    if isinstance(data, Mapping):
        if data.get("fallback") is not None:
            fallback = Turn.from_obj(data["fallback"])
        data = data.get("turns", [])
    if not isinstance(data, list):
        raise ValueError("a script must be a list of turns or an object with a 'turns' list")
    return [Turn.from_obj(t) for t in data], fallback


# --------------------------------------------------------------------------------------------------
# Request recording
# --------------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as received; the ``Authorization`` header value is replaced by ``<redacted>``."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    timestamp: float
    turn: Turn | None = None

    @property
    def is_chat(self) -> bool:
        return self.method == "POST" and self.path.split("?", 1)[0] in _CHAT_PATHS

    @property
    def messages(self) -> list[dict[str, Any]]:
        if isinstance(self.body, Mapping):
            return list(self.body.get("messages") or [])
        return []


# --------------------------------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------------------------------


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _estimate_tokens(obj: Any) -> int:
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return max(1, len(text) // 4) if text else 0


def _usage(turn: Turn, request: Mapping[str, Any]) -> dict[str, int]:
    if turn.usage is not None:
        usage = dict(turn.usage)
        usage.setdefault("total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0))
        return usage
    prompt = _estimate_tokens(request.get("messages") or "")
    completion = _estimate_tokens(
        turn.text + turn.reasoning + "".join(tc.arguments_json() for tc in turn.tool_calls)
    )
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Completion:
    """Builds the chunk sequence / full response for one turn."""

    def __init__(self, turn: Turn, request: Mapping[str, Any], model: str, serial: int, chunk_size: int):
        self.turn = turn
        self.request = request
        self.model = model
        self.id = f"chatcmpl-scripted-{serial}"
        self.created = int(time.time())
        self.chunk_size = turn.chunk_size or chunk_size
        self.call_ids = [tc.id or f"call_scripted_{serial}_{i}" for i, tc in enumerate(turn.tool_calls)]

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "pimagic-scripted",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def chunks(self) -> Iterator[dict[str, Any]]:
        turn = self.turn
        yield self._chunk({"role": "assistant", "content": ""})
        for piece in _pieces(turn.reasoning, self.chunk_size):
            yield self._chunk({"reasoning_content": piece})
        for piece in _pieces(turn.text, self.chunk_size):
            yield self._chunk({"content": piece})
        for index, (tc, call_id) in enumerate(zip(turn.tool_calls, self.call_ids, strict=True)):
            head = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": tc.name, "arguments": ""},
            }
            yield self._chunk({"tool_calls": [head]})
            for piece in _pieces(tc.arguments_json(), self.chunk_size):
                yield self._chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield self._chunk({}, finish_reason=turn.effective_finish_reason)
        stream_options = self.request.get("stream_options")
        if isinstance(stream_options, Mapping) and stream_options.get("include_usage"):
            usage_chunk = self._chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = _usage(turn, self.request)
            yield usage_chunk

    def response(self) -> dict[str, Any]:
        turn = self.turn
        message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
        if turn.reasoning:
            message["reasoning_content"] = turn.reasoning
        if turn.tool_calls:
            message["tool_calls"] = [
                {
                    "id": cid,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": tc.arguments_json()},
                }
                for tc, cid in zip(turn.tool_calls, self.call_ids, strict=True)
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "pimagic-scripted",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": turn.effective_finish_reason,
                }
            ],
            "usage": _usage(turn, self.request),
        }


class _Dropped(Exception):
    """Raised inside the handler to abandon a response on purpose (drop / hang / stop)."""


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive + chunked transfer, like real providers
    server_version = "pimagic-scripted-model/1"

    # -- plumbing ------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        # Each SSE event is its own small write: without NODELAY, Nagle + delayed ACK stall ~40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.verbose:
            sys.stderr.write(f"[scripted-model] {self.address_string()} {format % args}\n")

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (_Dropped, ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def _wait(self, seconds: float) -> None:
        if seconds > 0 and self.server.owner._stopping.wait(seconds):
            raise _Dropped

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _record(self, body: Any) -> RecordedRequest:
        headers = {k: (REDACTED if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        rec = RecordedRequest(self.command, self.path, headers, body, time.time())
        self.server.owner._record(rec)
        return rec

    # -- routes ----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._record(None)
        path = self.path.split("?", 1)[0]
        if path in _MODELS_PATHS:
            models = [
                {"id": mid, "object": "model", "created": 0, "owned_by": "pimagic-scripted"}
                for mid in self.server.owner.model_ids
            ]
            self._send_json(200, {"object": "list", "data": models})
        elif path in ("/health", "/v1/health", "/"):
            self._send_json(200, {"status": "ok", "scripted": True, "note": "scripted model, not a real LLM"})
        else:
            self._send_json(404, {"error": {"message": f"no route {path}", "type": "not_found", "code": 404}})

    def do_POST(self) -> None:
        raw = self._read_body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = self._record(body)
        path = self.path.split("?", 1)[0]
        if path not in _CHAT_PATHS:
            self._send_json(404, {"error": {"message": f"no route {path}", "type": "not_found", "code": 404}})
            return
        if not isinstance(body, Mapping):
            self._send_json(
                400, {"error": {"message": "request body must be a JSON object", "type": "invalid_request"}}
            )
            return
        owner = self.server.owner
        turn, serial = owner._next_turn(dict(body))
        rec.turn = turn
        self._serve_turn(turn, body, serial)

    def _serve_turn(self, turn: Turn, request: Mapping[str, Any], serial: int) -> None:
        owner = self.server.owner
        self._wait(turn.delay)
        if turn.hang:
            owner._stopping.wait()
            raise _Dropped
        if turn.status is not None and turn.status >= 400:
            payload = {
                "error": {"message": turn.error_message, "type": "scripted_error", "code": turn.status}
            }
            self._send_json(turn.status, payload, turn.headers)
            return
        model = str(request.get("model") or owner.model_id)
        completion = _Completion(turn, request, model, serial, owner.chunk_size)
        if request.get("stream"):
            self._stream(turn, completion)
        else:
            self._respond(turn, completion)

    def _drop_now(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Dropped

    @staticmethod
    def _drop_point(drop: bool | int | None, n_events: int) -> int | None:
        if drop is False or drop is None:
            return None
        if drop is True:
            return max(1, n_events // 2)
        return max(0, int(drop))

    def _respond(self, turn: Turn, completion: _Completion) -> None:
        body = json.dumps(completion.response(), ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in turn.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self._drop_point(turn.drop, 2) is not None:
            self.wfile.write(body[: len(body) // 2])
            self._drop_now()
        self.wfile.write(body)
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, turn: Turn, completion: _Completion) -> None:
        events = [
            f"data: {json.dumps(c, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()
            for c in completion.chunks()
        ]
        events.append(b"data: [DONE]\n\n")
        drop_at = self._drop_point(turn.drop, len(events))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in turn.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.flush()
        for i, event in enumerate(events):
            if drop_at is not None and i >= drop_at:
                self._drop_now()
            if i:
                self._wait(turn.chunk_delay)
            self._write_chunk(event)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: ScriptedModelServer):
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.owner.verbose:
            super().handle_error(request, client_address)


# --------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------


class ScriptedModelServer:
    """An OpenAI-compatible endpoint whose answers come from a script instead of a model.

    ``script`` is a sequence of turns (``Turn``, text strings or JSON-style dicts), a callable
    ``(request_json) -> Turn | None`` for reactive scripts, or a path to a JSON script file. Queued
    turns (from a sequence or :meth:`push`) are consumed first, one per chat request; then the
    callable (if any) is asked; then ``fallback`` answers, so an offline demo never hangs. Pass
    ``fallback=None`` to answer a non-retryable HTTP 400 instead once the script runs out.
    """

    def __init__(
        self,
        script: Script | str | Path = None,
        host: str = "127.0.0.1",
        port: int = 0,
        model_id: str = DEFAULT_MODEL_ID,
        *,
        fallback: TurnLike | None = EXHAUSTED_TEXT,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        extra_model_ids: Iterable[str] = (),
        verbose: bool = False,
    ) -> None:
        self.host = host
        self.model_id = model_id
        self.model_ids = [model_id, *[m for m in extra_model_ids if m != model_id]]
        self.chunk_size = chunk_size
        self.verbose = verbose
        self.fallback: Turn | None = None if fallback is None else Turn.from_obj(fallback)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: deque[Turn] = deque()
        self._function: ScriptFunction | None = None
        self._requests: list[RecordedRequest] = []
        self._serial = itertools.count(1)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._set_script(script)
        self._httpd = _HTTPServer((host, port), self)

    # -- script ----------------------------------------------------------------------------------

    def _set_script(self, script: Script | str | Path) -> None:
        self._function = None
        self._queue.clear()
        if script is None:
            return
        if isinstance(script, (str, Path)):
            turns, fallback = load_script(script)
            self._queue.extend(turns)
            if fallback is not None:
                self.fallback = fallback
        elif callable(script):
            self._function = script
        else:
            self._queue.extend(Turn.from_obj(t) for t in script)

    def push(self, *turns: TurnLike) -> None:
        """Append turns to the script while the server runs."""
        with self._lock:
            self._queue.extend(Turn.from_obj(t) for t in turns)

    def reset(self, script: Script | str | Path = None) -> None:
        """Forget recorded requests and replace the script (empty by default)."""
        with self._lock:
            self._requests.clear()
            self._set_script(script)

    @property
    def remaining(self) -> int:
        """Number of queued turns not yet consumed."""
        with self._lock:
            return len(self._queue)

    def _next_turn(self, request: dict[str, Any]) -> tuple[Turn, int]:
        with self._lock:
            serial = next(self._serial)
            if self._queue:
                return self._queue.popleft(), serial
            function = self._function
        if function is not None:
            produced = function(copy.deepcopy(request))
            if produced is not None:
                return Turn.from_obj(produced), serial
        if self.fallback is not None:
            return self.fallback, serial
        exhausted = Turn(status=400, error_message="scripted model: script exhausted")
        exhausted.headers["x-should-retry"] = "false"
        return exhausted, serial

    # -- recording -------------------------------------------------------------------------------

    def _record(self, rec: RecordedRequest) -> None:
        with self._changed:
            self._requests.append(rec)
            self._changed.notify_all()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received so far (all routes), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Snapshot of the chat-completion requests only (one per consumed turn)."""
        return [r for r in self.requests if r.is_chat]

    def messages(self, n: int = -1) -> list[dict[str, Any]]:
        """The ``messages`` array of the n-th chat-completion request (negative counts from the end)."""
        return self.chat_requests[n].messages

    def wait_for_requests(
        self, count: int, timeout: float = 10.0, *, chat_only: bool = True
    ) -> list[RecordedRequest]:
        """Block until at least ``count`` (chat) requests were recorded; raise ``TimeoutError`` if not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self._requests if r.is_chat or not chat_only]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"got {len(found)} of {count} requests within {timeout}s")
                self._changed.wait(left)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def base_url(self, host: str | None = None) -> str:
        """Base URL (ending in ``/v1``) as seen from ``host``, e.g. a Docker bridge gateway address."""
        host = host or self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    @property
    def url(self) -> str:
        """Base URL ending in ``/v1`` (loopback when bound to a wildcard address)."""
        return self.base_url()

    def start(self) -> ScriptedModelServer:
        """Serve in a daemon thread (idempotent). A stopped server cannot be restarted: make a new one."""
        if self._closed:
            raise RuntimeError("this ScriptedModelServer was stopped; create a new one")
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="scripted-model",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; releases hung/delayed responses and closes open connections promptly."""
        self._closed = True
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ScriptedModelServer(url={self.url!r}, remaining={self.remaining})"


# --------------------------------------------------------------------------------------------------
# pi configuration helpers
# --------------------------------------------------------------------------------------------------


def pi_provider_config(
    base_url: str,
    model_id: str = DEFAULT_MODEL_ID,
    *,
    name: str = "Scripted model (not a real LLM)",
    context_window: int = 128000,
    max_tokens: int = 16384,
) -> dict[str, Any]:
    """The ``providers`` entry for pi's ``models.json`` that points pi at a scripted model server.

    ``reasoning: false`` keeps pi from sending thinking parameters; the ``compat`` block turns off
    request fields a bare OpenAI-compatible server need not know (``store``, ``developer`` role,
    ``reasoning_effort``, ``strict`` tools) and keeps streamed usage on.
    """
    return {
        "name": "pimagic scripted model",
        "baseUrl": base_url,
        "api": "openai-completions",
        "apiKey": "none",
        "compat": {
            "supportsStore": False,
            "supportsDeveloperRole": False,
            "supportsReasoningEffort": False,
            "supportsUsageInStreaming": True,
            "supportsStrictMode": False,
            "maxTokensField": "max_tokens",
        },
        "models": [
            {
                "id": model_id,
                "name": name,
                "reasoning": False,
                "input": ["text"],
                "contextWindow": context_window,
                "maxTokens": max_tokens,
                "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
            }
        ],
    }


def pi_models_json(base_url: str, model_id: str = DEFAULT_MODEL_ID, **kwargs: Any) -> dict[str, Any]:
    """A complete ``models.json`` document registering the scripted provider."""
    return {"providers": {SCRIPTED_PROVIDER: pi_provider_config(base_url, model_id, **kwargs)}}


def pi_settings(model_id: str = DEFAULT_MODEL_ID, *, retry: bool = False, **extra: Any) -> dict[str, Any]:
    """A ``settings.json`` that selects the scripted model with thinking off.

    With ``retry=False`` pi's agent-level auto-retry (``retry.enabled``; default 3 attempts at
    2/4/8 s backoff) is off, so an injected 5xx surfaces as an error at once.
    """
    settings: dict[str, Any] = {
        "defaultProvider": SCRIPTED_PROVIDER,
        "defaultModel": model_id,
        "defaultThinkingLevel": "off",
        "retry": {"enabled": retry, "provider": {"maxRetries": 0}},
    }
    if not retry:
        settings["retry"]["maxRetries"] = 0
    settings.update(extra)
    return settings


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server standalone until interrupted (used by the offline demo)."""
    parser = argparse.ArgumentParser(
        prog="python -m pimagic.scripted_model",
        description="Scripted OpenAI-compatible model server for pimagic tests and offline demos. "
        "It replays a script; it is NOT a real LLM.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (0.0.0.0: reachable from containers)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port to bind (0 = any free port)")
    parser.add_argument(
        "--script", type=Path, help="JSON script: [turn, ...] or {'turns': [...], 'fallback': turn}"
    )
    parser.add_argument("--model-id", default=DEFAULT_MODEL_ID)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--print-config", action="store_true", help="print the models.json for pi and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    server = ScriptedModelServer(
        str(args.script) if args.script else None,
        host=args.host,
        port=args.port,
        model_id=args.model_id,
        chunk_size=args.chunk_size,
        verbose=args.verbose,
    )
    if args.print_config:
        print(json.dumps(pi_models_json(server.url, args.model_id), indent=2))
        server.stop()
        return 0
    server.start()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    print(
        f"pimagic SCRIPTED model server (replays a script, NOT a real LLM) on {args.host}:{server.port}\n"
        f"base URL: {server.url}  model: {args.model_id}  provider: {SCRIPTED_PROVIDER}  "
        f"queued turns: {server.remaining}",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
