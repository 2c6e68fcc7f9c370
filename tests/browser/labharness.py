"""JupyterLab + Debian's chromium for the browser test and scripts/screenshot.py: start a lab
on a free port with a token, stop it, and the browser launch settings (no browser download)."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("PIMAGIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


class LabError(RuntimeError):
    """JupyterLab did not come up; the message carries the end of its log."""


@dataclass
class Lab:
    proc: subprocess.Popen
    base: str
    token: str
    log_path: Path

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}"

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_env(scratch: Path, *, image: str, pi_data_dir: Path, model: str) -> dict[str, str]:
    """The environment for the lab and its kernels: this sandbox image, pi data dir and model,
    Jupyter's own dirs in `scratch`, nothing inherited that would pick another conversation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JPY_", "PIMAGIC_CONVERSATION"))}
    env.update(
        PIMAGIC_IMAGE=image, PIMAGIC_PI_DATA_DIR=str(pi_data_dir), PIMAGIC_MODEL=model, PARANOID_MODE="false",
        JUPYTER_CONFIG_DIR=str(scratch / "jupyter-config"), JUPYTER_RUNTIME_DIR=str(scratch / "jupyter-runtime"),
        JUPYTERLAB_WORKSPACES_DIR=str(scratch / "lab-workspaces"), PYTHONUNBUFFERED="1",
    )
    return env


def start_lab_for(workspace: Path, tmp: Path, settings: Any) -> Lab:
    """A lab on `workspace` for a test: its scratch dir under `tmp`, kernels using `settings`' image,
    pi data dir and model, and this process's import path (LabError when it does not come up)."""
    scratch = tmp / "lab"
    scratch.mkdir()
    env = lab_env(scratch, image=settings.image, pi_data_dir=settings.pi_data_path, model=settings.model)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return start_lab(workspace, scratch, env)


def start_lab(root: Path, scratch: Path, env: dict[str, str], timeout: float = 60.0) -> Lab:
    """JupyterLab serving `root` (its kernels inherit `env`), answering on its status API."""
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
        f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={scratch / 'lab-workspaces'}",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.getuid() == 0:
        cmd.append("--allow-root")
    log_path = scratch / "jupyter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(proc, f"http://127.0.0.1:{port}", token, log_path)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(f"{lab.base}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return lab
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            lab.stop()
            raise LabError("JupyterLab did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.3)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (chromium, playwright, jupyterlab >= 4), or None."""
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


# The notebook on screen: JupyterLab hides the other tabs' panels with this class.
ACTIVE_NOTEBOOK = "#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden)"


def menu(page: Any, top: str, command: str) -> None:
    """Click the menu bar's `top` menu, then its item running `command` (JupyterLab's command id)."""
    page.locator(".lm-MenuBar-item", has_text=top).first.click()
    page.locator(f".lm-Menu-item[data-command='{command}']").first.click()


def accept_dialog(page: Any, button: str, fill: str | None = None) -> None:
    """Answer JupyterLab's modal dialog: type `fill` into its input (if any), press `button`."""
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(state="visible", timeout=30_000)
    if fill is not None:
        field = dialog.locator("input").first
        field.fill(fill)
    accept = dialog.locator("button.jp-mod-accept")
    assert accept.inner_text().strip() == button, f"the dialog offers {accept.inner_text()!r}, not {button!r}"
    accept.click()
    dialog.wait_for(state="detached", timeout=30_000)


def cell_prompt(page: Any, index: int) -> str:
    return page.locator(ACTIVE_NOTEBOOK).locator(".jp-Cell").nth(index).locator(".jp-InputPrompt").inner_text().strip()


def start_cell(page: Any, index: int) -> None:
    """Run cell `index` of the notebook on screen (click into it, Shift+Enter); returns once the
    kernel took it (the prompt shows `[*]` or a number), not when it is done."""
    cell = page.locator(ACTIVE_NOTEBOOK).locator(".jp-Cell").nth(index)
    for _ in range(3):  # a keypress can be lost while the page is still settling: try again
        cell.locator(".jp-InputArea-editor").click()
        page.wait_for_timeout(150)
        before = cell_prompt(page, index)
        page.keyboard.press("Shift+Enter")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            now = cell_prompt(page, index)
            if now not in ("[ ]:", "") and (now != before or now == "[*]:"):
                return
            page.wait_for_timeout(100)
    raise AssertionError(f"cell {index} did not start: prompt {cell_prompt(page, index)!r}")


def wait_cell(page: Any, index: int, timeout: float = 120.0) -> None:
    """Wait until cell `index` shows an execution count (done)."""
    deadline = time.monotonic() + timeout
    while not re.fullmatch(r"\[\d+\]:", cell_prompt(page, index)):
        if time.monotonic() > deadline:
            raise AssertionError(f"cell {index} did not finish: prompt {cell_prompt(page, index)!r}")
        page.wait_for_timeout(150)


def run_cell(page: Any, index: int, timeout: float = 120.0) -> str:
    """Run cell `index` and wait for it; the text of its outputs as the page shows them."""
    start_cell(page, index)
    wait_cell(page, index, timeout)
    return cell_text(page, index)


def cell_text(page: Any, index: int) -> str:
    """innerText of cell `index`'s output area (what the user reads)."""
    return page.locator(ACTIVE_NOTEBOOK).locator(".jp-Cell").nth(index).locator(".jp-OutputArea").inner_text()


def error_outputs(page: Any, index: int) -> list[str]:
    """innerText of each error output (the red block IPython makes of an exception) of cell `index`."""
    return page.locator(ACTIVE_NOTEBOOK).locator(".jp-Cell").nth(index).locator(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
