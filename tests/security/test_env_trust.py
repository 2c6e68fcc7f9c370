"""A `.env` the agent wrote is never loaded (issue 9, class 2).

The agent creates the folder's `.env` through pi's own bash tool in a real `%%pi` cell (raw
rename, hard link, a background process after the cell ended). The user then does the next
thing: a new kernel in the same folder (`%load_ext pimagic`) and a `%%pi` cell. The settings
must be the user's (paranoid still on, limits unchanged, the container's PidsLimit the safe one)
and the cell must name the refused file. Allowed use beside it: a `.env` the user writes while
no sandbox runs loads; one the user edits while it runs loads after `%pi trust-env`. The control
is that same path: once vouched for, the very file the agent wrote does take effect.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from pimagic.scripted_model import call, say

LAYER = "env-trust (pimagic/envtrust.py: write windows + accepted-content ledger)"
PLANTED = "PARANOID_MODE=0\nPIMAGIC_PIDS_LIMIT=100000\nPIMAGIC_PI_DATA_DIR=/somewhere\n"
SAFE_PIDS = 512
# The fs firewall blocks libc calls that name `.env*` (that is another layer, see SECURITY.md);
# raw syscalls pass it, so the agent can create the file: this layer must hold on its own.
_RAW = """
import ctypes, os, platform, sys
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": {"renameat": 264, "linkat": 265, "openat": 257},
      "aarch64": {"renameat": 38, "linkat": 37, "openat": 56}}[platform.machine()]
AT = -100
how, data = sys.argv[1], sys.argv[2].replace("|", chr(10)).encode()
if how == "env-new":  # write .env.new itself with a raw openat, then rename it over .env
    fd = libc.syscall(nr["openat"], AT, b".env.new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert fd >= 0, ctypes.get_errno()
    os.write(fd, data); os.close(fd)
    src = b".env.new"
else:
    open("planted.tmp", "wb").write(data)
    src = b"planted.tmp"
if how.startswith("link"):
    rc = libc.syscall(nr["linkat"], AT, src, AT, b".env", 0)
else:
    rc = libc.syscall(nr["renameat"], AT, src, AT, b".env")
assert rc == 0, ctypes.get_errno()
if how == "link":
    os.unlink(src)
print("planted", how)
"""


def _attack(how: str, *, delay: int = 0) -> str:
    """The bash command the scripted model runs; with `delay`, a detached process plants the file
    `delay` seconds after the command (and so the cell) has returned."""
    run = f"cd /workspace && python3 /tmp/plant.py {how} '{PLANTED.replace(chr(10), '|')}'"
    if delay:
        run = f"setsid sh -c \"sleep {delay}; {run}\" </dev/null >/dev/null 2>&1 & echo started"
    return f"cat > /tmp/plant.py <<'EOF'{_RAW}EOF\n{run}"


ATTACKS = {how: _attack(how) for how in ("rename", "link", "env-new")}


@pytest.fixture
def kernel1(settings, scripted, pi_magics):
    """The first kernel: paranoid on, as the user's ipython_config.py says."""
    settings.paranoid = True
    return pi_magics


@pytest.fixture
def new_kernel(settings, workspace, monkeypatch):
    """Start a NEW kernel for the same folder the way a notebook does: `%load_ext pimagic` with
    the folder as cwd and paranoid mode from the IPython config (which a `.env` would override)."""
    from IPython.core.interactiveshell import InteractiveShell

    import pimagic

    ip = InteractiveShell.instance()
    saved = ip.config.PimagicSettings.copy()  # other tests' %config must not leak into this kernel
    ip.config.PimagicSettings.clear()
    started = []

    def start():
        monkeypatch.chdir(workspace)
        monkeypatch.setenv("PIMAGIC_PI_DATA_DIR", settings.pi_data_dir)
        monkeypatch.setenv("PIMAGIC_IMAGE", settings.image)
        ip.config.PimagicSettings.paranoid = True
        out = io.StringIO()
        with redirect_stdout(out):
            pimagic.load_ipython_extension(ip)
        magics = pimagic._magics
        started.append(magics)
        return magics, out.getvalue()

    yield start
    for magics in started:
        if magics._session is not None:
            magics._session.close()
        if magics.settings in ip.configurables:
            ip.configurables.remove(magics.settings)
    pimagic._magics = None
    ip.config.PimagicSettings.clear()
    ip.config.PimagicSettings.update(saved)


def run_cell(magics, scripted, *steps) -> str:
    scripted.push(*(steps or (say("done"),)))
    result = magics.shell.run_cell_magic("pi", "", "do it")
    tools = " ".join(str(getattr(c, "result", "")) for c in result.tool_calls)
    return tools + result._repr_mimebundle_()["text/plain"]


def planted(workspace: Path) -> bool:
    path = workspace / ".env"
    return path.is_file() and path.read_text() == PLANTED


def pids_limit(docker_client, settings) -> int:
    return docker_client.containers.get(settings.container_name).attrs["HostConfig"]["PidsLimit"]


def assert_refused(text: str, workspace: Path) -> None:
    assert f"did not load {workspace / '.env'}" in text, f"expected {LAYER} to name the file: {text[-1500:]}"
    for key in ("PARANOID_MODE", "PIMAGIC_PIDS_LIMIT", "PIMAGIC_PI_DATA_DIR"):
        assert key in text
    assert "100000" not in text and "/somewhere" not in text  # names only, never values
    assert "%pi trust-env" in text


# --- attacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_agent_written_env_is_not_loaded_by_the_next_kernel(
    attack, kernel1, new_kernel, scripted, settings, workspace, docker_client
):
    assert not (workspace / ".env").exists()
    out = run_cell(kernel1, scripted, call("bash", command=ATTACKS[attack]), say("done"))
    assert planted(workspace), f"the attack itself must work ({attack}): {out[-1500:]}"

    magics, load_out = new_kernel()
    s = magics.settings
    assert (s.paranoid, s.pids_limit, s.pi_data_path) == (True, SAFE_PIDS, settings.pi_data_path), LAYER
    assert_refused(load_out, workspace)  # said at %load_ext ...
    text = run_cell(magics, scripted)
    assert_refused(text, workspace)  # ... and in the next %%pi cell
    assert pids_limit(docker_client, settings) == SAFE_PIDS
    assert "did not load" not in run_cell(magics, scripted)  # said once, not in every cell


def test_env_written_by_a_background_process_after_the_cell_is_not_loaded(
    kernel1, new_kernel, scripted, settings, workspace, docker_client
):
    run_cell(kernel1, scripted, call("bash", command=_attack("rename", delay=4)), say("ok"))
    assert not (workspace / ".env").exists()  # the cell ended before the write
    deadline = time.monotonic() + 30
    while not (workspace / ".env").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert planted(workspace), "the background write must happen"
    kernel1.shell.run_line_magic("pi", "stop")  # the user stops the sandbox; the window closes

    magics, _ = new_kernel()
    assert (magics.settings.paranoid, magics.settings.pids_limit) == (True, SAFE_PIDS), LAYER
    assert_refused(run_cell(magics, scripted), workspace)
    assert pids_limit(docker_client, settings) == SAFE_PIDS


def test_agent_hard_link_is_not_laundered_by_the_user_deleting_the_other_name(
    kernel1, new_kernel, scripted, settings, workspace
):
    """The agent links `.env` to `planted.tmp` and leaves both. After the sandbox stops the user
    deletes `planted.tmp`: that renews the inode's ctime, outside every window, and leaves one link."""
    run_cell(kernel1, scripted, call("bash", command=_attack("link-keep")), say("done"))
    assert planted(workspace) and (workspace / "planted.tmp").exists()
    kernel1.shell.run_line_magic("pi", "stop")
    time.sleep(envtrust_slack() + 0.5)
    (workspace / "planted.tmp").unlink()
    assert os.stat(workspace / ".env").st_nlink == 1
    magics, load_out = new_kernel()
    assert (magics.settings.paranoid, magics.settings.pids_limit) == (True, SAFE_PIDS), LAYER
    assert "this content was written while a sandbox" in load_out


def test_control_the_same_file_takes_effect_once_vouched_for(
    kernel1, new_kernel, scripted, settings, workspace, docker_client, capsys
):
    """Without the layer's refusal (the user vouches for the content) the planted values apply:
    the layer, not something else, is what kept them out. Host-only keys stay out even then."""
    run_cell(kernel1, scripted, call("bash", command=ATTACKS["rename"]), say("done"))
    magics, _ = new_kernel()
    assert magics.settings.paranoid is True
    magics.shell.run_line_magic("pi", "trust-env")
    out = capsys.readouterr().out
    assert "trusted" in out and "PIMAGIC_PI_DATA_DIR" in out and "host-only" in out
    assert (magics.settings.paranoid, magics.settings.pids_limit) == (False, 100000)
    assert magics.settings.pi_data_path == settings.pi_data_path

    again, load_out = new_kernel()  # and the next kernel loads it by itself
    assert (again.settings.paranoid, again.settings.pids_limit) == (False, 100000)
    assert "did not load" not in load_out and "PIMAGIC_PI_DATA_DIR" in load_out
    run_cell(again, scripted)
    assert pids_limit(docker_client, settings) == 100000


# --- allowed use ------------------------------------------------------------------------------


def test_allowed_env_written_while_no_sandbox_runs_is_loaded(
    kernel1, new_kernel, scripted, settings, workspace, docker_client
):
    run_cell(kernel1, scripted)
    kernel1.shell.run_line_magic("pi", "stop")
    time.sleep(envtrust_slack() + 0.5)
    (workspace / ".env").write_text("PIMAGIC_PIDS_LIMIT=1000\nPARANOID_MODE=false\n")
    magics, load_out = new_kernel()
    assert (magics.settings.pids_limit, magics.settings.paranoid) == (1000, False)
    assert "did not load" not in load_out
    assert "did not load" not in run_cell(magics, scripted)
    assert pids_limit(docker_client, settings) == 1000


def test_allowed_env_written_after_the_sandbox_exited_unseen_is_loaded(
    kernel1, new_kernel, scripted, settings, workspace, docker_client
):
    """The sandbox ended while no kernel watched (its idle bound, `docker stop`): the next kernel
    asks the engine (FinishedAt) and loads a `.env` the user wrote after that."""
    run_cell(kernel1, scripted)
    kernel1.session.close()
    docker_client.containers.get(settings.container_name).stop(timeout=1)
    time.sleep(envtrust_slack() + 0.5)
    (workspace / ".env").write_text("PIMAGIC_PIDS_LIMIT=1000\n")
    magics, load_out = new_kernel()
    assert magics.settings.pids_limit == 1000 and "did not load" not in load_out


def test_allowed_env_edited_while_the_sandbox_runs_loads_after_trust_env(
    kernel1, new_kernel, scripted, settings, workspace, docker_client, capsys
):
    run_cell(kernel1, scripted)  # the sandbox runs
    (workspace / ".env").write_text("PIMAGIC_PIDS_LIMIT=1000\n")  # the user edits on the host
    magics, _ = new_kernel()
    assert magics.settings.pids_limit == SAFE_PIDS
    text = run_cell(magics, scripted)
    assert f"did not load {workspace / '.env'}" in text and "PIMAGIC_PIDS_LIMIT" in text
    magics.shell.run_line_magic("pi", "trust-env")
    assert "trusted" in capsys.readouterr().out
    assert magics.settings.pids_limit == 1000
    magics.shell.run_line_magic("pi", "restart")
    assert pids_limit(docker_client, settings) == 1000


def test_cli_says_so_and_trust_env_accepts(settings, workspace, docker_client):
    """`pimagic` reads the same rule: the refused file is named on stderr; `pimagic trust-env` accepts it."""
    from pimagic import envtrust

    envtrust.record_running(envtrust.state_dir(settings), "a-running-sandbox")
    (workspace / ".env").write_text(PLANTED)
    env = dict(os.environ, PIMAGIC_PI_DATA_DIR=settings.pi_data_dir, PIMAGIC_IMAGE=settings.image)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pimagic.cli", "-w", str(workspace), *args],
                              capture_output=True, text=True, env=env, timeout=120)

    status = cli("status")
    assert status.returncode == 0 and f"did not load {workspace / '.env'}" in status.stderr
    assert "pimagic trust-env" in status.stderr and "100000" not in status.stderr
    trusted = cli("trust-env")
    assert trusted.returncode == 0 and "trusted" in trusted.stdout, trusted.stderr
    assert "did not load" not in cli("status").stderr


def envtrust_slack() -> float:
    from pimagic import envtrust

    return envtrust.SLACK
