"""The image ships every tool pi would otherwise fetch at run time (fd, ripgrep) and nothing in it
phones home at start: pi in RPC mode (the notebook's) and in its terminal UI (`pimagic run`, which
looks for fd and rg as it starts) downloads nothing; the agent runs `fd` and `rg` as its own uid."""

from __future__ import annotations

import os
import re
import sys

from _support import Pty

from pimagic.scripted_model import call, say
from pimagic.session import PiSession

# What pi says when a tool it wants is missing: "fd not found. Downloading..." (or, offline,
# "... not found. Offline mode enabled, skipping download."), "Failed to download fd: ...".
FETCH_SIGNS = ("Downloading", "not found", "Failed to download")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][0-9A-Za-z]")


def test_rpc_pi_starts_without_fetching_and_the_agent_runs_fd_and_rg(settings, scripted, workspace):
    (workspace / "notes").mkdir()
    (workspace / "notes" / "needle-file.txt").write_text("a haystack line\n")
    session = PiSession(settings, "tools")
    try:
        session.open()
        scripted.push(
            call("bash", command="id -u; fd --version; fd needle; rg -l haystack; ls -A ~/.pi/agent/bin 2>&1; true"),
            say("done"),
        )
        events = list(session.prompt("find the needle", timeout=120))
        ends = [e for e in events if e.get("type") == "tool_execution_end"]
        assert ends, events[-3:]
        output = "".join(part.get("text", "") for part in ends[0]["result"]["content"])
        assert str(settings.uid) in output  # the agent's own uid ...
        assert "fdfind 8" in output and "notes/needle-file.txt" in output  # ... runs fd ...
        assert output.count("notes/needle-file.txt") == 2  # ... and rg
        assert "No such file or directory" in output  # pi put no tools of its own in its agent dir
        stderr = session.rpc.stderr_tail if session.rpc is not None else ""
        assert not any(sign in stderr for sign in FETCH_SIGNS), stderr
    finally:
        session.close()


def test_pi_terminal_ui_finds_fd_and_rg_and_downloads_nothing(settings):
    """`pimagic run` (pi's TUI) checks for fd and rg as it starts; with them missing it said
    "fd not found. Downloading... Failed" on the screen."""
    env = dict(os.environ, PIMAGIC_IMAGE=settings.image, PIMAGIC_PI_DATA_DIR=settings.pi_data_dir,
               TERM="xterm-256color", COLUMNS="120", LINES="40")
    with Pty([sys.executable, "-m", "pimagic.cli", "-w", settings.workspace, "run"], env) as term:
        term.read_for(20)
        screen = term.screen
        text = ANSI.sub(b"", screen).decode(errors="replace")
        assert "\x1b[" in screen.decode(errors="replace")  # the TUI drew itself (the check ran) ...
        assert not any(sign in text for sign in FETCH_SIGNS), text[-3000:]  # ... and fetched nothing
