"""Runaway use through real `%%pi` cells: processes the agent leaves behind, and disk it fills.

Layers (SECURITY.md): the idle supervisor (the container's main process, uid 0 without
capabilities, container/idle-supervisor.py) ends the sandbox `idle_timeout` seconds after the
last notebook or shell detached; the `fsize` ulimit refuses any single file past
`workspace_write_limit`; the disk-fill poll (pimagic/diskwatch.py: statvfs of the disk holding
the workspace and pi's data dir) kills the sandbox when that disk filled past it in one cell.
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
DISKWATCH = "disk-fill poll (pimagic/diskwatch.py)"
MB = 2**20
IDLE = 3.0
# The supervisor polls every min(1, IDLE/4) s; pi needs a moment to exit once its stdin closes.
IDLE_BOUND = IDLE + 6.0
# Growth the poll lets through: the limit, plus what the sandbox writes until the poll sees it (up
# to 50 ms when the limit is this small) and while `docker kill` takes effect (0.2-0.5 s on the
# loaded 2-core machine). Measured with a 64 MiB limit: the trip at 64-112 MiB, the workspace's
# final growth 64-144 MiB (dd, fallocate loop, mmap, small files). The bound is net of the whole
# disk, so space another program frees meanwhile lets more through (540 MiB seen once on the
# shared dev machine): hence the wide margin.
OVERSHOOT = 768 * MB
# The poll measures the whole disk: other writers on this machine count toward a trip, so the
# workspace's own growth at the trip may fall short of the limit by what they wrote meanwhile.
NOISE = 16 * MB

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
    result = shell.run_cell_magic("pi", "--keep-going", "do it")  # a tripped limit fails the turn: read it
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
    "dd-files": "for i in $(seq 1 160); do dd if=/dev/zero of=fill$i bs=1M count=16 status=none; done; "
                "echo fin$((6*7))",
    "fallocate-loop": "for i in $(seq 1 160); do fallocate -l 16M fill$i; done; echo fin$((6*7))",
    "small-files": "mkdir -p many; for i in $(seq 1 20000); do head -c 32K /dev/zero > many/$i; done; echo fin$((6*7))",
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writing_past_the_limit_ends_the_turn(shell, scripted, settings, workspace, docker_client, writer):
    """write-limit: up to 2.5 GiB in files under the per-file bound; the poll kills the sandbox once
    the disk filled past 64 MiB, the cell says so and names the setting, the files are kept."""
    settings.workspace_write_limit = "64m"
    cell(shell, scripted, "echo warm")  # the sandbox is up and watched
    before = allocated(workspace)
    text = cell(shell, scripted, WRITERS[writer])
    growth = allocated(workspace) - before
    assert "more than workspace_write_limit=64m" in text, f"expected {DISKWATCH}: {text[-1500:]}"
    assert "PIMAGIC_WRITE_LIMIT" in text and "fin42" not in text, text[-1500:]
    assert 64 * MB - NOISE < growth <= 64 * MB + OVERSHOOT, f"grew by {growth / MB:.0f} MiB"
    wait_exited(docker_client, settings, 10)  # writers die with the sandbox (the engine may lag the kill)
    assert any(workspace.iterdir()), "the files are kept"

    scripted.reset()  # the killed turn never asked for its closing reply
    text = cell(shell, scripted, "echo next-$((6*7))")  # the next cell: a new sandbox, told why; new baseline
    assert "next-42" in text and "workspace_write_limit" in text, text[-1500:]


def test_writing_into_pis_data_dir_counts_too(shell, scripted, settings, workspace, docker_client):
    """write-limit (red-team finding): pi's data dir is the sandbox's other host mount; up to 1 GiB
    written there under a 64 MiB limit ends the turn like the same writes in the workspace."""
    settings.workspace_write_limit = "64m"
    cell(shell, scripted, "echo warm")
    text = cell(shell, scripted, "for i in $(seq 1 64); do head -c 16M /dev/zero > ~/.pi/agent/fill$i; done; "
                                 "echo fin$((6*7))")
    assert "more than workspace_write_limit=64m" in text and "fin42" not in text, text[-1500:]
    wait_exited(docker_client, settings, 10)
    grown = sum(f.stat().st_blocks * 512 for f in settings.pi_data_path.glob("fill*"))
    assert 64 * MB - NOISE < grown <= 64 * MB + OVERSHOOT, f"grew by {grown / MB:.0f} MiB"


def test_control_without_the_limit_the_folder_grows_unbounded(shell, scripted, settings, workspace):
    """Control: workspace_write_limit=0 (no bound) lets the same kind of writer finish."""
    settings.workspace_write_limit = "0"
    before = allocated(workspace)
    text = cell(shell, scripted, "for i in $(seq 1 12); do head -c 16M /dev/zero > fill$i; done; echo fin$((6*7))")
    assert "fin42" in text and "workspace_write_limit" not in text, text[-1500:]
    assert allocated(workspace) - before >= 192 * MB


def test_allowed_a_file_just_under_the_limit(shell, scripted, settings, workspace, docker_client):
    """Allowed use: a 48 MiB result under a 64 MiB limit is written whole; the sandbox stays
    (the rest of the limit is headroom for the machine's other writers, which count too)."""
    settings.workspace_write_limit = "64m"
    text = cell(shell, scripted, "head -c 48M /dev/zero > result.bin && echo wrote")
    assert "wrote" in text and "workspace_write_limit" not in text, text[-1500:]
    assert (workspace / "result.bin").stat().st_size == 48 * MB
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


# --- (c) the red team's evasions of a per-file watch (issue 9, RT5 findings 3-7) ---------------

# Shared mappings of sparse files (under the fsize bound), filled with no file event and the file
# references kept (no close event): 8 x 60 MiB under a 64 MiB limit.
MMAP_FILL = r'''
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
N, SIZE = 8, 60 * 2**20
maps = []
os.makedirs("/workspace/out", exist_ok=True)
for i in range(N):
    fd = os.open(f"/workspace/out/f{i}", os.O_CREAT | os.O_RDWR, 0o644)
    os.ftruncate(fd, SIZE)
    maps.append(libc.mmap(None, SIZE, 3, 1, fd, 0))
    os.close(fd)
time.sleep(1)
for a in maps:
    ctypes.memset(a, 0x78, SIZE)
    libc.msync(ctypes.c_void_p(a), ctypes.c_size_t(SIZE), 4)
open("/tmp/filled", "w").write("ok")
while True:
    time.sleep(3600)
'''


def test_shared_mmap_fill_trips_the_limit(shell, scripted, settings, workspace, docker_client):
    """write-limit (RT5 finding 3): 480 MiB through shared mappings of sparse files raised no file
    event and went unseen; the disk's own counters see it, the turn ends, the writer dies."""
    import base64

    settings.workspace_write_limit = "64m"
    cell(shell, scripted, "echo warm")
    before = allocated(workspace)
    b64 = base64.b64encode(MMAP_FILL.encode()).decode()
    text = cell(shell, scripted, f"echo {b64} | base64 -d > /tmp/f.py; "
                "setsid nohup python3 /tmp/f.py >/tmp/f.log 2>&1 </dev/null & "
                "for i in $(seq 1 60); do [ -e /tmp/filled ] && break; sleep 0.5; done; echo fin$((6*7))")
    assert "more than workspace_write_limit=64m" in text, f"expected {DISKWATCH}: {text[-1500:]}"
    assert "fin42" not in text, text[-1500:]
    wait_exited(docker_client, settings, 10)
    growth = allocated(workspace) - before
    assert growth <= 64 * MB + OVERSHOOT, f"grew by {growth / MB:.0f} MiB"


def _audit_watch_thread() -> list[str]:
    """Paths the disk-fill poll's thread opens or lists, from now on (audit hooks stay for the
    process's life: the list is what this test reads)."""
    import sys
    import threading

    seen: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event in ("open", "os.listdir", "os.scandir") and threading.current_thread().name == "pimagic-diskwatch":
            seen.append(f"{event} {args[0]!r}")

    sys.addaudithook(hook)
    return seen


def test_agent_symlinks_lead_the_poll_nowhere(shell, scripted, settings, workspace, tmp_path):
    """write-limit (RT5 finding 4): directories swapped for symlinks to a host tree made the old
    watcher walk (and watch) host folders. The poll lists nothing: no open/listdir/scandir on its
    thread while the agent churns; control: the old walker, on a thread of that name, is seen
    reading the host tree through the same symlink."""
    import threading

    host_tree = tmp_path / "host-tree"
    (host_tree / "deep").mkdir(parents=True)
    (host_tree / "deep" / "secret.txt").write_text("host only")
    settings.workspace_write_limit = "64m"
    cell(shell, scripted, "echo warm")
    seen = _audit_watch_thread()
    churn = ("python3 -c \"import os\nfor i in range(300):\n p=f'd{i}'; os.mkdir(p); os.rmdir(p); "
             f"os.symlink('{host_tree}', p)\"; ls d1 >/dev/null 2>&1; echo fin$((6*7))")
    text = cell(shell, scripted, churn)
    time.sleep(0.5)
    assert "fin42" in text and "workspace_write_limit" not in text, text[-1500:]
    assert any(t.name == "pimagic-diskwatch" for t in threading.enumerate()), "the poll runs"
    assert seen == [], f"the poll read paths: {seen[:5]}"
    assert (workspace / "d1").is_symlink()

    def old_walk() -> None:  # the removed DiskWatch._walk: os.walk of a top that is a symlink
        for dirpath, dirnames, filenames in os.walk(str(workspace / "d1"), followlinks=False):
            for name in dirnames + filenames:
                os.lstat(os.path.join(dirpath, name))

    walker = threading.Thread(target=old_walk, name="pimagic-diskwatch")
    walker.start()
    walker.join()
    assert any("d1/deep" in s for s in seen), f"control: the old walker descends into the host tree: {seen}"


EMPTY_FILES = ("mkdir -m 0300 hidden; python3 -c \"import os\nfor i in range({n}):\n "
               "os.close(os.open(f'hidden/{{i}}', os.O_CREAT | os.O_WRONLY, 0o600))\"; echo fin$((6*7))")


def test_many_empty_files_trip_the_inode_cap(shell, scripted, settings, workspace, docker_client, monkeypatch):
    """write-limit (RT5 findings 6, 7): empty files cost no blocks but use up the disk's inodes; in
    a 0300 folder the host (as a non-root user) cannot even list. The cap (scaled down here through
    the module constant) counts inodes on the disk, so the folder's mode does not matter."""
    import pimagic.diskwatch

    monkeypatch.setattr(pimagic.diskwatch, "INODE_LIMIT", 20_000)
    settings.workspace_write_limit = "64m"
    cell(shell, scripted, "echo warm")
    text = cell(shell, scripted, EMPTY_FILES.format(n=200_000))
    assert "new files and folders appeared on the disk" in text, f"expected {DISKWATCH}: {text[-1500:]}"
    assert "more than the 20000 allowed per cell" in text and "fin42" not in text, text[-1500:]
    wait_exited(docker_client, settings, 10)


def test_allowed_files_under_the_inode_cap(shell, scripted, settings, workspace, docker_client, monkeypatch):
    """Allowed use: 2,000 new files under the (scaled) cap finish; the sandbox stays."""
    import pimagic.diskwatch

    monkeypatch.setattr(pimagic.diskwatch, "INODE_LIMIT", 20_000)
    settings.workspace_write_limit = "64m"
    text = cell(shell, scripted, EMPTY_FILES.format(n=2_000))
    assert "fin42" in text and "allowed per cell" not in text, text[-1500:]
    assert container_state(docker_client, settings)[0] == "running"


def test_a_background_writer_between_cells_is_stopped(shell, scripted, settings, workspace, docker_client):
    """write-limit: the poll runs between cells too. A writer the agent leaves behind starts after
    the turn ended; the sandbox is killed while the user reads, and the next cell says why."""
    settings.workspace_write_limit = "64m"
    later = ("setsid nohup sh -c 'sleep 2; for i in $(seq 1 64); do head -c 16M /dev/zero > /workspace/bg$i; done' "
             ">/dev/null 2>&1 </dev/null & echo left-$((6*7))")
    assert "left-42" in cell(shell, scripted, later)
    wait_exited(docker_client, settings, 20)
    assert len(list(workspace.glob("bg*"))) < 64, "the writer was stopped before it finished"
    text = cell(shell, scripted, "echo next-$((6*7))")
    assert "next-42" in text and "after the last cell ended" in text, text[-1500:]
    assert "more than workspace_write_limit=64m" in text, text[-1500:]
