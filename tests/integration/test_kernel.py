"""`%%pi` in real Jupyter kernels (jupyter_client): streamed display output,
kernel interrupt, restart reattach, two notebooks in one folder at once, and the sandbox
started in the background by `%load_ext` (warm start)."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import uuid

import docker.errors
import pytest
from _support import pi_processes
from jupyter_client.manager import start_new_kernel

from pimagic.scripted_model import Turn, call, say


def kernel_env(settings, notebook: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JPY_")}
    env.update(
        PIMAGIC_IMAGE=settings.image,
        PIMAGIC_PI_DATA_DIR=settings.pi_data_dir,
        PIMAGIC_MODEL=settings.model,
        JPY_SESSION_NAME=os.path.join(settings.workspace, notebook),
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    env.update(extra)
    return env


class Kernel:
    def __init__(self, settings, notebook: str, **env: str) -> None:
        self.km, self.kc = start_new_kernel(
            kernel_name="python3", cwd=settings.workspace, env=kernel_env(settings, notebook, **env)
        )
        started = time.monotonic()
        self.loaded = self.execute("%load_ext pimagic")
        self.load_seconds = time.monotonic() - started

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
            if kind in ("display_data", "update_display_data", "execute_result", "stream", "error", "clear_output"):
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


def stored(outputs: list) -> list[tuple[str, dict]]:
    """What a front end keeps in the cell (and saves in the notebook), applying the messages as
    JupyterLab and nbclient do: `clear_output(wait=True)` empties the area when the next output
    arrives, `update_display_data` replaces the output with that display id in place."""
    area: list[tuple[str, dict]] = []
    pending_clear = False
    for kind, content in outputs:
        if kind == "clear_output":
            if content.get("wait"):
                pending_clear = True
            else:
                area.clear()
            continue
        if kind == "update_display_data":
            shown = content.get("transient", {}).get("display_id")
            area = [(k, content if c.get("transient", {}).get("display_id") == shown else c) for k, c in area]
            continue
        if pending_clear:
            area, pending_clear = [], False
        area.append((kind, content))
    return area


@pytest.fixture
def kernels(settings, scripted):
    started: list[Kernel] = []

    def start(notebook: str = "analysis.ipynb", **env: str) -> Kernel:
        k = Kernel(settings, notebook, **env)
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
    assert [kind for kind, _ in stored(r["outputs"])] == ["execute_result"]  # no empty leftover saved
    assert {"text/plain", "text/markdown", "text/html"} <= set(final)
    assert "echo made-by-agent" in final["text/plain"] and "All **done**." in final["text/markdown"]
    assert "application/vnd.jupyter.widget-view+json" not in final  # no widget state needed


def test_quiet_and_line_prompt_cells_store_only_their_result(kernels, scripted):
    k = kernels()
    scripted.push(say("quiet"), say("on the line"))
    for code in ("%%pi -q\nsay it quietly", "%%pi Say it on the line"):
        r = k.execute(code)
        assert r["status"] == "ok", r["text"]
        kept = stored(r["outputs"])
        assert [kind for kind, _ in kept] == ["execute_result"], kept
        assert all(c["data"].get("text/plain", "").strip() for _, c in kept)


def test_footer_keeps_ticking_with_the_model_name_while_the_model_is_silent(kernels, scripted):
    k = kernels()
    scripted.push(Turn(text="late answer", delay=2.6))
    r = k.execute("%%pi\nthink first")
    assert r["status"] == "ok", r["text"]
    footers = [c["data"]["text/plain"] for kind, c in r["outputs"]
               if kind in ("display_data", "update_display_data") and c["data"].get("text/plain", "").startswith("──")]
    assert "── running · pimagic-scripted/scripted · 0s" in footers
    assert "── running · pimagic-scripted/scripted · 2s" in footers, footers


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
    assert r["status"] == "error" and r["reply"]["ename"] == "TurnInterrupted", r["text"][-3000:]
    assert time.monotonic() - started < 20
    # One line instead of a traceback (an error reply, so Run All stops), under the turn so far.
    assert r["reply"]["traceback"] == [
        "pimagic: interrupted; the turn was aborted, the sandbox and the session are kept"
    ]
    kept = stored(r["outputs"])
    assert [kind for kind, _ in kept] == ["display_data", "error"], kept
    assert "Aborted: interrupted" in kept[0][1]["data"]["text/plain"]
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


# --- warm start: `%load_ext` starts the sandbox and pi in the background ---------------------------


def warm_outcome(k: Kernel, timeout: float = 120) -> str:
    """What the kernel's background start did, once it is over ("off": none was begun)."""
    code = f"import pimagic\nw = pimagic._magics.warm\nprint('off' if w is None else w.wait({timeout}))"
    return k.execute(code, timeout=timeout + 30)["text"].strip()


def test_load_ext_starts_the_sandbox_and_pi_before_the_first_cell(kernels, scripted, settings, docker_client):
    k = kernels()
    assert k.loaded["status"] == "ok", k.loaded["text"]
    # %load_ext returned while the start was still going (a container + pi take far over a second)
    assert k.execute("import pimagic; print(pimagic._magics.warm.outcome)")["text"].strip() == "starting"
    assert warm_outcome(k) == "started (created)"
    container = docker_client.containers.get(settings.container_name)
    assert container.status == "running"
    sessions = pi_processes(container)
    assert len(sessions) == 1  # pi is up before any cell ...
    assert k.execute("print(pimagic._magics.session.alive())")["text"].strip() == "True"  # ... and answering
    scripted.push(say("warm hello"))
    r = k.execute("%%pi\nhello")
    assert r["status"] == "ok", r["text"]
    assert "warm hello" in r["text"] and "sandbox started" in r["text"]  # the start is reported by the cell
    assert docker_client.containers.get(settings.container_name).id == container.id
    assert pi_processes(container) == sessions  # the cell used that very pi: no second one, no restart


def test_settings_changed_after_load_apply_to_the_first_cell(kernels, scripted, settings, docker_client):
    k = kernels()
    assert warm_outcome(k) == "started (created)"
    first = docker_client.containers.get(settings.container_name)
    assert first.attrs["HostConfig"]["Memory"] != 2**30
    assert k.execute("%config PimagicSettings.memory = '1g'")["status"] == "ok"
    scripted.push(say("resized"))
    r = k.execute("%%pi\nhello")
    assert r["status"] == "ok" and "resized" in r["text"], r["text"]
    now = docker_client.containers.get(settings.container_name)
    assert now.id != first.id and now.attrs["HostConfig"]["Memory"] == 2**30  # replaced as any start would
    assert len(pi_processes(now)) == 1


def test_warm_start_off_starts_nothing_before_the_first_cell(kernels, scripted, settings, docker_client):
    k = kernels(PIMAGIC_WARM_START="0")
    assert warm_outcome(k) == "off"
    time.sleep(3)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(settings.container_name)
    scripted.push(say("cold"))
    r = k.execute("%%pi\nhello")
    assert r["status"] == "ok" and "cold" in r["text"] and "sandbox started" in r["text"], r["text"]


def test_no_image_means_no_build_and_no_sandbox(kernels, settings, docker_client):
    # another base image: another build context hash, so pimagic's own tag for it does not exist
    k = kernels(PIMAGIC_IMAGE="", PIMAGIC_BASE_IMAGE=f"pimagic-test/no-such-base:{uuid.uuid4().hex[:8]}")
    outcome = warm_outcome(k, timeout=60)
    assert outcome.startswith("skipped: image pimagic-sandbox:") and "is not built" in outcome, outcome
    tag = outcome.split()[2]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(settings.container_name)


def test_no_docker_engine_load_works_and_the_first_cell_says_why(kernels, settings):
    k = kernels(DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert k.loaded["status"] == "ok", k.loaded["text"]
    assert warm_outcome(k, timeout=60).startswith("failed: cannot reach the Docker engine")
    r = k.execute("%%pi\nhello")
    assert r["status"] == "error" and "cannot reach the Docker engine" in r["text"], r["text"]
