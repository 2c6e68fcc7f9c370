"""A notebook renamed in JupyterLab keeps its conversation; a new notebook at the old name starts
its own (issue 11, item 2). JupyterLab's server is driven through the REST calls its front end
makes (new notebook, save, rename, kernel restart), its kernels through their connection files:
a real server, real kernels, a real sandbox, the scripted model. No browser needed.

Needs `pip install 'jupyterlab>=4'`; skipped (with the reason) when it is missing, unless
PIMAGIC_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import json
import os
import queue
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient
from labharness import LabError, start_lab_for

from pimagic.scripted_model import say

REQUIRE = os.environ.get("PIMAGIC_REQUIRE_BROWSER") == "1"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


@pytest.fixture
def lab(settings, scripted, workspace, tmp_path):
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        if REQUIRE:
            pytest.fail("PIMAGIC_REQUIRE_BROWSER=1 but jupyterlab is not installed")
        pytest.skip("jupyterlab is not installed (pip install 'jupyterlab>=4')")
    try:
        server = start_lab_for(workspace, tmp_path, settings)
    except LabError as e:
        pytest.fail(str(e))
    clients: list[BlockingKernelClient] = []
    server.clients = clients
    server.runtime = tmp_path / "lab" / "jupyter-runtime"
    yield server
    for kc in clients:
        kc.stop_channels()
    server.stop()


def api(lab, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{lab.base}/api/{path}", method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {lab.token}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=120) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def open_notebook(lab, path: str) -> tuple[str, BlockingKernelClient]:
    """What opening a notebook in JupyterLab does: a session (and kernel) for its path."""
    session = api(lab, "POST", "sessions", {"path": path, "name": path, "type": "notebook",
                                             "kernel": {"name": "python3"}})
    kernel_id = session["kernel"]["id"]
    kc = BlockingKernelClient(connection_file=str(lab.runtime / f"kernel-{kernel_id}.json"))
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    lab.clients.append(kc)
    return session["id"], kc


def run(kc: BlockingKernelClient, code: str, timeout: float = 120) -> str:
    """Execute `code`; the text of everything it showed (error tracebacks included)."""
    msg_id = kc.execute(code)
    text, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            text += content["text"]
        elif kind == "error":
            text += "\n".join(content["traceback"])
        elif kind in ("display_data", "execute_result"):
            text += content["data"].get("text/plain", "")
        elif kind == "status" and content["execution_state"] == "idle":
            return text
    raise AssertionError(f"{code!r} did not finish within {timeout}s: {text[-2000:]}")


def said(scripted) -> str:
    return str([m.get("content") for m in scripted.messages(-1) if m.get("role") == "user"])


def test_a_notebook_renamed_in_jupyterlab_keeps_its_conversation(lab, scripted, workspace: Path):
    created = api(lab, "POST", "contents", {"type": "notebook"})  # File > New > Notebook
    assert created["path"] == "Untitled.ipynb"
    inode = os.stat(workspace / "Untitled.ipynb").st_ino
    session_id, kc = open_notebook(lab, "Untitled.ipynb")
    assert "pimagic:" in run(kc, "%load_ext pimagic")
    scripted.push(say("noted"))
    out = run(kc, "%%pi\nremember kiwi")
    assert "new conversation for this notebook" in out, out

    # Save (the server's default atomic_writing rewrites in place) and rename, as the front end does.
    model = api(lab, "GET", "contents/Untitled.ipynb")
    model["content"]["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "saved", "id": "c1"})
    api(lab, "PUT", "contents/Untitled.ipynb", {"type": "notebook", "format": "json", "content": model["content"]})
    api(lab, "PATCH", "contents/Untitled.ipynb", {"path": "snake.ipynb"})
    api(lab, "PATCH", f"sessions/{session_id}", {"path": "snake.ipynb", "name": "snake.ipynb"})
    assert os.stat(workspace / "snake.ipynb").st_ino == inode  # what the identity rests on

    api(lab, "POST", "contents", {"type": "notebook"})  # another new notebook takes the old name
    assert (workspace / "Untitled.ipynb").exists()

    # Kernel > Restart Kernel on the renamed notebook: the conversation continues.
    kernel_id = api(lab, "GET", f"sessions/{session_id}")["kernel"]["id"]
    api(lab, "POST", f"kernels/{kernel_id}/restart")
    kc.wait_for_ready(timeout=60)
    run(kc, "%load_ext pimagic")
    scripted.push(say("it was kiwi"))
    out = run(kc, "%%pi\nwhich fruit?")
    assert "continuing this notebook's conversation: 1 earlier prompt (`%pi new` starts fresh)" in out, out
    assert "remember kiwi" in said(scripted)

    # The new Untitled.ipynb: its own, empty conversation.
    _, other = open_notebook(lab, "Untitled.ipynb")
    run(other, "%load_ext pimagic")
    scripted.push(say("hello"))
    out = run(other, "%%pi\nwho are you?")
    assert "new conversation for this notebook" in out, out
    assert "kiwi" not in said(scripted) and "who are you?" in said(scripted)
