"""Helpers shared by test modules (importable as `_support`; conftest modules clash by name)."""

from __future__ import annotations

import os
import select
from pathlib import Path
from typing import Any

AGENT_UID = os.getuid() if os.getuid() != 0 else 1000
AGENT_GID = os.getgid() if os.getuid() != 0 else 1000


def make_workspace(root: Path) -> Path:
    """A workspace the agent's uid can write, as a user's notebook folder is theirs."""
    root.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        os.chown(root, AGENT_UID, AGENT_GID)
    return root


def readable(fd: int, timeout: float) -> bool:
    """True when `fd` has data within `timeout` s. poll, not select: a long test run holds more
    than 1024 descriptors, which select() cannot watch."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(timeout * 1000))


def release_magics(magics: Any) -> None:
    """Close a test's PiMagics for good: its pi, and its docker client's connections. IPython's
    shell keeps every Magics ever made in `configurables`, so without this each test's client
    (and its pooled sockets) lives until the run ends."""
    session = magics._session
    if session is not None:
        session.close()
        client = getattr(session.sandbox, "_client", None)
        if client is not None:
            client.close()
    configurables = getattr(magics.shell, "configurables", [])
    while magics in configurables:
        configurables.remove(magics)


class Pty:
    """A program on a host pseudo-terminal, as a user runs the CLI: read what it draws, type, end it."""

    def __init__(self, argv: list[str], env: dict[str, str], *, stdin: int | None = None) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: stdin from `stdin` when given (piped input, terminal output)
            if stdin is not None:
                os.dup2(stdin, 0)
            os.execvpe(argv[0], argv, env)
        self.screen = b""
        self.status: int | None = None

    def read_for(self, seconds: float) -> bool:
        """Collect output for `seconds`; False once the terminal closed or the program ended."""
        import time

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if readable(self.fd, 0.2):
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    return False
                if not chunk:
                    return False
                self.screen += chunk
            elif self.exited():
                return False
        return True

    def exited(self) -> bool:
        if self.status is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = status
        return self.status is not None

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        """Kill it if still running, reap it, close the terminal."""
        try:
            if not self.exited():
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)

    def __enter__(self) -> Pty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pi_processes(container) -> list[str]:
    """The pi RPC sessions in the container (pids): pi names its process "pi", so count the leash each
    runs behind (`leash --hup pi --mode rpc ...`), and check that a pi runs under each."""
    rows = container.top()["Processes"] or []
    leashes = [row for row in rows if row[-1].startswith("/usr/local/lib/pimagic/leash") and "--mode rpc" in row[-1]]
    pis = {row[2] for row in rows if row[-1] == "pi"}  # their parents
    assert all(row[1] in pis for row in leashes), rows
    return [row[1] for row in leashes]  # their pids
