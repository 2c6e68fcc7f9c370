"""The background start (pimagic.warmstart) and a cell that comes while it is in flight: the cell
waits for it (one pi, one container), Ctrl-C ends only the wait, and the start is reported as the
cell's own. Real Docker and pi; the start is held at its entry so the cell surely meets it there."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from _support import pi_processes

from pimagic.scripted_model import say
from pimagic.session import PiSession
from pimagic.warmstart import WarmStart


@pytest.fixture
def held_session(settings):
    """A session whose sandbox start waits at its entry until `release` is set."""
    session = PiSession(settings, "warm-join")
    entered, release = threading.Event(), threading.Event()
    start = session.sandbox.start

    def held_start(**kwargs):
        entered.set()
        release.wait(60)
        return start(**kwargs)

    session.sandbox.start = held_start  # instance attribute: this session's start only
    yield session, entered, release
    release.set()
    session.close()


def test_a_cell_joins_the_start_in_flight_and_ctrl_c_ends_only_the_wait(held_session, scripted, settings,
                                                                        docker_client):
    session, entered, release = held_session
    warm = WarmStart(session).begin()
    assert entered.wait(30), warm.outcome

    said: list[str] = []
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()  # a kernel interrupt: SIGINT
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        session.open(progress=said.append)
    assert time.monotonic() - began < 5  # the wait ended at once ...
    assert said == ["waiting for the sandbox start begun when the extension loaded"]
    assert warm.outcome == "starting" and session.rpc is None  # ... the start goes on

    threading.Timer(0.5, release.set).start()
    report = session.open()  # the next cell waits for that start and reports it
    assert report.action == "created"
    assert warm.wait(30) == "started (created)"
    container = docker_client.containers.get(settings.container_name)
    assert len(pi_processes(container)) == 1
    assert session.open().action == "running"  # reported once

    scripted.push(say("joined"))
    events = list(session.prompt("hello", timeout=60))
    assert any("joined" in str(e) for e in events)


def test_a_cell_that_comes_first_leaves_the_background_start_nothing_to_do(settings, scripted, docker_client):
    session = PiSession(settings, "warm-late")
    try:
        assert session.open().action == "created"
        warm = WarmStart(session).begin()
        assert warm.wait(30) == "skipped: a cell started it first"
        assert session.open().action == "running"
        assert len(pi_processes(docker_client.containers.get(settings.container_name))) == 1
    finally:
        session.close()


def test_the_start_is_reported_by_the_first_open_not_by_a_status_query(settings, scripted):
    session = PiSession(settings, "warm-status")
    try:
        assert WarmStart(session).begin().wait(60) == "started (created)"
        assert session.prompt_count() == 0  # `%pi status` before any cell: uses that pi ...
        assert session.open().action == "created"  # ... and the first cell still says "sandbox started"
        assert session.open().action == "running"
    finally:
        session.close()


def test_a_token_set_after_the_background_start_reaches_the_sandbox_it_made(settings, scripted):
    """`%pi trust-env` (or %config) between `%load_ext` and the first cell: that cell applies the
    settings as a start would, and the container the background start made gets the new token."""
    settings.github_token = ""
    session = PiSession(settings, "warm-token")
    try:
        assert WarmStart(session).begin().wait(60) == "started (created)"
        first = session.sandbox.find().id
        settings.github_token = "ghp_warmstartcanary"
        report = session.open()
        assert report.action == "created"  # the start is still this kernel's, reported once
        assert session.sandbox.find().id == first  # same container (the token is no run option) ...
        code, out, _ = session.sandbox.exec(["cat", "/run/pimagic/github_token"], user="0:0")
        assert code == 0 and out == b"ghp_warmstartcanary"  # ... with the token of now
    finally:
        session.close()
