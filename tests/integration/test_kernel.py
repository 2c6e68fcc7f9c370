"""`%%pi` in real Jupyter kernels (jupyter_client): streamed display output,
kernel interrupt, restart reattach, and two notebooks in one folder at once."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time

import pytest
from jupyter_client.manager import start_new_kernel

from pimagic.scripted_model import Turn, call, say


def kernel_env(settings, notebook: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JPY_")}
    env.update(
        PIMAGIC_IMAGE=settings.image,
        PIMAGIC_PI_DATA_DIR=settings.pi_data_dir,
        PIMAGIC_MODEL=settings.model,
        JPY_SESSION_NAME=os.path.join(settings.workspace, notebook),
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    return env


class Kernel:
    def __init__(self, settings, notebook: str) -> None:
        self.km, self.kc = start_new_kernel(
            kernel_name="python3", cwd=settings.workspace, env=kernel_env(settings, notebook)
        )
        self.execute("%load_ext pimagic")

    def execute(self, code: str, timeout: float = 120) -> dict:
        """Run code; return {'status', 'outputs', 'text'} from the iopub messages of this request."""
        msg_id = self.kc.execute(code)
        outputs, status = [], None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind in ("display_data", "update_display_data", "execute_result", "stream", "error"):
                outputs.append((kind, content))
            if kind == "status" and content["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=timeout)
        status = reply["content"]["status"]
        text = ""
        for kind, content in outputs:
            if kind == "stream":
                text += content["text"]
            elif kind == "error":
                text += "\n".join(content["traceback"])
            elif "data" in content:
                text += content["data"].get("text/plain", "")
        return {"status": status, "outputs": outputs, "text": text, "reply": reply["content"]}

    def restart(self) -> None:
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=60)
        self.execute("%load_ext pimagic")

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernels(settings, scripted):
    started: list[Kernel] = []

    def start(notebook: str = "analysis.ipynb") -> Kernel:
        k = Kernel(settings, notebook)
        started.append(k)
        return k

    yield start
    for k in started:
        k.shutdown()


def test_cell_streams_display_output_and_returns_a_static_result(kernels, scripted, workspace):
    k = kernels()
    scripted.push(call("bash", command="echo made-by-agent > out.txt"), say("All **done**."))
    r = k.execute("%%pi\nmake out.txt")
    assert r["status"] == "ok", r["text"]
    assert (workspace / "out.txt").read_text() == "made-by-agent\n"
    kinds = [kind for kind, _ in r["outputs"]]
    assert "update_display_data" in kinds  # streamed while it ran
    final = [c for kind, c in r["outputs"] if kind == "execute_result"][-1]["data"]
    assert {"text/plain", "text/markdown", "text/html"} <= set(final)
    assert "echo made-by-agent" in final["text/plain"] and "All **done**." in final["text/markdown"]
    assert "application/vnd.jupyter.widget-view+json" not in final  # no widget state needed


def test_kernel_interrupt_aborts_and_the_next_cell_works(kernels, scripted):
    k = kernels()
    scripted.push(Turn(text="slow " * 400, chunk_size=4, chunk_delay=0.05))

    def interrupt():
        scripted.wait_for_requests(1, timeout=60)
        time.sleep(0.5)
        k.km.interrupt_kernel()

    threading.Thread(target=interrupt, daemon=True).start()
    started = time.monotonic()
    r = k.execute("%%pi\ntalk slowly")
    assert r["status"] == "error" and r["reply"]["ename"] == "KeyboardInterrupt", r["text"][-3000:]
    assert time.monotonic() - started < 20
    scripted.reset()
    scripted.push(say("back"))
    r = k.execute("%%pi\nstill there?")
    assert r["status"] == "ok" and "back" in r["text"]


def test_restarted_kernel_reattaches_and_continues_the_conversation(kernels, scripted, settings, docker_client):
    k = kernels()
    scripted.push(say("noted"))
    assert k.execute("%%pi\nremember kiwi")["status"] == "ok"
    container_id = docker_client.containers.get(settings.container_name).id
    k.restart()
    scripted.push(say("it was kiwi"))
    r = k.execute("%%pi\nwhich fruit?")
    assert r["status"] == "ok", r["text"]
    assert docker_client.containers.get(settings.container_name).id == container_id  # same sandbox
    history = str(scripted.messages(-1))
    assert "remember kiwi" in history and "noted" in history


def test_two_notebooks_in_one_folder_keep_separate_conversations(kernels, scripted):
    a, b = kernels("a.ipynb"), kernels("b.ipynb")

    def reply(request: dict):  # answer each notebook with what it said, slowly, so turns overlap
        users = [m for m in request.get("messages", []) if m.get("role") == "user"]
        last = str(users[-1]["content"]) if users else ""
        word = "alpha" if "alpha" in last else "beta"
        return Turn(text=f"echo {word} " * 20, chunk_size=3, chunk_delay=0.02)

    scripted.reset(reply)
    results: dict[str, dict] = {}
    threads = [
        threading.Thread(target=lambda: results.__setitem__("a", a.execute("%%pi\nsay alpha"))),
        threading.Thread(target=lambda: results.__setitem__("b", b.execute("%%pi\nsay beta"))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert results["a"]["status"] == results["b"]["status"] == "ok", (results["a"]["text"], results["b"]["text"])
    assert "alpha" in results["a"]["text"] and "beta" not in results["a"]["text"]
    assert "beta" in results["b"]["text"] and "alpha" not in results["b"]["text"]
    for request in scripted.chat_requests:
        said = str([m for m in request.body["messages"] if m.get("role") == "user"])
        assert not ("alpha" in said and "beta" in said)  # never one conversation with both
