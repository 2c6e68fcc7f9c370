"""JupyterLab + Debian's chromium for the browser test and scripts/screenshot.py: start a lab
on a free port with a token, stop it, and the browser launch settings (no browser download)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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
