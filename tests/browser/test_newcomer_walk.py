"""A newcomer's walk through JupyterLab (issue 11, "Tests"): one lab, one notebook folder, the real
UI driven by Debian's chromium through Playwright, real kernels, a real sandbox, the scripted model.

Tick paranoid mode in the panel; rename the notebook (File > Rename Notebook); Kernel > Restart:
paranoid mode is still on, shown by the panel and `%pi status`, and the sandbox refuses `gh repo
list`; the conversation continued under the new name; the toolbar's interrupt leaves one line; a
down model server fails the cell with what to do, and Run All stops there; `%%pi Create a snake
game` works; File > Save, Kernel > Shut Down; File > New > Notebook (a new Untitled.ipynb) starts
its own conversation; reopen the saved notebook: its panel output tells the truth without the
kernel that made it.

Needs: `apt-get install -y chromium`, `pip install playwright 'jupyterlab>=4'`. Skipped (with the
reason) when one is missing, unless PIMAGIC_REQUIRE_BROWSER=1 (CI), which fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support import AGENT_GID, AGENT_UID
from labharness import (
    ACTIVE_NOTEBOOK,
    CHROMIUM,
    CHROMIUM_ARGS,
    LabError,
    accept_dialog,
    browser_missing,
    cell_prompt,
    cell_text,
    error_outputs,
    menu,
    run_cell,
    start_cell,
    start_lab_for,
    wait_cell,
)

from pimagic.scripted_model import Turn, call, say

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
REQUIRE = os.environ.get("PIMAGIC_REQUIRE_BROWSER") == "1"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(420)]

CURRENT_TAB = "#jp-main-dock-panel .lm-TabBar-tab.jp-mod-current"

# The walked notebook's cells, by index.
LOAD, PANEL, FIRST, STATUS, GH, LONG, DOWN, ON_THE_LINE = range(8)
CELLS = [
    "%load_ext pimagic",
    "%pi settings",
    "%%pi\nremember the word kiwi",
    "%pi status",
    "%%pi\nlist my repositories",
    "%%pi\ntalk for a long time",
    "%%pi -m dead/m\nare you there?",
    "%%pi Create a snake game",
]


def _closed_port(docker_client) -> int:
    """A port on the bridge gateway nothing listens on: a model server that is down."""
    from pimagic.relay import bridge_gateway

    with socket.socket() as s:
        s.bind((bridge_gateway(docker_client), 0))
        return s.getsockname()[1]


def _write_notebook(path: Path, sources: list[str]) -> None:
    """A notebook as the user's own (the agent's uid when we are root), for the python3 kernel."""
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nbformat.write(nb, path)
    if os.getuid() == 0:
        os.chown(path, AGENT_UID, AGENT_GID)


@pytest.fixture
def lab(settings, scripted, workspace, tmp_path, docker_client):
    reason = browser_missing()
    if reason:
        if REQUIRE:
            pytest.fail(f"PIMAGIC_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from pimagic.providers import register_provider
    from pimagic.scripted_model import pi_provider_config

    dead_url = f"http://host.docker.internal:{_closed_port(docker_client)}/v1"
    register_provider(settings, "dead", pi_provider_config(dead_url, "m"), retry=False)
    _write_notebook(workspace / "Untitled.ipynb", CELLS)
    try:
        server = start_lab_for(workspace, tmp_path, settings)
    except LabError as e:
        pytest.fail(str(e))
    server.dead_url = dead_url
    yield server
    server.stop()


@contextlib.contextmanager
def _browser(lab) -> Iterator[Any]:
    """Chromium for the walk; on failure a screenshot of every open page in test-artifacts/ and
    the end of the lab's log."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        except BaseException:
            for n, page in enumerate(p for c in browser.contexts for p in c.pages):
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(ARTIFACTS / f"newcomer-walk-failure-{n}.png"), full_page=True)
            print(lab.log_path.read_text()[-4000:])
            raise
        finally:
            browser.close()


def _open(browser, lab, notebook: str) -> Any:
    """A fresh page (its own lab layout: `reset`) showing `notebook`, its kernel idle."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{lab.base}/lab/tree/{notebook}?reset&token={lab.token}")
    expect(page.locator(ACTIVE_NOTEBOOK).locator(".jp-Cell").first).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=60_000)
    no_news = page.get_by_role("button", name="No", exact=True)
    if no_news.count():
        no_news.first.click()  # the "official Jupyter news?" question
    return page


def _kernels(lab) -> list[dict]:
    """The lab's running kernels (its REST API)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{lab.base}/api/kernels?token={lab.token}", timeout=10) as r:
        return json.loads(r.read())


def _said(scripted) -> list[str]:
    """What the user said in pi's last request to the model (the conversation pi sent)."""
    out = []
    for m in scripted.messages(-1):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append(str(content))
    return out


def _restart_kernel(page) -> None:
    """Kernel > Restart Kernel…, confirmed in the dialog; returns when the new kernel is idle."""
    from playwright.sync_api import expect

    menu(page, "Kernel", "kernelmenu:restart")
    accept_dialog(page, "Restart")
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=60_000)


def _html_text(fragment: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment))


def test_a_newcomers_walk_through_jupyterlab(lab, scripted, settings, workspace, docker_client):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    started = time.monotonic()
    with _browser(lab) as browser:
        page = _open(browser, lab, "Untitled.ipynb")
        nb = page.locator(ACTIVE_NOTEBOOK)

        # 1. The greeting names the prompt-on-the-line form; the panel ticks paranoid mode on.
        out = run_cell(page, LOAD)
        assert "%%pi Create a snake game" in out, f"step 1 (%load_ext greeting): {out!r}"
        run_cell(page, PANEL)
        panel = nb.locator(".pimagic-settings")
        expect(panel).to_be_visible(timeout=60_000)
        box = panel.locator(".pimagic-paranoid input[type='checkbox']")
        expect(box).not_to_be_checked()
        box.check()
        expect(panel.locator(".pimagic-message")).to_contain_text("paranoid mode ON", timeout=30_000)
        expect(panel.locator(".pimagic-status")).to_contain_text("paranoid mode ON", timeout=30_000)

        scripted.push(say("I will remember kiwi."))
        out = run_cell(page, FIRST)
        assert "I will remember kiwi." in out, f"step 1 (first prompt): {out!r}"
        assert "new conversation for this notebook" in out, f"step 1 (first prompt says it starts one): {out!r}"

        # 2. File > Rename Notebook…: snake.ipynb (the same file, as jupyter_server renames).
        inode = os.stat(workspace / "Untitled.ipynb").st_ino
        menu(page, "File", "docmanager:rename")
        accept_dialog(page, "Rename", fill="snake.ipynb")
        expect(page.locator(CURRENT_TAB)).to_contain_text("snake.ipynb", timeout=30_000)
        assert not (workspace / "Untitled.ipynb").exists(), "step 2 (rename): Untitled.ipynb still there"
        assert os.stat(workspace / "snake.ipynb").st_ino == inode, "step 2 (rename): not the same file"

        # 3. Kernel > Restart Kernel…: paranoid mode is still on, and shown.
        _restart_kernel(page)
        run_cell(page, LOAD)
        run_cell(page, PANEL)
        panel = nb.locator(".pimagic-settings")
        expect(panel).to_be_visible(timeout=60_000)
        expect(panel.locator(".pimagic-paranoid input[type='checkbox']")).to_be_checked(timeout=30_000)
        expect(panel.locator(".pimagic-status")).to_contain_text("paranoid mode ON")
        out = run_cell(page, STATUS)
        assert "paranoid mode ON" in out, f"step 3 (%pi status after the restart): {out!r}"

        # 4. The sandbox truth: the agent's `gh repo list` is refused; the conversation continued.
        scripted.push(call("bash", command="gh repo list"), say("gh said no."))
        out = run_cell(page, GH)
        assert "gh said no." in out, f"step 4 (gh cell): {out!r}"
        assert "gh-guard" in out and "paranoid" in out, f"step 4 (gh repo list is refused in paranoid mode): {out!r}"
        assert "continuing this notebook's conversation: 1 earlier prompt" in out, (
            f"step 4 (the renamed, restarted notebook continues its conversation): {out!r}")
        said = _said(scripted)
        assert any("kiwi" in s for s in said), f"step 4 (pi sent the earlier prompt along): {said}"
        container = docker_client.containers.get(settings.container_name)
        code, raw = container.exec_run(["gh", "repo", "list"], user=f"{settings.uid}:{settings.gid}")
        assert code == 126 and b"blocked" in raw, f"step 4 (gh in the sandbox itself): {code} {raw!r}"

        # 5. The toolbar's interrupt: the turn so far, then one line, no traceback.
        scripted.push(Turn(text="word " * 400, chunk_size=4, chunk_delay=0.05))
        start_cell(page, LONG)
        expect(nb.locator(".jp-Cell").nth(LONG).locator(".jp-OutputArea")).to_contain_text("word word", timeout=60_000)
        page.locator(f"{ACTIVE_NOTEBOOK} .jp-Toolbar-item[data-jp-item-name='interrupt'] button, "
                     f"{ACTIVE_NOTEBOOK} .jp-Toolbar-item[data-jp-item-name='interrupt'] jp-button").first.click()
        wait_cell(page, LONG, timeout=30)
        errors = error_outputs(page, LONG)
        out = cell_text(page, LONG)
        assert [e.strip() for e in errors] == [
            "pimagic: interrupted; the turn was aborted, the sandbox and the session are kept"], (
            f"step 5 (interrupt ends in one line): {errors}")
        assert "Traceback" not in out and "KeyboardInterrupt" not in out and "Ctrl-C" not in out, (
            f"step 5 (no traceback): {out!r}")

        # 6. A down model server: the cell fails with the provider, its URL and what to do, and
        #    Run > Run Selected Cell and All Below stops there.
        nb.locator(".jp-Cell").nth(DOWN).locator(".jp-InputArea-editor").click()
        menu(page, "Run", "notebook:run-all-below")
        wait_cell(page, DOWN, timeout=60)
        page.wait_for_timeout(1500)
        out = cell_text(page, DOWN)
        errors = error_outputs(page, DOWN)
        assert len(errors) == 1 and f"cannot reach provider 'dead' at {lab.dead_url}" in errors[0], (
            f"step 6 (the cell fails, naming provider and URL): {errors}")
        assert "what to do:" in out and "start the model server" in out and "%pi models" in out, (
            f"step 6 (the hint says what to do): {out!r}")
        assert "Traceback" not in out, f"step 6 (no traceback): {out!r}"
        assert cell_prompt(page, ON_THE_LINE) == "[ ]:", (
            f"step 6 (Run All stops at the failed cell): {cell_prompt(page, ON_THE_LINE)!r}")

        # 7. The prompt on the magic line.
        scripted.push(say("A snake game, coming up."))
        out = run_cell(page, ON_THE_LINE)
        assert "A snake game, coming up." in out, f"step 7 (%%pi with the prompt on the line): {out!r}"
        assert "cell body is empty" not in out and not error_outputs(page, ON_THE_LINE), f"step 7: {out!r}"
        said = _said(scripted)
        assert said and said[-1] == "Create a snake game", f"step 7 (the line was the prompt): {said}"

        # 8. File > Save Notebook, then Kernel > Shut Down Kernel.
        menu(page, "File", "docmanager:save")
        expect(page.locator(CURRENT_TAB)).not_to_have_class(re.compile(r"\bjp-mod-dirty\b"), timeout=30_000)
        saved = json.loads((workspace / "snake.ipynb").read_text())
        assert any("I will remember kiwi." in json.dumps(c.get("outputs", [])) for c in saved["cells"]), (
            "step 8 (save): the outputs are not in snake.ipynb")
        kept = [o.get("data", {}) for o in saved["cells"][PANEL]["outputs"]]
        assert kept and "Paranoid mode: ON" in "".join(kept[-1].get("text/plain", "")), (
            f"step 8 (the saved panel's snapshot says paranoid mode ON): {kept}")
        menu(page, "Kernel", "kernelmenu:shutdown")  # JupyterLab 4 shuts it down without asking
        deadline = time.monotonic() + 30
        while _kernels(lab):
            assert time.monotonic() < deadline, f"step 8 (shut down): kernels still running: {_kernels(lab)}"
            page.wait_for_timeout(200)

        # 9. File > New > Notebook (the kernel dialog answered): a new Untitled.ipynb, where the
        #    first notebook was, starts its own conversation.
        page.locator(".lm-MenuBar-item", has_text="File").first.click()
        page.locator(".lm-Menu-item", has_text="New").first.hover()
        page.locator(".lm-Menu-item[data-command='notebook:create-new']").first.click()
        try:  # JupyterLab asks for the kernel unless it knows which one
            page.locator(".jp-Dialog").wait_for(state="visible", timeout=5_000)
        except PlaywrightTimeout:
            pass
        else:
            accept_dialog(page, "Select")
        expect(page.locator(CURRENT_TAB)).to_contain_text("Untitled.ipynb", timeout=30_000)
        expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=60_000)
        nb = page.locator(ACTIVE_NOTEBOOK)
        nb.locator(".jp-Cell").first.locator(".jp-InputArea-editor").click()
        page.keyboard.type("%load_ext pimagic")
        assert len(_kernels(lab)) == 1, f"step 9 (one kernel, the new notebook's): {_kernels(lab)}"
        run_cell(page, 0)
        nb.locator(".jp-Cell").nth(1).locator(".jp-InputArea-editor").click()
        page.keyboard.type("%%pi")
        page.keyboard.press("Enter")
        page.keyboard.type("which word did I say?")
        scripted.push(say("This is a new conversation."))
        out = run_cell(page, 1)
        assert "This is a new conversation." in out, f"step 9 (new notebook): {out!r}"
        assert "new conversation for this notebook" in out, f"step 9 (a new notebook starts fresh): {out!r}"
        said = _said(scripted)
        assert said == ["which word did I say?"], f"step 9 (nothing of snake.ipynb's conversation): {said}"
        page.close()

        # 10. Reopen the saved snake.ipynb (its kernel was shut down; JupyterLab starts a fresh one,
        #     which never had the panel's widget). The saved panel carries a truthful snapshot
        #     (paranoid mode ON, marked "not live"): nbconvert and untrusted views show it.
        saved = json.loads((workspace / "snake.ipynb").read_text())
        panel_html = ["".join(o["data"].get("text/html", "")) for c in saved["cells"] for o in c.get("outputs", [])
                      if "data" in o and "application/vnd.jupyter.widget-view+json" in o["data"]]
        assert panel_html and "not live" in panel_html[0], f"step 10 (the saved snapshot): {panel_html!r}"
        assert re.search(r"Paranoid mode\W+ON", _html_text(panel_html[0])), f"step 10 (saved value): {panel_html!r}"
        page = _open(browser, lab, "snake.ipynb")
        deadline = time.monotonic() + 30
        while "Loading widget" in (out := cell_text(page, PANEL)) and time.monotonic() < deadline:
            page.wait_for_timeout(200)  # the widget manager restores (from the kernel) first
        page.screenshot(path=str(ARTIFACTS / "newcomer-walk-reopened.png"), full_page=True)
        page.close()
        if "Error displaying widget" in out:
            # KNOWN LIMIT (SECURITY.md-style honesty, README "Troubleshooting"): JupyterLab always
            # prefers the widget view in a notebook it trusts and its widget renderer has no
            # fallback to the saved text; only a lab extension can change that. Everything above
            # passed; this marks the one step still open (the test passes once Lab shows the text).
            pytest.xfail("step 10: JupyterLab shows 'Error displaying widget' for a saved panel "
                         "(the saved snapshot is right; Lab has no fallback to it)")
        assert "pimagic settings" in out and "not live" in out, f"step 10 (the static panel): {out!r}"
        assert re.search(r"Paranoid mode\W+ON", out), f"step 10 (the paranoid value): {out!r}"
    print(f"walk took {time.monotonic() - started:.1f}s")
