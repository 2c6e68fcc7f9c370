"""Shared fixtures: one Docker client, one image build and one scripted model
server per test run; a fresh workspace (and so a fresh container) per test."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import make_workspace, release_magics

from pimagic.config import PimagicSettings, load_settings
from pimagic.errors import DockerUnavailableError

REQUIRE_DOCKER = os.environ.get("PIMAGIC_REQUIRE_DOCKER") == "1"
MIN_NODE = (22, 19)


def _skip_or_fail(reason: str) -> None:
    # CI sets PIMAGIC_REQUIRE_DOCKER=1: a missing engine must fail there, never pass as skipped.
    if REQUIRE_DOCKER:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def pimagic_data_root(tmp_path_factory) -> Iterator[Path]:
    """pimagic only creates/mounts pi data dirs under its data root: make the run's temp dir the
    root, so fixtures may use `pi_data_dir=tmp_path/...` (subprocesses inherit it)."""
    root = tmp_path_factory.getbasetemp()
    old = os.environ.get("PIMAGIC_DATA_ROOT")
    os.environ["PIMAGIC_DATA_ROOT"] = str(root)
    yield root
    if old is None:
        os.environ.pop("PIMAGIC_DATA_ROOT", None)
    else:
        os.environ["PIMAGIC_DATA_ROOT"] = old


@pytest.fixture(scope="session")
def docker_client():
    from pimagic.sandbox import docker_client as make_client

    try:
        return make_client()
    except DockerUnavailableError as e:
        _skip_or_fail(f"no Docker engine: {e}")


@pytest.fixture(scope="session")
def sandbox_image(docker_client) -> str:
    """The sandbox image, built once per run from container/ (cached by content hash)."""
    from pimagic.image import ensure_image

    settings = load_settings(environ=os.environ)
    return ensure_image(docker_client, settings, progress=None)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path / "workspace")


@pytest.fixture
def settings(workspace: Path, tmp_path: Path, sandbox_image: str, docker_client) -> Iterator[PimagicSettings]:
    """Settings for a throwaway workspace; its container is removed afterwards."""
    s = load_settings(
        workspace, environ=os.environ, pi_data_dir=str(tmp_path / "pi-data" / "agent"), image=sandbox_image
    )
    yield s
    from pimagic.sandbox import Sandbox

    box = Sandbox(s, docker_client)
    # Through the sandbox, so its write window closes (env trust): a window left open past its
    # container would cover a later folder that reuses a deleted test folder's inode, and that
    # folder's `.env` would be refused. Windows of containers a test removed by hand close too.
    with contextlib.suppress(Exception):
        box.remove()
    with contextlib.suppress(Exception):
        box.close_stale_windows()


@pytest.fixture(scope="session")
def model_server(docker_client):
    """One scripted OpenAI-compatible server for the run, reachable from containers."""
    from pimagic.offline import start_scripted_model

    server = start_scripted_model(docker_client)
    yield server
    server.stop()


@pytest.fixture
def scripted(model_server, settings):
    """The scripted server, emptied, and selected as the workspace's model."""
    from pimagic.offline import use_scripted_model

    model_server.reset()
    use_scripted_model(settings, model_server)
    return model_server


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.fspath) or "security" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


def _node_version(node: str) -> tuple[int, ...] | None:
    import re
    import subprocess

    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.(\d+)\.(\d+)", out.strip())
    return tuple(int(x) for x in match.groups()) if match else None


@pytest.fixture(scope="session")
def host_pi() -> tuple[str, str]:
    """(node, cli.js) of pi on the host, from bench/install-host-pi.sh (PIMAGIC_HOST_NODE/_PI_CLI)."""
    import shutil

    node = os.environ.get("PIMAGIC_HOST_NODE") or shutil.which("node")
    version = _node_version(node) if node else None
    if version is None or version[:2] < MIN_NODE:
        _skip_or_fail(f"pi needs Node >= 22.19 on the host (found {node}: {version}); "
                      'run eval "$(bash bench/install-host-pi.sh)"')
    cli = os.environ.get("PIMAGIC_HOST_PI_CLI", "")
    if not Path(cli).is_file():
        _skip_or_fail(f"PIMAGIC_HOST_PI_CLI={cli!r} is not pi's dist/cli.js; run bench/install-host-pi.sh")
    return node, cli


@pytest.fixture
def pi_magics(settings):
    """PiMagics for the test's workspace, registered on the IPython shell; its pi is closed after."""
    from IPython.core.interactiveshell import InteractiveShell

    from pimagic.magics import PiMagics

    magics = PiMagics(InteractiveShell.instance(), settings)
    magics.shell.register_magics(magics)
    yield magics
    release_magics(magics)
