"""The `pimagic` command line and the sandbox's run options, against a real engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from _support import AGENT_GID, AGENT_UID, Pty

from pimagic import image as image_mod
from pimagic import statedir
from pimagic.sandbox import Sandbox


def cli(settings, *args: str, timeout: float = 120, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIMAGIC_IMAGE=settings.image, PIMAGIC_PI_DATA_DIR=settings.pi_data_dir)
    return subprocess.run(
        [sys.executable, "-m", "pimagic.cli", "-w", settings.workspace, *args],
        env=env, capture_output=True, text=True, timeout=timeout, stdin=stdin,
    )


def test_run_version_prints_pis_version(settings):
    result = cli(settings, "run", "--", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(image_mod.pi_version())


def test_status_and_clean(settings):
    assert "missing" in cli(settings, "status").stdout
    cli(settings, "run", "--", "--version")
    assert f"{settings.container_name}: running" in cli(settings, "status").stdout
    cleaned = cli(settings, "clean")
    assert f"removed {settings.container_name}" in cleaned.stdout
    assert "missing" in cli(settings, "status").stdout


def test_shell_runs_as_the_host_user_in_the_workspace(settings, workspace):
    # `shell` without a TTY reads commands from stdin.
    result = subprocess.run(
        [sys.executable, "-m", "pimagic.cli", "-w", settings.workspace, "shell"],
        input="id -u; id -g; pwd; echo hi > from-shell.txt\n", capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PIMAGIC_IMAGE=settings.image, PIMAGIC_PI_DATA_DIR=settings.pi_data_dir),
    )
    assert result.stdout.split() == [str(AGENT_UID), str(AGENT_GID), "/workspace"], result.stderr
    made = workspace / "from-shell.txt"
    assert (made.stat().st_uid, made.stat().st_gid) == (AGENT_UID, AGENT_GID)


def test_run_draws_the_tui_in_a_pty_and_exits_cleanly(settings):
    env = dict(os.environ, PIMAGIC_IMAGE=settings.image, PIMAGIC_PI_DATA_DIR=settings.pi_data_dir,
               TERM="xterm-256color", COLUMNS="100", LINES="30")
    with Pty([sys.executable, "-m", "pimagic.cli", "-w", settings.workspace, "run"], env) as term:
        term.read_for(20)
        assert b"\x1b[" in term.screen  # a full-screen terminal UI, drawn with escape sequences
        assert "pi" in term.screen.decode(errors="replace").lower()
        term.write(b"\x03")  # Ctrl-C twice: pi's TUI quits
        time.sleep(0.5)
        term.write(b"\x03")
        term.write(b"\x04")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and term.read_for(0.5):
            pass
        deadline = time.monotonic() + 5
        while not term.exited() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert term.status is not None and os.WIFEXITED(term.status), term.screen[-2000:]
        assert os.WEXITSTATUS(term.status) == 0


def test_run_options_carry_the_hardening(settings, docker_client):
    sandbox = Sandbox(settings, docker_client)
    started = sandbox.start()
    container = started.container
    assert started.action == "created"
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert host["ReadonlyRootfs"] is True
    assert host["Privileged"] is False
    assert host["PidsLimit"] == settings.pids_limit
    assert host["Memory"] > 0 and host["Memory"] == host["MemorySwap"]
    assert host["NanoCpus"] == int(settings.cpus * 1e9)
    assert host["NetworkMode"] == "bridge"
    assert host["PidMode"] in ("", "private")
    for path in ("/tmp", "/home/pi", "/run/pimagic"):
        assert {"noexec", "nosuid", "nodev"} <= set(host["Tmpfs"][path].split(","))
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]}["core"] == 0
    assert host["LogConfig"]["Config"]["max-size"]
    # The main process is the idle supervisor (uid 0, no capabilities); every exec is the agent's.
    assert container.attrs["Config"]["User"] == "0:0"
    assert "idle-supervisor" in " ".join(container.attrs["Config"]["Cmd"])
    assert sandbox.exec(["id", "-u"])[1].decode().strip() == str(AGENT_UID)
    sources = [m["Source"] for m in container.attrs["Mounts"]]
    assert "/var/run/docker.sock" not in sources and "/run/docker.sock" not in sources
    # What runs is what hardening.container_kwargs says, and status() sees a settings change only.
    assert container.labels["org.pimagic.run-config"] == sandbox.run_kwargs(settings.image)["labels"][
        "org.pimagic.run-config"]
    assert not sandbox.status().stale
    (settings.workspace_path / "new.key").write_text("k")  # a start's business, not status()'s
    assert not sandbox.status().stale
    settings.memory = "1g"
    assert sandbox.status().stale and "settings changed" in str(sandbox.status())


def test_same_folder_reuses_the_container_other_folder_gets_its_own(settings, docker_client, tmp_path):
    from _support import make_workspace

    from pimagic.config import load_settings

    first = Sandbox(settings, docker_client).start().container
    again = Sandbox(settings, docker_client).start()
    assert again.container.id == first.id and again.action == "joined"
    other = load_settings(make_workspace(tmp_path / "other"), environ=os.environ, image=settings.image,
                          pi_data_dir=str(tmp_path / "other-data" / "agent"))
    sandbox = Sandbox(other, docker_client)
    try:
        assert sandbox.start().container.id != first.id
    finally:
        sandbox.remove()


def test_secret_files_in_the_workspace_are_masked(settings, docker_client, workspace):
    (workspace / ".env").write_text("GITHUB_TOKEN=ghp_canary_env_file\n")
    (workspace / ".env.example").write_text("GITHUB_TOKEN=\n")
    sandbox = Sandbox(settings, docker_client)
    sandbox.start()
    code, out, _ = sandbox.exec(["cat", "/workspace/.env.example"])
    assert code == 0 and b"GITHUB_TOKEN=" in out
    code, out, _ = sandbox.exec(["python3", "-c", "import os; print(os.stat('/workspace/.env').st_size)"])
    assert out.strip() == b"0"  # an empty file is mounted over it: nothing to read, whatever the tool


def test_container_that_died_is_replaced_and_workspace_kept(settings, docker_client, workspace):
    sandbox = Sandbox(settings, docker_client)
    first = sandbox.start().container
    sandbox.exec(["sh", "-c", "echo kept > /workspace/kept.txt"])
    first.kill()
    second = sandbox.start()
    assert second.container.id != first.id and second.action == "created"
    assert (workspace / "kept.txt").read_text() == "kept\n"


def test_missing_docker_engine_is_a_clear_error(settings):
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    result = subprocess.run([sys.executable, "-m", "pimagic.cli", "-w", settings.workspace, "status"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot reach the Docker engine" in result.stderr and "hint:" in result.stderr


@pytest.mark.parametrize("content", ["PARANOID_MODE=perhaps\n", "just some words\n"])
def test_bad_env_file_is_a_clear_error(settings, workspace, content):
    (workspace / ".env").write_text(content)
    result = cli(settings, "status")
    assert result.returncode == 1
    assert ".env" in result.stderr and "invalid setting" in result.stderr


def test_concurrent_starts_for_one_folder_all_join_one_container(settings, docker_client):
    import threading

    from pimagic.config import load_settings

    ids, errors = [], []

    def start() -> None:
        try:  # each "kernel" has its own settings object and client, as separate processes would
            mine = load_settings(settings.workspace, environ=os.environ, image=settings.image,
                                 pi_data_dir=settings.pi_data_dir)
            ids.append(Sandbox(mine).start().container.id)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(set(ids)) == 1 and len(ids) == 5


def test_run_reaches_a_model_server_on_the_hosts_loopback(settings):
    """The seed's offline recipe: models.json names llama.cpp on 127.0.0.1; `pimagic run -- -p`
    gets its answer through a relay that lives as long as the command."""
    import json

    from pimagic.scripted_model import ScriptedModelServer, pi_provider_config, say

    with ScriptedModelServer(script=[say("hello from the loopback model")], model_id="gemma-local") as llama:
        cfg = statedir.config_dir(settings)  # host-owned: the sandbox reads a read-only copy
        cfg.mkdir(parents=True, exist_ok=True)
        (cfg / "models.json").write_text(json.dumps(
            {"providers": {"llama-cpp": pi_provider_config(llama.url, "gemma-local")}}))
        (cfg / "settings.json").write_text(json.dumps(
            {"defaultProvider": "llama-cpp", "defaultModel": "gemma-local", "retry": {"enabled": False}}))
        assert llama.host == "127.0.0.1"
        result = cli(settings, "run", "--", "-p", "say hello")
    assert result.returncode == 0, result.stderr
    assert "hello from the loopback model" in result.stdout


def test_a_running_sandbox_survives_a_start_that_cannot_make_its_image(settings, docker_client, workspace, tmp_path):
    """The image tag cannot be computed (a missing extra CA file): the running container is kept
    (joined, with a note) while it hides every secret file, else the start fails; nothing is
    removed either way. With nothing running, the start fails before creating anything."""
    from pimagic.config import load_settings
    from pimagic.errors import ImageBuildError, SandboxError

    (workspace / ".env").write_text("GIT_NAME=someone\n")
    first = Sandbox(settings, docker_client).start().container
    gone = tmp_path / "moved-away.pem"
    broken = load_settings(settings.workspace, environ=os.environ, pi_data_dir=settings.pi_data_dir,
                           image="", extra_ca_certs=[str(gone)])

    def running_id() -> str:
        container = docker_client.containers.get(settings.container_name)
        assert container.status == "running"
        return container.id

    started = Sandbox(broken, docker_client).start()
    assert started.action == "joined" and started.container.id == first.id == running_id()
    assert any("kept the running sandbox" in n and "moved-away.pem" in n for n in started.notes), started.notes
    assert Sandbox(broken, docker_client).exec(["cat", "/workspace/.env"])[1] == b""  # still hidden

    (workspace / "deploy.pem").write_text("not hidden in the running container")
    with pytest.raises(SandboxError, match="not hidden in it: deploy.pem") as e:
        Sandbox(broken, docker_client).start()
    assert "moved-away.pem" in str(e.value) and "left as it was" in str(e.value)
    assert running_id() == first.id

    Sandbox(settings, docker_client).remove()
    with pytest.raises(ImageBuildError, match="moved-away.pem"):
        Sandbox(broken, docker_client).start()
    assert Sandbox(broken, docker_client).find() is None
