"""Sessions the agent cannot keep attached (red-team findings against the idle supervisor).

Layer: the session leash (container/leash/leash.c, execute-only): every notebook's pi and every
terminal session of the CLI runs as the leash's child, so the process the idle supervisor counts
(parent outside the container) is never one the agent can steer, and `--hup` ends a pi that
stopped reading once the kernel's channel hangs up. A planted `~/.inputrc` no longer types into
`pimagic shell` (`INPUTRC=/etc/inputrc`).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from test_output_channels import Terminal
from test_runaway import IDLE, IDLE_BOUND, container_state, heartbeat_moves, wait_exited

from pimagic.sandbox import IDLE_EXIT_CODE, Sandbox
from pimagic.scripted_model import call, say

LEASH = "session leash (container/leash/leash.c)"

# One bash tool call: a second after the call returns, pi's session file becomes a FIFO; pi's next
# append to it blocks its main thread for good, so pi never sees its stdin close.
STUCK_PI = (
    "f=$(ls -t /home/pi/.pi/agent/sessions/*/*.jsonl | head -1); "
    "setsid nohup sh -c \"sleep 1; rm -f '$f'; mkfifo '$f'; "
    "while :; do date +%s%N > /workspace/heartbeat; sleep 0.2; done\" >/dev/null 2>&1 </dev/null & "
    "sleep 2; echo started"
)


def hostile_turn_then_detach(settings, scripted, pi_magics, workspace, command: str) -> None:
    """A warm-up cell, then a cell (bounded by --timeout) whose turn runs `command`, which leaves a
    heartbeat loop behind; then the kernel exits (its session closes)."""
    settings.idle_timeout = IDLE
    shell = pi_magics.shell
    scripted.push(say("warm"))
    shell.run_cell_magic("pi", "", "warm up")
    scripted.push(call("bash", command=command), say("done"))
    cell = threading.Thread(target=lambda: shell.run_cell_magic("pi", "--timeout 10", "do it"), daemon=True)
    cell.start()
    cell.join(40)
    assert heartbeat_moves(workspace), "the agent's loop runs"
    pi_magics.session.close()  # the kernel exits


@pytest.mark.parametrize("layer", ["leash", "control"])
def test_a_pi_stuck_on_a_fifo_does_not_keep_the_sandbox_alive(settings, scripted, pi_magics, workspace,
                                                             docker_client, monkeypatch, layer):
    """The kernel detaches from a pi the agent blocked: the leash kills it on the hang-up, so the
    sandbox and the agent's loop end within the idle bound. Control: pi started bare stays attached."""
    import pimagic.session

    if layer == "control":
        monkeypatch.setattr(pimagic.session, "LEASH", ())
    hostile_turn_then_detach(settings, scripted, pi_magics, workspace, STUCK_PI)
    if layer == "control":
        time.sleep(IDLE_BOUND + 3)
        assert container_state(docker_client, settings)[0] == "running" and heartbeat_moves(workspace), (
            "control: a bare pi blocked on the FIFO keeps the sandbox attached")
        return
    wait_exited(docker_client, settings, IDLE_BOUND + 3)
    assert container_state(docker_client, settings) == ("exited", IDLE_EXIT_CODE), LEASH
    assert not heartbeat_moves(workspace), "the agent's loop died with the sandbox"


def test_shell_ignores_the_agents_inputrc(settings, docker_client):
    """A key macro in ~/.inputrc (the agent's home) would append a command to every line the user
    types in `pimagic shell`; readline reads the root-owned /etc/inputrc instead."""
    box = Sandbox(settings, docker_client)
    box.start()
    macro = r'"\C-m": "\C-e; echo PLANTED-$((40+2))\C-j"'
    assert box.exec(["sh", "-c", f"printf '%s\\n' '{macro}' > ~/.inputrc"])[0] == 0
    with Terminal(settings, "locked") as term:
        term.expect(b"/workspace$ ")
        term.type("echo ready-$((6*7))")
        term.expect(b"ready-42")
        time.sleep(0.5)
        assert b"PLANTED-42" not in term.screen, term.screen[-2000:]
        assert term.close() == 0


# The agent SIGSTOPs every process whose parent is outside the container (its own leash included:
# same uid), so a leash would never see the kernel hang up.
STOP_SESSIONS = (
    "setsid nohup sh -c 'while :; do date +%s%N > /workspace/heartbeat; sleep 0.2; done' "
    ">/dev/null 2>&1 </dev/null & "
    "for s in /proc/[0-9]*/stat; do p=${s#/proc/}; p=${p%/stat}; "
    "  set -- $(sed 's/.*) //' $s 2>/dev/null); [ \"$2\" = 0 ] && [ $p != 1 ] && kill -STOP $p && echo stopped $p; "
    "done; sleep 1; echo started"
)


def test_a_stopped_session_does_not_count_as_attached(settings, scripted, pi_magics, workspace, docker_client):
    """Red-team finding: a stopped leash kept PPid 0 and counted as attached forever. The supervisor
    counts no stopped process (container/idle-supervisor.py `is_session`)."""
    hostile_turn_then_detach(settings, scripted, pi_magics, workspace, STOP_SESSIONS)
    wait_exited(docker_client, settings, IDLE_BOUND + 3)
    assert container_state(docker_client, settings) == ("exited", IDLE_EXIT_CODE), LEASH
    assert not heartbeat_moves(workspace)


def _supervisor():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "container" / "idle-supervisor.py"
    spec = importlib.util.spec_from_file_location("idle_supervisor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("stat", "counted"),
    [
        (b"42 (leash) S 0 42 42 0 -1", True),
        (b"42 (leash) R 0 42 42 0 -1", True),
        (b"42 (leash) T 0 42 42 0 -1", False),  # SIGSTOPped by the agent
        (b"42 (leash) t 0 42 42 0 -1", False),
        (b"42 (leash) Z 0 42 42 0 -1", False),
        (b"43 (sh) S 42 42 42 0 -1", False),  # the agent's processes have a parent inside
        (b"44 (a) b) S 0 44 44 0 -1", True),  # a comm with ') ' in it
    ],
)
def test_supervisor_counts_live_sessions_only(stat, counted):
    assert _supervisor().is_session(stat) is counted


# Two processes wake everything of their uid as fast as they can (kill(-1, SIGCONT)): a single
# SIGSTOP pass leaves some running; a spinner waits for the user's next terminal.
CONT_LOOP = "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True: libc.kill(-1, 18)\n"


def test_sigcont_loops_do_not_undo_the_freeze(settings, docker_client):
    """Red-team finding: SIGCONT loops woke processes during the CLI's single `kill -STOP -1`, and a
    spinner opened the new terminal before the lock (about 1 in 30 shells). The freeze now passes
    again until every agent process is stopped, and refuses to open a terminal if it cannot."""
    from test_output_channels import SPINNER, spinner_log

    box = Sandbox(settings, docker_client)
    box.start()
    plant = (f"cat > /tmp/spin.py; for i in 1 2; do setsid python3 -c '{CONT_LOOP}' >/dev/null 2>&1 </dev/null & "
             "done; setsid python3 /tmp/spin.py >/dev/null 2>&1 </dev/null & echo ok")
    assert box.exec(["sh", "-c", plant], stdin=SPINNER.encode())[0] == 0
    time.sleep(1.0)
    for attempt in range(4):
        # The prompt means the shell runs on its terminal, which is locked by now. (Typing is not
        # part of the check: a SIGCONT storm can stall readline, a denial of service the agent may
        # cause in its own sandbox.)
        with Terminal(settings, "locked") as term:
            term.expect(b"/workspace$ ")
            time.sleep(0.5)
        assert "OPENED" not in spinner_log(settings, docker_client), f"attempt {attempt}"
    code, out, _ = box.exec(["sh", "-c", "for p in $(pgrep -f '[l]ibc.kill'); do cut -d' ' -f3 /proc/$p/stat; done"])
    states = out.split()
    assert len(states) == 2 and b"T" not in states, f"the agent's processes run again afterwards: {states}"


@pytest.mark.parametrize("mode", ["locked", "agent-home"])
def test_shell_reads_nothing_from_the_agents_home(settings, docker_client, workspace, mode):
    """Red-team findings: programs the user runs in `pimagic shell` read the agent's dotfiles (a git
    pager set in ~/.gitconfig inherited the terminal and logged keys), and bash saved what the user
    typed in ~/.bash_history, where the agent reads it. The shell gets no home of the agent's.
    Control: the same shell with the agent's home runs the planted pager."""
    box = Sandbox(settings, docker_client)
    box.start()
    # The user's repository (in a subfolder). A repository changes the mounts (its config and hooks
    # are read-only), so the sandbox is restarted with it first: otherwise the CLI would replace the
    # container, and the agent's home with it, before the shell opens.
    repo = ("mkdir -p /workspace/proj && cd /workspace/proj && git init -q && "
            "git -c user.email=a@b -c user.name=a commit -q --allow-empty -m x")
    assert box.exec(["sh", "-c", repo])[0] == 0
    box.remove()
    box.start()
    plant = "git config --global core.pager 'touch /workspace/PAGER-RAN; cat' && echo planted"
    code, out, err = box.exec(["sh", "-c", plant])
    assert code == 0 and b"planted" in out, err
    with Terminal(settings, mode) as term:
        term.expect(b"/workspace$ ")
        term.type("cd proj && git log --oneline; echo logged-$((6*7))")
        if mode == "locked":
            term.expect(b"(END)")  # the image's pager, not the agent's: it waits for q
            os.write(term.fd, b"q")
        term.expect(b"logged-42")
        term.type("export GH_TOKEN=ghp_user_typed_SECRET; echo typed-$((6*7))")
        term.expect(b"typed-42")
        assert term.close() == 0
    if mode == "agent-home":
        assert (workspace / "PAGER-RAN").exists(), "control: the agent's pager ran"
        return
    assert not (workspace / "PAGER-RAN").exists(), "the agent's git pager ran in the user's shell"
    code, out, _ = box.exec(["sh", "-c", "cat ~/.bash_history 2>/dev/null; echo end"])
    assert b"SECRET" not in out, "the shell saved what the user typed where the agent reads it"
