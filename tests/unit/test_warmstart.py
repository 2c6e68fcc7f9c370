"""The warm start's decisions (pure) and its failure path with no Docker engine."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from pimagic.config import load_settings
from pimagic.session import PiSession, StartReport, _holding, settings_values
from pimagic.warmstart import WarmStart, wanted


def test_the_background_start_is_reported_as_the_first_cells_start():
    warm = StartReport("created", ("Docker host check: x",))
    assert warm.then(StartReport("running")) == StartReport("created", ("Docker host check: x",))
    assert warm.then(StartReport("joined", ("n",))).action == "created"  # pi restarted, same container
    assert warm.then(StartReport("replaced", ("n",))) == StartReport("replaced", ("Docker host check: x", "n"))
    assert StartReport("joined").then(StartReport("created")).action == "created"  # the container went away


def test_any_setting_that_shapes_a_start_counts_as_a_change(tmp_path):
    s = load_settings(tmp_path, environ={})
    before = settings_values(s)
    s.turn_timeout = 5.0  # shapes no start
    s.warm_start = False
    assert settings_values(s) == before
    for name, value in [("memory", "1g"), ("model", "p/m"), ("paranoid", True), ("github_token", "t"),
                        ("secret_patterns", [*s.secret_patterns, "*.key2"])]:
        s = load_settings(tmp_path, environ={})
        setattr(s, name, value)
        assert settings_values(s) != before, name


def test_warm_start_only_in_a_kernel_with_the_setting_on_and_valid_settings(tmp_path):
    kernel, terminal = SimpleNamespace(kernel=object()), SimpleNamespace()
    s = load_settings(tmp_path, environ={})
    assert s.warm_start is True  # the default
    assert wanted(kernel, s)
    assert not wanted(terminal, s) and not wanted(None, s)
    assert not wanted(kernel, load_settings(tmp_path, environ={"PIMAGIC_WARM_START": "0"}))
    bad = load_settings(tmp_path, environ={"PIMAGIC_MEMORY": "plenty"}, defer_errors=True)
    assert bad.env_errors and not wanted(kernel, bad)  # the first cell names the bad value instead


def test_ctrl_c_ends_a_wait_for_the_lock_and_leaves_the_lock_to_its_holder():
    lock, holding, release = threading.RLock(), threading.Event(), threading.Event()

    def holder():
        with lock:
            holding.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert holding.wait(5)
    said: list[str] = []
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()  # a kernel interrupt: SIGINT
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with _holding(lock, said.append):
            pytest.fail("got the lock while another thread held it")
    assert time.monotonic() - began < 2
    assert said == ["waiting for the sandbox start begun when the extension loaded"]
    release.set()
    t.join(5)
    with _holding(lock, said.append):  # free now: no wait, nothing said
        pass
    assert len(said) == 1


def test_no_docker_engine_fails_quietly_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    session = PiSession(load_settings(tmp_path, environ={}), "no-engine")
    warm = WarmStart(session).begin()
    outcome = warm.wait(30)
    assert outcome.startswith("failed: cannot reach the Docker engine"), outcome
    assert session.rpc is None and session._held is None  # nothing kept: the first cell starts and says why
