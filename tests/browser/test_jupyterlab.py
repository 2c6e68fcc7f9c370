"""The settings panel in a real browser: JupyterLab started here, Debian's chromium driven
by Playwright (no browser download), a real kernel, a real sandbox, the scripted model.

Needs: `apt-get install -y chromium`, `pip install playwright 'jupyterlab>=4'`. Skipped
(with the reason) when one is missing, unless PIMAGIC_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from _support import make_workspace
from labharness import CHROMIUM, CHROMIUM_ARGS, LabError, lab_env, start_lab

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "settings_panel.ipynb"
ARTIFACTS = REPO / "test-artifacts"
REQUIRE = os.environ.get("PIMAGIC_REQUIRE_BROWSER") == "1"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


def _missing() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    try:
        import jupyterlab
    except ImportError:
        return "jupyterlab is not installed (pip install 'jupyterlab>=4')"
    if int(jupyterlab.__version__.split(".")[0]) < 4:
        return f"jupyterlab {jupyterlab.__version__} is too old (need >= 4)"
    return None


@pytest.fixture(scope="module")
def browser_tools():
    reason = _missing()
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
    from pimagic import relay
    from pimagic.config import load_settings
    from pimagic.offline import register_provider, start_scripted_model, use_scripted_model
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
                      relay.provider_config(server.base_url(HOST_GATEWAY_NAME), server.model_ids))

    env = lab_env(tmp_path, image=sandbox_image, pi_data_dir=data, model=model)
    try:
        lab = start_lab(ws, tmp_path, env)
    except LabError as e:
        server.stop()
        pytest.fail(str(e))
    try:
        yield {"url": lab.url(NOTEBOOK.name), "server": server, "settings": settings, "log": lab.log_path}
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


def test_settings_panel_in_jupyterlab(lab, docker_client):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    settings = lab["settings"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(lab["url"])
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(4, timeout=30_000)
            # Kernel ready (the status bar says Idle) before running anything.
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
                1, timeout=60_000)

            no_news = page.get_by_role("button", name="No", exact=True)
            if no_news.count():
                no_news.first.click()  # the "official Jupyter news?" question

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
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-failure.png"), full_page=True)
            print(lab["log"].read_text()[-4000:])
            raise
        finally:
            browser.close()

    # What the page did reached the sandbox: paranoid mode blocks gh there.
    container = docker_client.containers.get(settings.container_name)
    code, out = container.exec_run(["gh", "repo", "list"], user=f"{settings.uid}:{settings.gid}")
    assert code == 126 and b"blocked" in out, out
    requests = lab["server"].chat_requests
    assert requests and requests[-1].body["model"] == "scripted-b"
    from pimagic import piconfig

    cfg = piconfig.config_dir(settings)  # host-owned; the sandbox reads a read-only copy
    assert json.loads((cfg / "settings.json").read_text())["defaultModel"] == "scripted-b"
