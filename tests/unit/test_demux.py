"""`rpc.demux`: the one reader of Docker's multiplexed stream for short execs and the CLI
(`Sandbox.exec`, `pimagic run/shell` without a terminal), over a real socket pair."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from pimagic.errors import RpcError
from pimagic.rpc import MAX_FRAME, demux


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def send_slowly(sock: socket.socket, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        sock.sendall(data[i : i + step])
    sock.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("step", [1, 3, 8, 4096])
def test_frames_cut_anywhere_come_out_whole(step):
    data = frame(1, b"out \xe2\x80\xa8 line\n") + frame(2, b"err") + frame(1, b"") + frame(1, b"x" * 70_000)
    ours, theirs = socket.socketpair()
    writer = threading.Thread(target=send_slowly, args=(theirs, data, step))
    writer.start()
    frames = list(demux(ours))
    writer.join()
    assert frames == [(1, b"out \xe2\x80\xa8 line\n"), (2, b"err"), (1, b""), (1, b"x" * 70_000)]


def test_an_oversized_frame_header_is_refused_before_buffering():
    ours, theirs = socket.socketpair()
    theirs.sendall(struct.pack(">BxxxL", 1, MAX_FRAME + 1))
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(RpcError, match="byte stream frame"):
        list(demux(ours))
