"""Bounds of pimagic.rpc's decoders (issue 9, class 5): linear time, bounded memory, and a clean end
of the turn when pi's output channel carries an oversized line, an oversized frame or garbage.

The decoders are pure; the client is driven over a real socketpair with pi's framing on the far end.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pimagic.errors import RpcError
from pimagic.rpc import (
    MAX_FRAME,
    MAX_LINE,
    STDOUT,
    DockerFrameDecoder,
    JsonlDecoder,
    RpcClient,
    SocketTransport,
    UndecodableLine,
)

pytestmark = pytest.mark.timeout(60)


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes each ``find`` has to look at (the decoder's work)."""

    searched = 0

    def find(self, sub: Any, start: int = 0, *rest: Any) -> int:  # type: ignore[override]
        CountingBuffer.searched += len(self) - start
        return super().find(sub, start, *rest)


def counted_decoder(max_line: int = MAX_LINE) -> JsonlDecoder:
    decoder = JsonlDecoder(max_line)
    CountingBuffer.searched = 0
    decoder._buf = CountingBuffer()
    return decoder


# ------------------------------------------------------------------------------------------------
# JsonlDecoder
# ------------------------------------------------------------------------------------------------


def test_long_line_in_small_reads_costs_linear_work() -> None:
    record = {"type": "tool_execution_end", "text": "x" * 2_000_000}
    data = json.dumps(record).encode() + b"\n"
    decoder = counted_decoder()
    got = [r for i in range(0, len(data), 1024) for r in decoder.feed(data[i : i + 1024])]
    assert got == [record]
    # Every byte is searched once; a decoder that re-scans the buffer per read does ~n²/2048 work.
    assert CountingBuffer.searched <= len(data)


def test_rescanning_decoder_is_quadratic_control() -> None:
    """Control: the same measure catches a decoder that searches from the buffer's start each read."""
    data = b'{"a":"' + b"x" * 200_000 + b'"}\n'
    decoder = counted_decoder()
    decoder._scanned = 0
    for i in range(0, len(data), 1024):
        decoder._scanned = 0  # forget the progress, as the old decoder did
        list(decoder.feed(data[i : i + 1024]))
    assert CountingBuffer.searched > 10 * len(data)


def test_oversized_line_is_reported_once_and_memory_stays_bounded() -> None:
    decoder = JsonlDecoder(max_line=10_000)
    items: list[Any] = []
    biggest = 0
    for _ in range(100):  # 1 MB without a newline, 100 times the limit
        items += decoder.feed(b"A" * 10_000)
        biggest = max(biggest, len(decoder._buf))
    items += decoder.feed(b'AAAA\n{"type":"after"}\n')
    assert biggest <= 2 * 10_000
    oversized = [i for i in items if isinstance(i, UndecodableLine)]
    assert len(oversized) == 1 and oversized[0].oversized
    assert "longer than 10000 bytes" in oversized[0].error
    assert oversized[0].line == b"A" * 200
    assert items[-1] == {"type": "after"}  # the stream resynchronises at the next LF


def test_oversized_complete_line_in_one_read() -> None:
    decoder = JsonlDecoder(max_line=100)
    items = list(decoder.feed(b'{"x":"' + b"y" * 200 + b'"}\n{"ok":1}\n'))
    assert isinstance(items[0], UndecodableLine) and items[0].oversized
    assert items[1] == {"ok": 1}


def test_line_at_the_limit_and_split_reads_decode() -> None:
    line = json.dumps({"type": "t", "pad": "z" * 80}).encode()
    decoder = JsonlDecoder(max_line=len(line))
    data = line + b"\r\n" + line + b"\n"
    got = [r for i in range(len(data)) for r in decoder.feed(data[i : i + 1])]
    assert got == [json.loads(line)] * 2


def test_cap_fits_pis_largest_records() -> None:
    # agent_end repeats every message of the run; pi caps each image at 4.5 MB of base64.
    assert MAX_LINE >= 50 * int(4.5 * 1024 * 1024)


# ------------------------------------------------------------------------------------------------
# DockerFrameDecoder
# ------------------------------------------------------------------------------------------------


def test_frame_header_over_the_limit_raises_before_buffering() -> None:
    decoder = DockerFrameDecoder(max_frame=1000)
    header = struct.pack(">BxxxL", STDOUT, 0xFFFFFFFF)
    with pytest.raises(RpcError, match="4294967295-byte stream frame") as info:
        list(decoder.feed(header + b"x" * 10))
    assert "fresh pi" in (info.value.hint or "")


def test_frames_at_the_limit_split_anywhere() -> None:
    data = frame(STDOUT, b"a" * 1000) + frame(2, b"e" * 999)
    decoder = DockerFrameDecoder(max_frame=1000)
    got = [f for i in range(0, len(data), 7) for f in decoder.feed(data[i : i + 7])]
    assert got == [(STDOUT, b"a" * 1000), (2, b"e" * 999)]
    assert MAX_FRAME >= 32 * 1024  # Docker copies the pipe in 32 KiB reads


# ------------------------------------------------------------------------------------------------
# RpcClient over a socketpair
# ------------------------------------------------------------------------------------------------


class Peer:
    """pi's end of the exec socket: answers get_state and prompt; ``on_prompt`` sends the run."""

    def __init__(self) -> None:
        self.client_end, self.sock = socket.socketpair()
        self.on_prompt: Any = None
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def send(self, payload: bytes) -> None:
        self.sock.sendall(frame(STDOUT, payload))

    def emit(self, record: dict[str, Any]) -> None:
        self.send(json.dumps(record).encode() + b"\n")

    def _serve(self) -> None:
        decoder = JsonlDecoder()
        try:
            while data := self.sock.recv(65536):
                for cmd in decoder.feed(data):
                    assert isinstance(cmd, dict)
                    self.emit({"type": "response", "id": cmd["id"], "success": True, "data": {}})
                    if cmd["type"] == "prompt":
                        self.on_prompt(self)
                    elif cmd["type"] == "abort":
                        self.emit({"type": "agent_settled", "aborted": True})
        except OSError:
            pass
        self.closed.set()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.sock.close()


def settled_run(peer: Peer) -> None:
    peer.emit({"type": "agent_start"})
    peer.emit({"type": "agent_settled", "aborted": False})


def test_oversized_line_ends_the_turn_and_closes_pi(peer: Peer) -> None:
    client = RpcClient(SocketTransport(peer.client_end), call_timeout=5, max_line=50_000)

    def flood(p: Peer) -> None:
        p.emit({"type": "agent_start"})
        for _ in range(20):
            p.send(b"B" * 10_000)

    peer.on_prompt = flood
    with pytest.raises(RpcError, match="output channel is corrupt: pi sent a line longer than 50000") as info:
        list(client.prompt("go"))
    assert "next cell starts a fresh one" in (info.value.hint or "")
    assert client.closed
    assert peer.closed.wait(5)  # the connection, and with it that pi process, was ended
    with pytest.raises(RpcError, match="corrupt"):
        client.get_state()


def test_oversized_frame_ends_the_turn(peer: Peer) -> None:
    client = RpcClient(SocketTransport(peer.client_end), call_timeout=5)

    def bad_frame(p: Peer) -> None:
        p.emit({"type": "agent_start"})
        p.sock.sendall(struct.pack(">BxxxL", STDOUT, MAX_FRAME + 1))

    peer.on_prompt = bad_frame
    with pytest.raises(RpcError, match="output channel is corrupt: the sandbox sent a"):
        list(client.prompt("go"))
    assert peer.closed.wait(5)


def test_garbage_ends_the_turn_and_the_next_turn_works(peer: Peer) -> None:
    client = RpcClient(SocketTransport(peer.client_end), call_timeout=5, abort_wait=2)

    def garbage(p: Peer) -> None:
        p.emit({"type": "agent_start"})
        p.send(b"\x1b]52;c;Zm9yZ2Vk\x07 not json\n")

    peer.on_prompt = garbage
    with pytest.raises(RpcError, match="undecodable line") as info:
        list(client.prompt("go"))
    assert "run the cell again" in (info.value.hint or "")
    assert not client.closed
    peer.on_prompt = settled_run
    assert [e["type"] for e in client.prompt("again")] == ["agent_start", "agent_settled"]
    client.close()


def test_normal_large_record_passes(peer: Peer) -> None:
    """Allowed use: a multi-megabyte record (an image in a tool result) is delivered whole."""
    client = RpcClient(SocketTransport(peer.client_end), call_timeout=5)
    image = "iVBOR" + "A" * 3_000_000

    def big(p: Peer) -> None:
        p.emit({"type": "agent_start"})
        p.emit({"type": "tool_execution_end", "result": {"content": [{"type": "image", "data": image}]}})
        p.emit({"type": "agent_settled", "aborted": False})

    peer.on_prompt = big
    events = list(client.prompt("go"))
    assert events[1]["result"]["content"][0]["data"] == image
    client.close()
