"""Loopback TCP helpers for the relay and provider tests (importable as `_loopback`)."""

from __future__ import annotations

import socket
import threading


class EchoServer:
    """Loopback TCP server: upper-cases what it receives, closes after the client's EOF."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                self.received.extend(data)
                conn.sendall(data.upper())

    def close(self) -> None:
        self.sock.close()


def recv_all(sock: socket.socket, size: int, timeout: float = 10.0) -> bytes:
    """Up to `size` bytes, fewer only when the peer closes first."""
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf.extend(chunk)
    return bytes(buf)


def free_port() -> int:
    """A loopback port nothing listens on (just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
