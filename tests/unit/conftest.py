"""Fixtures of the relay and provider tests (loopback only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _loopback import EchoServer

from pimagic import relay


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def no_leftover_relays() -> Iterator[None]:
    """Relays are per kernel (a module-level registry): stop the ones a test started."""
    yield
    relay.stop_all()
