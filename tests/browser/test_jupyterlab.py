"""The settings panel and a streamed turn in a real browser: JupyterLab started here, Debian's
chromium driven by Playwright (no browser download), a real kernel, a real sandbox, the scripted model.

Needs: `apt-get install -y chromium`, `pip install playwright 'jupyterlab>=4'`. Skipped
(with the reason) when one is missing, unless PIMAGIC_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support import make_workspace
from labharness import CHROMIUM, CHROMIUM_ARGS, LabError, browser_missing, lab_env, start_lab

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "settings_panel.ipynb"
ARTIFACTS = REPO / "test-artifacts"
REQUIRE = os.environ.get("PIMAGIC_REQUIRE_BROWSER") == "1"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def browser_tools():
    reason = browser_missing()
    if reason:
        if REQUIRE:
            pytest.fail(f"PIMAGIC_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


def answer(request: dict) -> str:
    """The scripted model says which model id pi asked for: the page shows whether the switch took."""
    return f"Scripted hello from model {request.get('model')}."


@pytest.fixture
def lab(browser_tools, tmp_path, docker_client, sandbox_image):
    """JupyterLab on a free port with a token, serving a workspace configured for the scripted model."""
    from pimagic import providers
    from pimagic.config import load_settings
    from pimagic.offline import start_scripted_model, use_scripted_model
    from pimagic.providers import register_provider
    from pimagic.sandbox import HOST_GATEWAY_NAME
    from pimagic.scripted_model import SCRIPTED_PROVIDER

    ws = make_workspace(tmp_path / "ws")
    shutil.copy(NOTEBOOK, ws / NOTEBOOK.name)
    if os.getuid() == 0:
        os.chown(ws / NOTEBOOK.name, 1000, 1000)
    data = tmp_path / "pi-data" / "agent"
    server = start_scripted_model(docker_client, answer, extra_model_ids=["scripted-b"])
    settings = load_settings(ws, environ={}, pi_data_dir=str(data), image=sandbox_image)
    model = use_scripted_model(settings, server)
    register_provider(settings, SCRIPTED_PROVIDER,
                      providers.provider_config(server.base_url(HOST_GATEWAY_NAME), server.model_ids))

    env = lab_env(tmp_path, image=sandbox_image, pi_data_dir=data, model=model)
    try:
        lab = start_lab(ws, tmp_path, env)
    except LabError as e:
        server.stop()
        pytest.fail(str(e))
    try:
        yield {"url": lab.url(NOTEBOOK.name), "server": server, "settings": settings, "log": lab.log_path,
               "open": lab.url, "workspace": ws}
    finally:
        lab.stop()
        server.stop()
        try:
            docker_client.containers.get(settings.container_name).remove(force=True)
        except Exception:
            pass


def _run_cell(page, index: int, timeout: float = 120.0) -> None:
    """Run one cell (click into it, Shift+Enter) and wait until its prompt shows an execution count."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(3):  # a keypress can be lost while the page is still settling: try again
        cell.locator(".jp-InputArea-editor").click()
        page.wait_for_timeout(200)
        page.keyboard.press("Shift+Enter")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and prompt.inner_text().strip() in ("[ ]:", ""):
            page.wait_for_timeout(100)
        if prompt.inner_text().strip() not in ("[ ]:", ""):
            break
    deadline = time.monotonic() + timeout
    while not re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()):
        if time.monotonic() > deadline:
            raise AssertionError(f"cell {index} did not finish: prompt {prompt.inner_text()!r}")
        page.wait_for_timeout(200)


@contextlib.contextmanager
def _notebook_page(lab: dict, notebook: str, failure: str) -> Iterator[Any]:
    """``notebook`` (in the lab's workspace) open in chromium, its kernel idle; on failure a
    screenshot in test-artifacts/ and the end of the lab's log."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    cells = len(json.loads((lab["workspace"] / notebook).read_text())["cells"])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(lab["open"](notebook))
            expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(cells, timeout=60_000)
            # Kernel ready (the status bar says Idle) before running anything.
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
                1, timeout=60_000)
            no_news = page.get_by_role("button", name="No", exact=True)
            if no_news.count():
                no_news.first.click()  # the "official Jupyter news?" question
            yield page
        except Exception:
            page.screenshot(path=str(ARTIFACTS / failure), full_page=True)
            print(lab["log"].read_text()[-4000:])
            raise
        finally:
            browser.close()


def test_settings_panel_in_jupyterlab(lab, docker_client):
    from playwright.sync_api import expect

    settings = lab["settings"]
    with _notebook_page(lab, NOTEBOOK.name, "jupyterlab-failure.png") as page:
        _run_cell(page, 1)  # %load_ext pimagic
        _run_cell(page, 2)  # %pi settings
        panel = page.locator(".pimagic-settings")
        expect(panel).to_be_visible(timeout=60_000)
        for css in ("pimagic-paranoid", "pimagic-model", "pimagic-thinking", "pimagic-server-url",
                    "pimagic-refresh", "pimagic-restart", "pimagic-stop", "pimagic-status"):
            expect(panel.locator(f".{css}")).to_be_visible()
        expect(panel.locator(".pimagic-status")).to_contain_text("pi: not running")

        # Switch the model and paranoid mode through the page.
        select = panel.locator(".pimagic-model select")
        expect(select.locator("option[value='pimagic-scripted/scripted-b']")).to_have_count(1)
        select.select_option("pimagic-scripted/scripted-b")
        expect(panel.locator(".pimagic-message")).to_contain_text("pimagic-scripted/scripted-b saved",
                                                                 timeout=15_000)
        panel.locator(".pimagic-paranoid input[type='checkbox']").check()
        expect(panel.locator(".pimagic-message")).to_contain_text("paranoid mode ON", timeout=15_000)

        _run_cell(page, 3, timeout=150)  # %%pi
        output = page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".jp-OutputArea")
        expect(output).to_contain_text("Scripted hello from model scripted-b.", timeout=120_000)

        panel.locator(".pimagic-refresh button, button.pimagic-refresh").first.click()
        expect(panel.locator(".pimagic-status")).to_contain_text("pimagic-scripted/scripted-b", timeout=30_000)
        expect(panel.locator(".pimagic-status")).to_contain_text("running")
        page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"), full_page=True)

    # What the page did reached the sandbox: paranoid mode blocks gh there.
    container = docker_client.containers.get(settings.container_name)
    code, out = container.exec_run(["gh", "repo", "list"], user=f"{settings.uid}:{settings.gid}")
    assert code == 126 and b"blocked" in out, out
    requests = lab["server"].chat_requests
    assert requests and requests[-1].body["model"] == "scripted-b"
    from pimagic import statedir

    cfg = statedir.config_dir(settings)  # host-owned; the sandbox reads a read-only copy
    assert json.loads((cfg / "settings.json").read_text())["defaultModel"] == "scripted-b"


# A streamed answer long enough to be cut into several live outputs: paragraphs, a code block past
# the segment size (cut at a line, the fence re-opened), and one paragraph past it (cut at a space).
STREAM_TEXT = (
    "First paragraph of the streamed answer.\n\n"
    "Second paragraph, a little longer than the first one.\n\n"
    "```text\n" + "".join(f"code line {i:03d} of the listing\n" for i in range(60)) + "```\n\n"
    + " ".join(f"long{i:03d}" for i in range(200)) + "\n\n"
    "Closing words."
)


def _squash(text: str) -> str:
    """Text as compared on screen: no white space, no backticks (a fence still arriving shows them)."""
    return "".join(text.split()).replace("`", "")


def _outputs(page, index: int) -> list[str]:
    """innerText of each output of cell ``index``, top to bottom (without the prompt)."""
    return page.evaluate(
        """(i) => Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell')[i]
                 .querySelectorAll('.jp-OutputArea-child .jp-OutputArea-output')).map(e => e.innerText)""",
        index,
    )


GREETING = "sandbox started; new conversation for this notebook"


def _is_greeting(output: str) -> bool:
    """The first cell of a kernel opens with one line on the sandbox and the conversation."""
    return _squash(output).startswith(_squash(GREETING))


def test_streamed_turn_in_jupyterlab(lab):
    """While a turn streams the cell shows its pieces in order, each on screen once, the footer last;
    when it ends, the static result is the cell's only output (what a saved notebook keeps)."""
    import nbformat
    from playwright.sync_api import expect

    from pimagic.scripted_model import Turn

    nb = nbformat.v4.new_notebook(metadata=json.loads(NOTEBOOK.read_text())["metadata"])  # its kernel
    nb.cells = [nbformat.v4.new_code_cell("%load_ext pimagic"), nbformat.v4.new_code_cell("%%pi\nstream please")]
    path = lab["workspace"] / "stream.ipynb"
    nbformat.write(nb, path)
    if os.getuid() == 0:
        os.chown(path, 1000, 1000)
    lab["server"].push(Turn(text=STREAM_TEXT, chunk_size=12, chunk_delay=0.02))
    visible = _squash(STREAM_TEXT.replace("```text", "").replace("```", ""))
    with _notebook_page(lab, "stream.ipynb", "jupyterlab-streaming-failure.png") as page:
        _run_cell(page, 0)
        cell = page.locator(".jp-Notebook .jp-Cell").nth(1)
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")

        samples: list[list[str]] = []
        deadline = time.monotonic() + 150
        while not re.fullmatch(r"\[\d+\]:", cell.locator(".jp-InputPrompt").inner_text().strip()):
            assert time.monotonic() < deadline, "the streamed cell did not finish"
            outs = _outputs(page, 1)
            if outs and "running" in outs[-1]:
                samples.append(outs)
                if len(samples) == 40:
                    page.screenshot(path=str(ARTIFACTS / "jupyterlab-streaming.png"), full_page=True)
            page.wait_for_timeout(50)
        assert len(samples) > 10, samples  # the live view was on screen while the turn ran
        grew = [len(s) for s in samples]
        assert max(grew) >= 5, grew  # cut into pieces, each its own output
        shown_before = ""
        for outs in samples:
            assert outs[-1].lstrip().startswith("running ·"), outs  # the footer stays last
            shown = _squash("".join(o for o in outs[:-1] if not _is_greeting(o)))
            assert visible.startswith(shown), (shown, visible)  # in order, nothing twice
            assert len(shown) >= len(shown_before)  # never goes back
            shown_before = shown

        expect(cell.locator(".jp-OutputArea-child")).to_have_count(1, timeout=10_000)
        final = _outputs(page, 1)[0]
        answer = _squash(final.split("done ·")[0])
        assert answer.startswith(_squash(GREETING)), answer[:200]  # the kernel's first cell says what it did
        assert visible.startswith(answer[answer.index(visible[:40]):]), answer
        assert _squash("Closing words.") in _squash(final) and "done ·" in final
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-streamed.png"), full_page=True)
