"""nbval runs these notebooks against the shipped scripted model (no provider in CI).

Kernels inherit this process's environment, so the scripted server is started
and selected through PIMAGIC_* variables before the first notebook's kernel starts."""

from __future__ import annotations

import os
import tempfile

import pytest

_state: dict = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _state or not str(item.fspath).endswith(".ipynb"):
        return
    from pimagic.config import load_settings
    from pimagic.demo import demo_script
    from pimagic.image import ensure_image
    from pimagic.offline import start_scripted_model, use_scripted_model
    from pimagic.sandbox import docker_client

    folder = os.path.dirname(str(item.fspath))
    if os.getuid() == 0:  # the agent never runs as root; CI runs as root: lend it the folder
        os.chown(folder, 1000, 1000)
    # pimagic's host-only state for this run (kernels inherit it): never the user's own.
    os.environ["PIMAGIC_DATA_ROOT"] = tempfile.mkdtemp(prefix="pimagic-nb-")
    client = docker_client()
    settings = load_settings(folder)
    os.environ["PIMAGIC_IMAGE"] = ensure_image(client, settings)
    server = start_scripted_model(client, demo_script)
    os.environ["PIMAGIC_MODEL"] = use_scripted_model(load_settings(folder), server)
    _state.update(server=server, settings=settings, client=client)


def pytest_sessionfinish(session):
    if _state:
        _state["server"].stop()
        try:
            _state["client"].containers.get(_state["settings"].container_name).remove(force=True)
        except Exception:
            pass
