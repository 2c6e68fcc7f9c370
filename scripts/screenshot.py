"""Take the README's screenshot: the quickstart notebook's `%%pi` cell, run in JupyterLab.

    PIMAGIC_IMAGE=pimagic:dev python scripts/screenshot.py [--output docs/jupyterlab-cell.png]

A temp workspace gets a copy of notebooks/quickstart.ipynb; the scripted model
(pimagic.demo.demo_script, offline, not an LLM) is selected for it; JupyterLab is
started on a free port with a token; Debian's /usr/bin/chromium, driven headless by
Playwright (no `playwright install`), opens the notebook, runs all cells, waits for
the `%%pi` cell's tool call and answer and saves a crop of the notebook panel.
Everything started here (server, JupyterLab, the sandbox container) is stopped after.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "browser"))  # the lab harness the browser test uses

from labharness import CHROMIUM, CHROMIUM_ARGS, LabError, lab_env, start_lab  # noqa: E402

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
DEFAULT_OUTPUT = REPO / "docs" / "jupyterlab-cell.png"
AGENT_UID = AGENT_GID = 1000


def _owned(path: Path) -> Path:
    if os.getuid() == 0:
        os.chown(path, AGENT_UID, AGENT_GID)
    return path


def _shoot(url: str, out: Path, timeout: float, scale: float) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=scale)
        try:
            page.goto(url)
            cells = page.locator(".jp-Notebook .jp-Cell")
            cells.first.wait_for(timeout=60_000)
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
                1, timeout=60_000)
            no_news = page.get_by_role("button", name="No", exact=True)
            if no_news.count():
                no_news.first.click()  # the "official Jupyter news?" question

            # More room for the notebook: close the left sidebar (file browser).
            if page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").count():
                page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").first.click()

            cells.first.click()
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

            pi_cell = cells.filter(has=page.locator(".jp-InputArea", has_text="%%pi")).first
            output = pi_cell.locator(".jp-OutputArea")
            expect(output).to_contain_text("snake.py", timeout=timeout * 1000)
            expect(output).to_contain_text("I wrote", timeout=timeout * 1000)
            # Let the rest of the notebook finish so nothing is still moving.
            last_prompt = cells.last.locator(".jp-InputPrompt")
            deadline = time.monotonic() + 120
            while not re.fullmatch(r"\[\d+\]:", last_prompt.inner_text().strip()):
                if time.monotonic() > deadline:
                    break
                page.wait_for_timeout(200)

            # The shot: the markdown cell that introduces `%%pi`, then the cell and its output. The active
            # cell (the last one, after Run All) stays out of the frame; so does the mouse.
            page.keyboard.press("Escape")
            page.mouse.move(5, 995)
            index = pi_cell.evaluate("el => [...el.parentElement.children].indexOf(el)")
            first = cells.nth(index - 1) if index > 0 else pi_cell
            pad = 16
            first.evaluate("""(el, pad) => {
                el.scrollIntoView({block: 'start'});
                let s = el.parentElement;
                while (s && s.scrollHeight <= s.clientHeight) s = s.parentElement;
                if (s) s.scrollTop -= pad;
            }""", pad)
            page.wait_for_timeout(800)
            top, bottom = first.bounding_box(), pi_cell.bounding_box()
            view = page.locator(".jp-NotebookPanel:visible .jp-Notebook").first.bounding_box()
            y0 = max(view["y"], top["y"] - pad)
            y1 = min(bottom["y"] + bottom["height"] + pad, view["y"] + view["height"])
            if index + 1 < cells.count():  # stop short of the next cell's text
                y1 = min(y1, cells.nth(index + 1).bounding_box()["y"] + 4)
            clip = {"x": view["x"], "y": y0, "width": view["width"], "height": y1 - y0}
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), clip=clip)
        except Exception:
            failure = out.with_name(out.stem + "-failure.png")
            page.screenshot(path=str(failure), full_page=True)
            print(f"failed; the page as it was: {failure}", file=sys.stderr)
            raise
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the %%%%pi answer")
    parser.add_argument("--scale", type=float, default=2, help="device pixels per CSS pixel (2: sharp on HiDPI)")
    args = parser.parse_args(argv)
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        raise SystemExit(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")

    from pimagic.config import load_settings
    from pimagic.demo import demo_script
    from pimagic.image import ensure_image
    from pimagic.offline import start_scripted_model, use_scripted_model
    from pimagic.sandbox import docker_client

    tmp = Path(tempfile.mkdtemp(prefix="pimagic-shot-"))
    os.environ["PIMAGIC_DATA_ROOT"] = str(tmp)  # pi data dirs must lie under pimagic's data root
    ws = tmp / "ws"
    ws.mkdir()
    _owned(ws)
    _owned(Path(shutil.copy(NOTEBOOK, ws / NOTEBOOK.name)))
    data = tmp / "pi-data" / "agent"

    client = docker_client()
    env_image = os.environ.get("PIMAGIC_IMAGE")
    overrides = {"image": env_image} if env_image else {}
    settings = load_settings(ws, environ={}, pi_data_dir=str(data), **overrides)
    image = env_image or ensure_image(client, settings)
    server = start_scripted_model(client, demo_script)
    lab = None
    try:
        model = use_scripted_model(settings, server)
        env = lab_env(tmp, image=image, pi_data_dir=data, model=model)
        try:
            lab = start_lab(ws, tmp, env)
        except LabError as e:
            raise SystemExit(str(e)) from None
        try:
            _shoot(lab.url(NOTEBOOK.name), args.output, args.timeout, args.scale)
        except Exception:
            print(lab.log_path.read_text()[-4000:], file=sys.stderr)
            raise
    finally:
        if lab is not None:
            lab.stop()
        server.stop()
        try:
            client.containers.get(settings.container_name).remove(force=True)
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
