"""The example notebooks fail under nbval when the agent's turn fails.

A ``%%pi`` cell's output is not compared, and with ``PIMAGIC_FAIL_ON_ERROR=0`` (or
``--keep-going``) a failed turn does not raise either: the error is only in the cell and in
``result.error``. So each example notebook follows every ``%%pi`` cell with a checked cell that
prints ``_pi.ok``. Here a notebook runs the way CI runs it (pytest ``--nbval-lax``, the real
sandbox) with failures not raised, against a scripted model that answers every request with an
HTTP 500: the run must fail, and on that checked cell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# Like notebooks/conftest.py, but the scripted model fails every turn.
CONFTEST = '''
import os
import tempfile

import pytest

_state = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _state:
        return
    from pimagic.config import load_settings
    from pimagic.image import ensure_image
    from pimagic.offline import start_scripted_model, use_scripted_model
    from pimagic.sandbox import docker_client
    from pimagic.scripted_model import error

    folder = os.path.dirname(str(item.fspath))
    if os.getuid() == 0:
        os.chown(folder, 1000, 1000)
    os.environ["PIMAGIC_DATA_ROOT"] = tempfile.mkdtemp(prefix="pimagic-nbfail-")
    client = docker_client()
    settings = load_settings(folder)
    os.environ["PIMAGIC_IMAGE"] = ensure_image(client, settings)
    server = start_scripted_model(client, lambda request: error(500, "scripted outage"))
    os.environ["PIMAGIC_MODEL"] = use_scripted_model(load_settings(folder), server)
    _state.update(server=server, settings=settings, client=client)


def pytest_sessionfinish(session):
    if _state:
        _state["server"].stop()
        try:
            _state["client"].containers.get(_state["settings"].container_name).remove(force=True)
        except Exception:
            pass
'''


@pytest.mark.docker
def test_a_failed_agent_turn_fails_the_notebook_on_its_checked_cell(tmp_path, sandbox_image):
    folder = tmp_path / "nb"
    folder.mkdir()
    shutil.copy(NOTEBOOKS / "settings_panel.ipynb", folder)
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "pytest.ini").write_text("[pytest]\naddopts = --nbval-lax\ntimeout = 300\n")
    env = {**os.environ, "PIMAGIC_IMAGE": sandbox_image, "PIMAGIC_FAIL_ON_ERROR": "0"}  # the kernel inherits it
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(folder), str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # Only the checked cell after %%pi fails (code cells: %load_ext, %pi settings, %%pi, the check).
    assert "1 failed, 3 passed" in out, out
    assert "FAILED settings_panel.ipynb::Cell 3" in out, out
    assert "ok: False | error:" in out and "scripted outage" in out, out
