"""Runaway use through real `%%pi` cells: processes the agent leaves behind, and disk it fills.

Layers (SECURITY.md): the idle supervisor (the container's main process, uid 0 without
capabilities, container/idle-supervisor.py) ends the sandbox `idle_timeout` seconds after the
last notebook or shell detached; the `fsize` ulimit refuses any single file past
`workspace_write_limit`; the growth watch (pimagic/diskwatch.py) kills the sandbox when the
workspace as a whole grows past it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pimagic.sandbox import IDLE_EXIT_CODE
from pimagic.scripted_model import call, say

IDLE_SUPERVISOR = "idle supervisor (container/idle-supervisor.py, uid 0 without capabilities)"
FSIZE = "fsize ulimit (workspace_write_limit per file)"
DISKWATCH = "workspace growth watch (pimagic/diskwatch.py)"
MB = 2**20
IDLE = 3.0
# The supervisor polls every min(1, IDLE/4) s; pi needs a moment to exit once its stdin closes.
IDLE_BOUND = IDLE + 6.0
# Growth the watch lets through: the limit, plus what the sandbox writes between the event and
# the kill taking effect (~20 ms). Measured on the 2-core CI machine with a 64 MiB limit: 0-13 MiB
# for files written with head/dd, up to 48 MiB for a loop of `fallocate -l 16M` (~2 GB/s).
OVERSHOOT = 128 * MB

HEARTBEAT = (
    "setsid nohup sh -c 'while :; do date +%s%N > /workspace/heartbeat; sleep 0.2; done' "
    ">/dev/null 2>&1 </dev/null & sleep 0.5; echo started"
)
# The agent tries to stop the supervisor, pid 1 and to read the supervisor's /proc (raw openat:
# nothing of the LD_PRELOAD firewall on the way, so the refusal is the kernel's).
KILL_SUPERVISOR = (
    "sup=$(pgrep -u 0 -x python3); echo sup=$sup; kill -9 $sup; echo kill=$?; "
    "kill -STOP $sup; echo stop=$?; kill -9 1; echo init=$?; "
    "python3 -c \"import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); "
    "r=l.syscall(257,-100,('/proc/%s/environ' % sys.argv[1]).encode(),0); "
    "print('environ', r, ctypes.get_errno())\" $sup"
)


@pytest.fixture
def shell(settings, scripted, pi_magics):
    return pi_magics.shell


def cell(shell, scripted, command: str | None = None) -> str:
    """One `%%pi` cell; the text the user sees (tool output included)."""
    if command is None:
        scripted.push(say("done"))
    else:
        scripted.push(call("bash", command=command), say("done"))
    result = shell.run_cell_magic("pi", "", "do it")
    outputs = " ".join(str(getattr(c, "result", "")) + str(getattr(c, "output", "")) for c in result.tool_calls)
    return outputs + " " + result._repr_mimebundle_()["text/plain"]


def heartbeat_moves(workspace: Path, wait: float = 1.0) -> bool:
    first = (workspace / "heartbeat").read_text()
    time.sleep(wait)
    return (workspace / "heartbeat").read_text() != first


def container_state(docker_client, settings) -> tuple[str, int | None]:
    container = docker_client.containers.get(settings.container_name)
    return container.status, container.attrs.get("State", {}).get("ExitCode")


def wait_exited(docker_client, settings, bound: float) -> float:
    """Seconds until the container stopped; fails past `bound`."""
    started = time.monotonic()
    while time.monotonic() - started < bound:
        if container_state(docker_client, settings)[0] == "exited":
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"the sandbox still runs after {bound:g}s")


# --- (a) agent processes end with the kernel ---------------------------------------------


def test_background_process_ends_after_the_kernel_detaches(shell, scripted, settings, workspace, pi_magics,
                                                          docker_client):
    """idle-timeout: a detached loop outlives pi's tool call, but not the notebook: once the
    kernel's pi is gone the sandbox stops itself within the bound; the agent can neither kill nor
    freeze the supervisor, and its own processes do not count as attached."""
    settings.idle_timeout = IDLE
    assert "started" in cell(shell, scripted, HEARTBEAT)
    text = cell(shell, scripted, KILL_SUPERVISOR)
    assert "Operation not permitted" in text, f"expected {IDLE_SUPERVISOR} to refuse the signals: {text[-1500:]}"
    assert "kill=1" in text and "stop=1" in text and "init=1" in text, text[-1500:]
    assert "environ -1 13" in text, f"the supervisor's /proc must refuse the agent's uid (EACCES): {text[-1500:]}"
    time.sleep(IDLE + 1)  # attached: nothing stops, whatever the agent did
    assert container_state(docker_client, settings)[0] == "running"
    assert heartbeat_moves(workspace)

    pi_magics.session.close()  # what a kernel exit does: the exec socket closes, pi ends
    took = wait_exited(docker_client, settings, IDLE_BOUND)
    status, code = container_state(docker_client, settings)
    assert (status, code) == ("exited", IDLE_EXIT_CODE), f"expected {IDLE_SUPERVISOR}; stopped after {took:.1f}s"
    assert not heartbeat_moves(workspace), "the agent's background loop survived the sandbox"

    text = cell(shell, scripted)  # the next cell: a new sandbox, and why the old one stopped
    assert "stopped itself" in text and "PIMAGIC_IDLE_TIMEOUT" in text, text[-1500:]
    assert container_state(docker_client, settings)[0] == "running"


KERNEL = """
import os, sys, time
from pimagic.config import load_settings
from pimagic.session import PiSession
workspace, data, image = sys.argv[1:4]
settings = load_settings(workspace, environ=os.environ, pi_data_dir=data, image=image, idle_timeout=float(sys.argv[4]))
PiSession(settings, "killed-kernel").ensure()
print("ready", flush=True)
time.sleep(600)
"""


def test_a_killed_kernel_detaches_too(settings, workspace, docker_client):
    """idle-timeout: a kernel that dies (SIGKILL, no cleanup) closes its exec socket with it; pi
    ends, and the sandbox with the agent's background loop stops within the bound."""
    import subprocess
    import sys

    args = [str(workspace), str(settings.pi_data_path), settings.image, str(IDLE)]
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout.readline().strip() == "ready"
        from pimagic.sandbox import Sandbox

        settings.idle_timeout = IDLE
        Sandbox(settings, docker_client).exec(["bash", "-c", HEARTBEAT])  # the agent's leftover
        time.sleep(IDLE + 1)
        assert container_state(docker_client, settings)[0] == "running" and heartbeat_moves(workspace)
    finally:
        kernel.kill()
        kernel.wait()
    wait_exited(docker_client, settings, IDLE_BOUND)
    assert container_state(docker_client, settings) == ("exited", IDLE_EXIT_CODE), f"expected {IDLE_SUPERVISOR}"
    assert not heartbeat_moves(workspace)


def test_control_without_idle_bound_the_process_outlives_the_kernel(shell, scripted, settings, workspace,
                                                                   pi_magics, docker_client):
    """Control: idle_timeout=0 (no bound) leaves the same background loop running after the
    kernel detached: the supervisor is what stopped it above."""
    settings.idle_timeout = 0
    assert "started" in cell(shell, scripted, HEARTBEAT)
    pi_magics.session.close()
    time.sleep(IDLE_BOUND)
    assert container_state(docker_client, settings)[0] == "running"
    assert heartbeat_moves(workspace), "without the idle bound the agent's loop keeps running"


def test_allowed_an_attached_kernel_keeps_its_background_process(shell, scripted, settings, workspace,
                                                               docker_client):
    """Allowed use: a notebook that stays open keeps a server or watcher it started across cells,
    however long the pause between them."""
    settings.idle_timeout = IDLE
    assert "started" in cell(shell, scripted, HEARTBEAT)
    time.sleep(IDLE_BOUND)
    assert container_state(docker_client, settings)[0] == "running"
    assert heartbeat_moves(workspace)
    text = cell(shell, scripted, "cat /workspace/heartbeat >/dev/null && echo still-here")
    assert "still-here" in text and "stopped itself" not in text, text[-1500:]


# --- (b) bounded disk ----------------------------------------------------------------------


def allocated(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


WRITERS = {
    "dd-files": "for i in $(seq 1 40); do dd if=/dev/zero of=fill$i bs=1M count=16 status=none; done; echo fin$((6*7))",
    "fallocate-loop": "for i in $(seq 1 40); do fallocate -l 16M fill$i; done; echo fin$((6*7))",
    "small-files": "mkdir -p many; for i in $(seq 1 20000); do head -c 32K /dev/zero > many/$i; done; echo fin$((6*7))",
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writing_past_the_limit_ends_the_turn(shell, scripted, settings, workspace, docker_client, writer):
    """write-limit: 640 MiB in files under the per-file bound; the watch kills the sandbox once
    the folder grew past 64 MiB, the cell says so and names the setting, the files are kept."""
    settings.workspace_write_limit = "64m"
    cell(shell, scripted, "echo warm")  # the sandbox is up and watched
    before = allocated(workspace)
    text = cell(shell, scripted, WRITERS[writer])
    growth = allocated(workspace) - before
    assert "more than workspace_write_limit=64m" in text, f"expected {DISKWATCH}: {text[-1500:]}"
    assert "PIMAGIC_WRITE_LIMIT" in text and "fin42" not in text, text[-1500:]
    assert 64 * MB < growth <= 64 * MB + OVERSHOOT, f"grew by {growth / MB:.0f} MiB"
    wait_exited(docker_client, settings, 10)  # writers die with the sandbox (the engine may lag the kill)
    assert any(workspace.iterdir()), "the files are kept"

    scripted.reset()  # the killed turn never asked for its closing reply
    text = cell(shell, scripted, "echo next-$((6*7))")  # the next cell: a new sandbox, told why; new baseline
    assert "next-42" in text and "workspace_write_limit" in text, text[-1500:]


def test_writing_into_pis_data_dir_counts_too(shell, scripted, settings, workspace, docker_client):
    """write-limit (red-team finding): pi's data dir is the sandbox's other host mount; 192 MiB
    written there under a 64 MiB limit ends the turn like the same writes in the workspace."""
    settings.workspace_write_limit = "64m"
    cell(shell, scripted, "echo warm")
    text = cell(shell, scripted, "for i in $(seq 1 12); do head -c 16M /dev/zero > ~/.pi/agent/fill$i; done; "
                                 "echo fin$((6*7))")
    assert "more than workspace_write_limit=64m" in text and "fin42" not in text, text[-1500:]
    wait_exited(docker_client, settings, 10)
    grown = sum(f.stat().st_blocks * 512 for f in settings.pi_data_path.glob("fill*"))
    assert 64 * MB < grown <= 64 * MB + OVERSHOOT, f"grew by {grown / MB:.0f} MiB"


def test_control_without_the_limit_the_folder_grows_unbounded(shell, scripted, settings, workspace):
    """Control: workspace_write_limit=0 (no bound) lets the same kind of writer finish."""
    settings.workspace_write_limit = "0"
    before = allocated(workspace)
    text = cell(shell, scripted, "for i in $(seq 1 12); do head -c 16M /dev/zero > fill$i; done; echo fin$((6*7))")
    assert "fin42" in text and "workspace_write_limit" not in text, text[-1500:]
    assert allocated(workspace) - before >= 192 * MB


def test_allowed_a_file_just_under_the_limit(shell, scripted, settings, workspace, docker_client):
    """Allowed use: a 60 MiB result under a 64 MiB limit is written whole; the sandbox stays."""
    settings.workspace_write_limit = "64m"
    text = cell(shell, scripted, "head -c 60M /dev/zero > result.bin && echo wrote")
    assert "wrote" in text and "workspace_write_limit" not in text, text[-1500:]
    assert (workspace / "result.bin").stat().st_size == 60 * MB
    assert container_state(docker_client, settings)[0] == "running"


def test_allowed_the_bound_is_per_cell_not_per_kernel(shell, scripted, settings, workspace, docker_client):
    """Allowed use: the user's own 40 MiB data set written between two cells, then a cell that writes
    40 MiB: each cell stays under 64 MiB, so nothing is killed though the folder grew by 80 MiB."""
    settings.workspace_write_limit = "64m"
    assert "wrote" in cell(shell, scripted, "head -c 40M /dev/zero > agent1.bin && echo wrote")
    (workspace / "dataset.bin").write_bytes(b"\1" * (40 * MB))  # the notebook's own code, on the host
    time.sleep(2)  # the user reads the result before the next cell (file events arrive meanwhile)
    text = cell(shell, scripted, "head -c 40M /dev/zero > agent2.bin && echo wrote")
    assert "wrote" in text and "workspace_write_limit" not in text, text[-1500:]
    assert container_state(docker_client, settings)[0] == "running"


FILE_SIZE_ATTACK = (
    "fallocate -l 200M fa.bin; echo fa=$?; head -c 200M /dev/zero > /tmp/big; echo big=$?; "
    "stat -c 'size=%s' /tmp/big; rm -f /tmp/big"
)


def test_one_big_file_or_fallocate_hits_efbig(shell, scripted, settings, workspace):
    """fsize: one fallocate of 200 MiB (the issue's 4 ms attack) and one 200 MiB stream are
    refused by the kernel at the limit (SIGXFSZ: exit 153), before any watcher could react."""
    settings.workspace_write_limit = "64m"
    text = cell(shell, scripted, FILE_SIZE_ATTACK)
    assert "fa=153" in text and "big=153" in text, f"expected {FSIZE}: {text[-1500:]}"
    assert "File size limit exceeded" in text and f"size={64 * MB}" in text, text[-1500:]
    assert (workspace / "fa.bin").lstat().st_blocks == 0


def test_control_without_the_ulimit_fallocate_succeeds(shell, scripted, settings, workspace):
    """Control: with no limit the same fallocate allocates 200 MiB in a few milliseconds."""
    settings.workspace_write_limit = "0"
    text = cell(shell, scripted, FILE_SIZE_ATTACK)
    assert "fa=0" in text and "big=0" in text and f"size={200 * MB}" in text, text[-1500:]
    assert (workspace / "fa.bin").lstat().st_blocks * 512 >= 200 * MB
