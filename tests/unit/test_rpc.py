"""Unit tests for pimagic.rpc: the pure decoders, and RpcClient against a fake pi on a socketpair.

The fake pi is the only fake: it speaks pi's JSONL protocol (framed like ``docker exec`` output when
multiplexed) on the far end of a real socket, so the transport, reader thread and routing are real.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pimagic.errors import RpcError
from pimagic.rpc import (
    STDERR,
    STDOUT,
    DockerFrameDecoder,
    JsonlDecoder,
    RpcClient,
    SocketTransport,
    UndecodableLine,
    assistant_error,
    encode_command,
)

pytestmark = pytest.mark.timeout(30)


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


# ------------------------------------------------------------------------------------------------
# Pure framing
# ------------------------------------------------------------------------------------------------


def test_frames_split_at_every_byte() -> None:
    data = frame(STDOUT, b"hello") + frame(STDERR, b"oops\n") + frame(STDOUT, b"") + frame(STDOUT, b"x" * 70000)
    decoder = DockerFrameDecoder()
    got = [f for i in range(len(data)) for f in decoder.feed(data[i : i + 1])]
    assert got == [(STDOUT, b"hello"), (STDERR, b"oops\n"), (STDOUT, b""), (STDOUT, b"x" * 70000)]
    assert decoder.pending == 0


def test_frames_header_split_and_multiple_frames_in_one_read() -> None:
    data = frame(STDOUT, b"ab") + frame(STDERR, b"cd")
    decoder = DockerFrameDecoder()
    assert list(decoder.feed(data[:5])) == []
    assert decoder.pending == 5
    assert list(decoder.feed(data[5:] + frame(STDOUT, b"e")[:3])) == [(STDOUT, b"ab"), (STDERR, b"cd")]
    assert decoder.pending == 3


def test_jsonl_split_utf8_and_partial_lines() -> None:
    line = encode_command({"type": "x", "text": "héllo ✓ 🎉"}).replace(b"\\u00e9", "é".encode())
    raw = json.dumps({"type": "y", "text": "日本"}, ensure_ascii=False).encode() + b"\n"
    data = line + raw
    decoder = JsonlDecoder()
    got = [r for i in range(len(data)) for r in decoder.feed(data[i : i + 1])]
    assert got == [{"type": "x", "text": "héllo ✓ 🎉"}, {"type": "y", "text": "日本"}]


def test_jsonl_keeps_unicode_separators_inside_strings() -> None:
    text = "a\u2028b\u2029c"
    data = json.dumps({"type": "t", "text": text}, ensure_ascii=False).encode() + b"\n"
    assert "\u2028".encode() in data
    assert list(JsonlDecoder().feed(data)) == [{"type": "t", "text": text}]


def test_jsonl_crlf_blank_lines_and_garbage() -> None:
    data = b'{"a":1}\r\n\n  \r\nnot json\n[1,2]\n\xff\xfe\n{"b":2}\n'
    items = list(JsonlDecoder().feed(data))
    assert items[0] == {"a": 1}
    assert items[-1] == {"b": 2}
    bad = items[1:-1]
    assert [b.line for b in bad] == [b"not json", b"[1,2]", b"\xff\xfe"]
    assert all(isinstance(b, UndecodableLine) and b.error for b in bad)


def test_jsonl_partial_last_line_at_eof() -> None:
    decoder = JsonlDecoder()
    assert list(decoder.feed(b'{"a":"x"}\r\n{"tail":true}')) == [{"a": "x"}]
    assert list(decoder.finish()) == [{"tail": True}]
    assert list(decoder.finish()) == []


def test_encode_command_is_one_ascii_line() -> None:
    data = encode_command({"type": "prompt", "message": "line1\nline2\u2028é"})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert data.isascii()
    assert json.loads(data) == {"type": "prompt", "message": "line1\nline2\u2028é"}
    with pytest.raises(ValueError):
        encode_command({"type": "x", "n": float("nan")})


def test_assistant_error() -> None:
    failed = {
        "type": "message_end",
        "message": {"role": "assistant", "stopReason": "error", "errorMessage": "boom"},
    }
    assert assistant_error(failed) == "boom"
    assert assistant_error({"type": "message_end", "message": {"role": "assistant", "stopReason": "stop"}}) is None
    assert assistant_error({"type": "turn_end", "message": failed["message"]}) is None


# ------------------------------------------------------------------------------------------------
# A fake pi on the far end of a socketpair
# ------------------------------------------------------------------------------------------------

Handler = Callable[["FakePi", dict[str, Any]], None]


def run_events(prompt_text: str, text: str = "Hello") -> list[dict[str, Any]]:
    assistant = {"role": "assistant", "content": [{"type": "text", "text": text}], "stopReason": "stop"}
    return [
        {"type": "agent_start"},
        {"type": "turn_start"},
        {"type": "message_start", "message": {"role": "user", "content": prompt_text}},
        {"type": "message_end", "message": {"role": "user", "content": prompt_text}},
        {"type": "message_start", "message": {**assistant, "content": [], "stopReason": "pending"}},
        {
            "type": "message_update",
            "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": text},
        },
        {"type": "message_end", "message": assistant},
        {"type": "turn_end", "message": assistant, "toolResults": []},
        {"type": "agent_end", "messages": [assistant], "willRetry": False},
        {"type": "agent_settled", "aborted": False},
    ]


class FakePi:
    """Speaks pi's RPC protocol on one end of a socketpair, from a thread."""

    def __init__(self, *, multiplexed: bool = True, chop: int = 0) -> None:
        self.client_end, self.peer = socket.socketpair()
        self.multiplexed = multiplexed
        self.chop = chop  # send output in pieces of this many bytes (0: whole writes)
        self.received: list[dict[str, Any]] = []
        self.handlers: dict[str, Handler] = {
            "get_state": lambda pi, cmd: pi.respond(cmd, data={"isStreaming": pi.running, "messageCount": 0}),
            "prompt": FakePi.default_prompt,
            "abort": FakePi.default_abort,
        }
        self.running = False
        self.abort_seen = threading.Event()
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # output
    def emit(self, record: dict[str, Any], *, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(record, ensure_ascii=False).encode() + b"\n"
        self._write(STDOUT, data)

    def stderr(self, text: str) -> None:
        self._write(STDERR, text.encode())

    def _write(self, stream: int, data: bytes) -> None:
        if self.multiplexed:
            data = frame(stream, data)
        elif stream == STDERR:
            return  # a TTY exec has no separate stderr
        with self._send_lock:
            if self.chop:
                for i in range(0, len(data), self.chop):
                    self.peer.sendall(data[i : i + self.chop])
            else:
                self.peer.sendall(data)

    def respond(self, cmd: dict[str, Any], *, success: bool = True, data: Any = None, error: str = "") -> None:
        record: dict[str, Any] = {
            "id": cmd.get("id"),
            "type": "response",
            "command": cmd["type"],
            "success": success,
        }
        if data is not None:
            record["data"] = data
        if not success:
            record["error"] = error
        self.emit(record)

    def exit(self) -> None:
        """pi dies: its output ends."""
        with self._send_lock:
            try:
                self.peer.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.peer.close()

    # default behaviour
    def default_prompt(self, cmd: dict[str, Any]) -> None:
        self.respond(cmd, data={"disposition": "started"})
        for event in run_events(cmd["message"]):
            self.emit(event)

    def default_abort(self, cmd: dict[str, Any]) -> None:
        self.abort_seen.set()
        if self.running:
            self.running = False
            self.emit({"type": "agent_end", "messages": [], "willRetry": False})
            self.emit({"type": "agent_settled", "aborted": True})
        self.respond(cmd)  # like pi: answered only once idle

    def _serve(self) -> None:
        decoder = JsonlDecoder()
        try:
            while data := self.peer.recv(65536):
                for cmd in decoder.feed(data):
                    assert isinstance(cmd, dict), cmd
                    self.received.append(cmd)
                    handler = self.handlers.get(cmd["type"])
                    if handler is None:
                        self.respond(cmd, success=False, error=f"Unknown command: {cmd['type']}")
                    else:
                        handler(self, cmd)
        except OSError:
            pass

    def commands(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.received if c["type"] == kind]


@pytest.fixture
def fake() -> Iterator[FakePi]:
    pi = FakePi()
    yield pi
    pi.exit()


@pytest.fixture
def client(fake: FakePi) -> Iterator[RpcClient]:
    c = RpcClient(SocketTransport(fake.client_end), call_timeout=5.0, abort_wait=3.0)
    yield c
    c.close()


def hanging_prompt(pi: FakePi, cmd: dict[str, Any]) -> None:
    """Start a run that only ends when aborted."""
    pi.respond(cmd, data={"disposition": "started"})
    pi.running = True
    pi.emit({"type": "agent_start"})
    pi.emit({"type": "turn_start"})


# ------------------------------------------------------------------------------------------------
# RpcClient
# ------------------------------------------------------------------------------------------------


def test_call_routes_responses_by_id_and_returns_data(client: RpcClient, fake: FakePi) -> None:
    assert client.wait_ready(5) == {"isStreaming": False, "messageCount": 0}
    assert client.get_state()["messageCount"] == 0
    ids = [c["id"] for c in fake.received]
    assert len(set(ids)) == len(ids) and all(i.startswith("pimagic-") for i in ids)


def test_concurrent_calls_answered_out_of_order(client: RpcClient, fake: FakePi) -> None:
    held: list[dict[str, Any]] = []
    release = threading.Event()

    def slow(pi: FakePi, cmd: dict[str, Any]) -> None:
        held.append(cmd)
        if len(held) == 2:  # answer in reverse order
            release.set()
            for c in reversed(held):
                pi.respond(c, data={"n": c["n"]})

    fake.handlers["echo"] = slow
    results: dict[int, Any] = {}

    def call(n: int) -> None:
        try:
            results[n] = client.call({"type": "echo", "n": n})
        except Exception as exc:  # surfaced by the assertion below
            results[n] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == {1: {"n": 1}, 2: {"n": 2}}
    assert release.is_set()


def test_call_failure_carries_pis_error(client: RpcClient, fake: FakePi) -> None:
    fake.handlers["set_model"] = lambda pi, cmd: pi.respond(
        cmd, success=False, error=f"Model not found: {cmd['provider']}/{cmd['modelId']}"
    )
    with pytest.raises(RpcError, match="Model not found: nope/x"):
        client.set_model("nope", "x")
    assert fake.commands("set_model")[0]["modelId"] == "x"
    fake.handlers["set_thinking_level"] = lambda pi, cmd: pi.respond(cmd)
    assert client.set_thinking_level("high") is None  # no data: fine


def test_call_timeout_and_late_answer_is_ignored(client: RpcClient, fake: FakePi) -> None:
    late: list[dict[str, Any]] = []
    fake.handlers["slow"] = lambda pi, cmd: late.append(cmd)
    with pytest.raises(RpcError, match="did not answer 'slow' within 0.2s"):
        client.call({"type": "slow"}, timeout=0.2)
    fake.respond(late[0], data={"too": "late"})
    assert client.get_state()["messageCount"] == 0  # still usable


def test_wait_ready_resends_until_answered(client: RpcClient, fake: FakePi) -> None:
    start = time.monotonic()
    fake.handlers["get_state"] = lambda pi, cmd: (
        pi.respond(cmd, data={"ok": True}) if time.monotonic() - start > 0.5 else None
    )
    assert client.wait_ready(5, interval=0.2) == {"ok": True}
    assert len(fake.commands("get_state")) >= 2


def test_prompt_yields_events_until_settled(client: RpcClient, fake: FakePi) -> None:
    # An unsolicited event between prompts is not delivered to the next prompt.
    fake.emit({"type": "thinking_level_changed", "level": "high"})
    client.get_state()
    events = list(client.prompt("hi there", timeout=5))
    assert [e["type"] for e in events] == [e["type"] for e in run_events("hi there")]
    assert events[-1] == {"type": "agent_settled", "aborted": False}
    assert fake.commands("prompt")[0]["message"] == "hi there"
    assert not client.busy


def test_prompt_over_chopped_multiplexed_stream_with_stderr(fake: FakePi) -> None:
    fake.chop = 3  # every frame header and UTF-8 character gets cut across reads

    def prompt(pi: FakePi, cmd: dict[str, Any]) -> None:
        pi.stderr("warning: something odd\n")
        pi.respond(cmd, data={"disposition": "started"})
        for event in run_events(cmd["message"], text="héllo\u2028wörld 🎉"):
            pi.emit(event)

    fake.handlers["prompt"] = prompt
    with RpcClient(SocketTransport(fake.client_end)) as client:
        events = list(client.prompt("x", images=[{"type": "image", "data": "AAAA", "mimeType": "image/png"}]))
        deltas = [e["assistantMessageEvent"]["delta"] for e in events if e["type"] == "message_update"]
        assert deltas == ["héllo\u2028wörld 🎉"]
        assert "warning: something odd" in client.stderr_tail
        assert fake.commands("prompt")[0]["images"][0]["mimeType"] == "image/png"
    assert client.closed


def test_unmultiplexed_socket() -> None:
    pi = FakePi(multiplexed=False)
    with RpcClient(SocketTransport(pi.client_end, multiplexed=False)) as client:
        assert [e["type"] for e in client.prompt("hi")][-1] == "agent_settled"
    pi.exit()


def test_prompt_rejected_raises_and_releases_the_turn(client: RpcClient, fake: FakePi) -> None:
    fake.handlers["prompt"] = lambda pi, cmd: pi.respond(cmd, success=False, error="No model selected")
    with pytest.raises(RpcError, match="No model selected"):
        list(client.prompt("hi"))
    fake.handlers["prompt"] = FakePi.default_prompt
    assert list(client.prompt("again"))[-1]["type"] == "agent_settled"
    assert not fake.commands("abort")  # nothing to abort after a rejection


def test_handled_prompt_yields_nothing(client: RpcClient, fake: FakePi) -> None:
    fake.handlers["prompt"] = lambda pi, cmd: pi.respond(cmd, data={"disposition": "handled"})
    assert list(client.prompt("/ext-command", timeout=5)) == []
    assert not fake.commands("abort")


def test_second_concurrent_prompt_is_refused(client: RpcClient, fake: FakePi) -> None:
    fake.handlers["prompt"] = hanging_prompt
    first = client.prompt("long")
    assert next(first)["type"] == "agent_start"
    with pytest.raises(RpcError, match="a turn is already running"):
        next(client.prompt("second"))
    assert len(fake.commands("prompt")) == 1
    first.close()  # abandoning the iterator aborts the run
    assert fake.abort_seen.is_set()
    assert not client.busy


def test_retries_do_not_end_the_turn(client: RpcClient, fake: FakePi) -> None:
    def retrying(pi: FakePi, cmd: dict[str, Any]) -> None:
        pi.respond(cmd, data={"disposition": "started"})
        failed = {"role": "assistant", "content": [], "stopReason": "error", "errorMessage": "529 overloaded"}
        for event in (
            {"type": "agent_start"},
            {"type": "message_end", "message": failed},
            {"type": "agent_end", "messages": [failed], "willRetry": True},
            {
                "type": "auto_retry_start",
                "attempt": 1,
                "maxAttempts": 3,
                "delayMs": 10,
                "errorMessage": "529",
            },
            {"type": "agent_start"},
            {"type": "message_end", "message": failed},
            {"type": "agent_end", "messages": [failed], "willRetry": False},
            {"type": "auto_retry_end", "success": False, "attempt": 1, "finalError": "529 overloaded"},
            {"type": "agent_settled", "aborted": False},
        ):
            pi.emit(event)

    fake.handlers["prompt"] = retrying
    events = list(client.prompt("hi"))
    assert [e["type"] for e in events].count("agent_end") == 2
    assert events[-1]["type"] == "agent_settled"
    assert [assistant_error(e) for e in events if assistant_error(e)] == ["529 overloaded"] * 2


def test_event_timeout_aborts_the_run(client: RpcClient, fake: FakePi) -> None:
    fake.handlers["prompt"] = hanging_prompt
    with pytest.raises(RpcError, match="no event from pi for 0.3s"):
        list(client.prompt("hi", event_timeout=0.3))
    assert fake.abort_seen.is_set()
    fake.handlers["prompt"] = FakePi.default_prompt
    assert list(client.prompt("next"))[-1]["type"] == "agent_settled"


def test_overall_timeout_despite_steady_events(client: RpcClient, fake: FakePi) -> None:
    stop = threading.Event()

    def chatty(pi: FakePi, cmd: dict[str, Any]) -> None:
        hanging_prompt(pi, cmd)

        def tick() -> None:
            while not stop.wait(0.05):
                pi.emit({"type": "tool_execution_update", "toolCallId": "t"})

        threading.Thread(target=tick, daemon=True).start()

    fake.handlers["prompt"] = chatty
    started = time.monotonic()
    try:
        with pytest.raises(RpcError, match="did not finish within 0.6s"):
            for _ in client.prompt("hi", timeout=0.6, event_timeout=0.3):
                pass
    finally:
        stop.set()
    assert time.monotonic() - started < 3


def test_interrupt_in_consumer_then_next_prompt_works(client: RpcClient, fake: FakePi) -> None:
    fake.handlers["prompt"] = hanging_prompt
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        for event in client.prompt("long job"):
            seen.append(event["type"])
            raise KeyboardInterrupt  # like Ctrl-C while the cell renders an event
    assert seen == ["agent_start"]
    assert fake.abort_seen.is_set()
    assert not client.busy and not client.closed
    fake.handlers["prompt"] = FakePi.default_prompt
    events = list(client.prompt("next one"))
    assert events[-1] == {"type": "agent_settled", "aborted": False}
    # no leftovers of the aborted run leaked into the new one
    assert [e["type"] for e in events] == [e["type"] for e in run_events("next one")]


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="needs POSIX signals")
def test_sigint_while_blocked_waiting_for_events(client: RpcClient, fake: FakePi) -> None:
    fake.handlers["prompt"] = hanging_prompt
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            timer.start()
            for _ in client.prompt("wait forever"):
                pass
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert fake.abort_seen.is_set()
    fake.handlers["prompt"] = FakePi.default_prompt
    assert list(client.prompt("after"))[-1]["type"] == "agent_settled"


def test_pi_exit_mid_turn_fails_the_turn_with_stderr_tail(client: RpcClient, fake: FakePi) -> None:
    def crash(pi: FakePi, cmd: dict[str, Any]) -> None:
        hanging_prompt(pi, cmd)
        pi.stderr("FATAL: JavaScript heap out of memory\n")
        pi.exit()

    fake.handlers["prompt"] = crash
    seen: list[str] = []
    with pytest.raises(RpcError) as info:
        for event in client.prompt("hi"):
            seen.append(event["type"])
    assert seen == ["agent_start", "turn_start"]
    assert "pi exited" in info.value.message
    assert "heap out of memory" in info.value.stderr
    assert client.closed
    with pytest.raises(RpcError, match="pi exited") as again:
        client.get_state()
    assert "heap out of memory" in again.value.stderr
    assert client.abort(0.5) is False


def test_pi_exit_fails_pending_calls(client: RpcClient, fake: FakePi) -> None:
    def die(pi: FakePi, cmd: dict[str, Any]) -> None:
        pi.stderr("Error: cannot find module\n")
        pi.exit()

    fake.handlers["get_state"] = die
    started = time.monotonic()
    with pytest.raises(RpcError, match="pi exited") as info:
        client.wait_ready(10)
    assert time.monotonic() - started < 5
    assert "cannot find module" in str(info.value.stderr)


def test_garbage_on_stdout_is_noted_not_fatal(client: RpcClient, fake: FakePi) -> None:
    fake.emit({}, raw=b"Debugger listening on ws://...\n")
    fake.emit({}, raw=b'{"type":"response","success":false,"error":"Failed to parse command"}\n')
    assert client.get_state()["messageCount"] == 0
    assert "undecodable stdout line" in client.stderr_tail
    assert "Failed to parse command" in client.stderr_tail


def test_stderr_tail_is_bounded(fake: FakePi) -> None:
    with RpcClient(SocketTransport(fake.client_end), stderr_limit=100) as client:
        for i in range(50):
            fake.stderr(f"line {i:03d}\n")
        client.get_state()  # responses are ordered after the stderr frames on the same socket
        tail = client.stderr_tail
        assert len(tail) == 100 and tail.endswith("line 049\n")


def test_close_fails_waiters_and_is_idempotent(client: RpcClient, fake: FakePi) -> None:
    fake.handlers["prompt"] = hanging_prompt
    turn = client.prompt("hi")
    assert next(turn)["type"] == "agent_start"
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in turn:
                pass
        except RpcError as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.1)
    client.close()
    client.close()
    t.join(5)
    assert len(errors) == 1 and client.closed
    with pytest.raises(RpcError, match="closed"):
        client.get_state()


def test_abort_waits_for_settle(client: RpcClient, fake: FakePi) -> None:
    fake.handlers["prompt"] = hanging_prompt
    turn = client.prompt("hi")
    assert next(turn)["type"] == "agent_start"
    assert client.busy
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.append(client.abort(3)))
    t.start()
    rest = [e["type"] for e in turn]  # the prompt's own iterator still gets the run's end
    t.join(5)
    assert results == [True]
    assert rest[-1] == "agent_settled"
    assert client.abort(1) is True  # idle: answered at once


def test_prompt_ticks_while_pi_is_quiet_and_still_times_out():
    """tick= yields TICK records during a pause (the magic flushes its display on them); the
    idle timeout still counts from the last real event, not from the last tick."""
    import socket as socket_mod

    from pimagic.rpc import TICK, RpcClient, SocketTransport, encode_command

    ours, theirs = socket_mod.socketpair()
    client = RpcClient(SocketTransport(ours, multiplexed=False), abort_wait=0.2)

    def peer():
        buf = b""
        while b"\n" not in buf:
            buf += theirs.recv(4096)
        request = json.loads(buf.split(b"\n")[0])
        theirs.sendall(encode_command({"type": "response", "id": request["id"], "command": "prompt",
                                       "success": True, "data": {"disposition": "started"}}))
        theirs.sendall(encode_command({"type": "agent_start"}))
        time.sleep(0.35)  # a pause: ticks, no events
        theirs.sendall(encode_command({"type": "agent_end"}))
        # then silence: the idle timeout (from agent_end) must fire despite the ticks

    threading.Thread(target=peer, daemon=True).start()
    kinds = []
    with pytest.raises(RpcError, match="no event from pi"):
        for event in client.prompt("hi", tick=0.1, event_timeout=0.6):
            kinds.append(event["type"])
    assert kinds[0] == "agent_start" and "agent_end" in kinds
    between = kinds[1 : kinds.index("agent_end")]
    assert between and set(between) == {TICK}
    assert kinds.count(TICK) < 20  # about one per tick, not a busy loop
    client.close()
    theirs.close()
