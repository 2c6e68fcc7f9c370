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

import contextlib
import io
import os
import shutil
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


@pytest.fixture(autouse=True)
def own_trust_state(tmp_path, monkeypatch):
    """This test's own machine-wide trust state (the session's data root is shared by every test,
    and the suspect ledger remembers contents across folders by design)."""
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(tmp_path))


@pytest.fixture
def kernel1(settings, scripted, pi_magics):
    """The first kernel: paranoid on, as the user's ipython_config.py says."""
    settings.paranoid = True
    return pi_magics


@pytest.fixture
def new_kernel(settings, workspace, monkeypatch, docker_client):
    """Start a NEW kernel for the same folder the way a notebook does: `%load_ext pimagic` with
    the folder as cwd and paranoid mode from the IPython config (which a `.env` would override)."""
    from IPython.core.interactiveshell import InteractiveShell

    import pimagic

    ip = InteractiveShell.instance()
    saved = ip.config.PimagicSettings.copy()  # other tests' %config must not leak into this kernel
    ip.config.PimagicSettings.clear()
    started = []

    def start(cwd: Path | None = None):
        """A kernel for `cwd` (default: the test's workspace, sharing its pi data dir; elsewhere:
        the folder's own default pi data dir, as a notebook kept there gets)."""
        monkeypatch.chdir(cwd or workspace)
        if cwd is None:
            monkeypatch.setenv("PIMAGIC_PI_DATA_DIR", settings.pi_data_dir)
        else:
            monkeypatch.delenv("PIMAGIC_PI_DATA_DIR", raising=False)
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
        if magics.settings.workspace_path != settings.workspace_path:
            with contextlib.suppress(Exception):
                docker_client.containers.get(magics.settings.container_name).remove(force=True)
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


def _plant_at(where: str, data: str = PLANTED, name: str = ".env") -> str:
    """The agent writes `where/name` (a path below /workspace) with a raw renameat."""
    body = f"""
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
nr = {{"x86_64": 264, "aarch64": 38}}[platform.machine()]
os.makedirs("/workspace/{where}", exist_ok=True)
open("/workspace/{where}/planted.tmp", "w").write({data!r})
rc = libc.syscall(nr, -100, b"/workspace/{where}/planted.tmp", -100, b"/workspace/{where}/{name}")
assert rc == 0, ctypes.get_errno()
print("planted", {where!r}, {name!r})
"""
    return f"cat > /tmp/plant2.py <<'EOF'{body}EOF\npython3 /tmp/plant2.py"


def test_a_folders_sandbox_cannot_plant_a_subfolders_env(
    kernel1, new_kernel, scripted, settings, workspace, docker_client, model_server
):
    """Red team F1: the sandbox of the project writes `notebooks/.env`; the user opens a notebook
    kept in `notebooks/` (Jupyter's cwd: that folder is the new kernel's workspace)."""
    from pimagic.offline import use_scripted_model

    hostile = PLANTED + "PIMAGIC_SECRET_PATTERNS=none\n"
    out = run_cell(kernel1, scripted, call("bash", command=_plant_at("notebooks", hostile)), say("done"))
    sub = workspace / "notebooks"
    assert (sub / ".env").read_text() == hostile, f"the attack itself must work: {out[-1500:]}"
    kernel1.shell.run_line_magic("pi", "stop")
    (sub / "deploy.pem").write_text("CANARY-PRIVATE-KEY-h2b\n")  # the user's secret in that folder

    magics, load_out = new_kernel(sub)
    s = magics.settings
    assert (s.workspace_path, s.paranoid, s.pids_limit) == (sub, True, SAFE_PIDS), LAYER
    assert "*.pem" in s.secret_patterns
    assert f"did not load {sub / '.env'}" in load_out and "PIMAGIC_SECRET_PATTERNS" in load_out
    use_scripted_model(s, model_server)
    text = run_cell(magics, scripted, call("bash", command="cat /workspace/deploy.pem; echo size=$(wc -c < "
                                           "/workspace/deploy.pem)"), say("ok"))
    assert "CANARY-PRIVATE-KEY-h2b" not in text and "size=0" in text, text[-1500:]  # the mask: an empty file
    assert docker_client.containers.get(s.container_name).attrs["HostConfig"]["PidsLimit"] == SAFE_PIDS


def test_allowed_a_subfolders_env_written_after_the_parents_sandbox_stopped_loads(
    kernel1, new_kernel, scripted, settings, workspace
):
    run_cell(kernel1, scripted)
    kernel1.shell.run_line_magic("pi", "stop")
    time.sleep(envtrust_slack() + 0.5)
    sub = workspace / "notebooks"
    sub.mkdir()
    (sub / ".env").write_text("PIMAGIC_PIDS_LIMIT=1000\n")
    magics, load_out = new_kernel(sub)
    assert magics.settings.pids_limit == 1000 and "did not load" not in load_out


@pytest.mark.parametrize("how", ["mv", "cp -r"])
def test_a_refused_env_stays_refused_when_the_user_moves_or_copies_the_project(
    how, kernel1, new_kernel, scripted, settings, workspace, tmp_path
):
    """Red team F2: a rename keeps the file's ctime (the folder's inode is recorded); a copy gets a
    fresh one (its content was remembered as suspect when the window closed)."""
    run_cell(kernel1, scripted, call("bash", command=ATTACKS["rename"]), say("done"))
    assert planted(workspace)
    kernel1.shell.run_line_magic("pi", "stop")
    kernel1.session.close()
    dest = tmp_path / "project-renamed"
    (os.rename if how == "mv" else shutil.copytree)(workspace, dest)
    try:
        magics, load_out = new_kernel(dest)
        assert (magics.settings.paranoid, magics.settings.pids_limit) == (True, SAFE_PIDS), LAYER
        assert f"did not load {dest / '.env'}" in load_out and "PIMAGIC_PIDS_LIMIT" in load_out
    finally:
        if how == "mv":
            os.rename(dest, workspace)


def test_another_folders_sandbox_does_not_close_this_ones_window(
    kernel1, scripted, settings, workspace, docker_client, tmp_path
):
    """Red team F3: two folders share one PIMAGIC_PI_DATA_DIR; B's start and stop must not close
    A's window while A's agent (a detached process) is still about to plant A/.env."""
    from _support import make_workspace

    from pimagic.config import load_settings
    from pimagic.sandbox import Sandbox

    run_cell(kernel1, scripted, call("bash", command=_attack("rename", delay=12)), say("ok"))
    other = make_workspace(tmp_path / "other-project")
    sb = load_settings(other, environ=os.environ, pi_data_dir=settings.pi_data_dir, image=settings.image)
    box = Sandbox(sb, docker_client)
    try:
        box.start()
        box.stop()
        deadline = time.monotonic() + 40
        while not planted(workspace) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert planted(workspace), "the background write must happen"
        assert docker_client.containers.get(settings.container_name).status == "running"
        s = load_settings(workspace, environ=os.environ, pi_data_dir=settings.pi_data_dir)  # `pimagic run` in A
        assert (s.pids_limit, s.paranoid) == (SAFE_PIDS, False), LAYER
        assert f"did not load {workspace / '.env'}" in s.env_notes[0]
    finally:
        with contextlib.suppress(Exception):
            docker_client.containers.get(sb.container_name).remove(force=True)


def test_a_hard_linked_env_file_is_not_laundered_for_the_cli(kernel1, scripted, settings, workspace):
    """Red team F4: `--env-file config/dev.env` (in the workspace) hard-linked by the agent to a
    second name the user deletes after the sandbox stopped: one link, fresh ctime, still refused."""
    cmd = _plant_at("config", name="dev.env") + " && cd /workspace/config && python3 -c \"" \
        "import ctypes; l=ctypes.CDLL(None); assert l.syscall(265, -100, b'dev.env', -100, b'x', 0) == 0\""
    out = run_cell(kernel1, scripted, call("bash", command=cmd), say("done"))
    env_file = workspace / "config" / "dev.env"
    assert env_file.stat().st_nlink == 2, out[-1500:]
    kernel1.shell.run_line_magic("pi", "stop")
    time.sleep(envtrust_slack() + 0.5)
    (workspace / "config" / "x").unlink()  # the user tidies up the stray file
    assert env_file.stat().st_nlink == 1
    env = dict(os.environ, PIMAGIC_PI_DATA_DIR=settings.pi_data_dir, PIMAGIC_IMAGE=settings.image)
    status = subprocess.run([sys.executable, "-m", "pimagic.cli", "-w", str(workspace), "--env-file", str(env_file),
                             "status"], capture_output=True, text=True, env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    assert f"did not load {env_file}" in status.stderr and "this content was written while a sandbox" in status.stderr


def test_env_example_the_agent_edited_is_refused_after_the_users_copy(
    kernel1, new_kernel, scripted, settings, workspace
):
    """`cp .env.example .env` after the sandbox stopped: the content the agent wrote stays refused."""
    run_cell(kernel1, scripted, call("bash", command=_plant_at(".", name=".env.example")), say("done"))
    assert (workspace / ".env.example").read_text() == PLANTED
    kernel1.shell.run_line_magic("pi", "stop")
    time.sleep(envtrust_slack() + 0.5)
    shutil.copy(workspace / ".env.example", workspace / ".env")
    magics, load_out = new_kernel()
    assert (magics.settings.paranoid, magics.settings.pids_limit) == (True, SAFE_PIDS), LAYER
    assert "this content was written while a sandbox" in load_out


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

    envtrust.record_running("a-running-sandbox", workspace)
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
