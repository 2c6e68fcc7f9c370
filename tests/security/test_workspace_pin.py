"""RT1-2: one sandbox's agent must not make ANOTHER notebook's sandbox mount a host folder.

Notebooks in P and P/child (each kernel's default workspace is its cwd, so the folders nest). P's
agent owns P/child's directory entry: in a real `%%pi` cell it renames the folder away and puts a
symlink to a host folder (think ~/.ssh) in its place. The child kernel's next start must be refused
(nothing mounted, the host folder untouched), or mount the folder it pinned when it loaded.

Layers under test: PIN (the host walks the pinned real path with no symlink followed and compares
the directory's inode, pimagic/workspace_pin.py) and MOUNTED (after `containers.run`, before the
token or pi, the container's /workspace must be the pinned inode: dockerd follows links at mount
time, after the host's check). The controls remove the layers and show the host folder mounted.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import pytest
from _support import AGENT_GID, AGENT_UID, release_magics

from pimagic import workspace_pin
from pimagic.config import load_settings
from pimagic.errors import WorkspaceReplacedError
from pimagic.sandbox import Sandbox
from pimagic.scripted_model import call, say

PIN = "workspace pin: no-follow walk + inode (pimagic/workspace_pin.py)"
MOUNTED = "container's /workspace inode checked before anything runs (Sandbox._verify_mounts)"
ATTACK = "ssh-ed25519 AAAA-ATTACKER-" + os.urandom(4).hex()


def _owned(path: Path) -> Path:
    path.mkdir()
    os.chown(path, AGENT_UID, AGENT_GID)
    return path


@pytest.fixture
def host_dir(tmp_path) -> Path:
    """A host folder the user owns and no sandbox mounts (think ~/.ssh)."""
    host = _owned(tmp_path / "host-ssh")
    (host / "authorized_keys").write_text("ssh-ed25519 AAAA-user-key user@host\n")
    os.chown(host / "authorized_keys", AGENT_UID, AGENT_GID)
    return host


def _child_settings(workspace: Path, tmp_path: Path, image: str):
    return load_settings(str(workspace / "child"), environ=os.environ,
                         pi_data_dir=str(tmp_path / "pi-data-child" / "agent"), image=image)


@pytest.fixture
def child_magics(workspace, tmp_path, sandbox_image, docker_client, scripted):
    """A second notebook's kernel, working in P/child (loaded, so pinned, before any swap)."""
    from IPython.core.interactiveshell import InteractiveShell

    from pimagic.magics import PiMagics
    from pimagic.offline import use_scripted_model

    _owned(workspace / "child")
    s = _child_settings(workspace, tmp_path, sandbox_image)
    use_scripted_model(s, scripted)
    m = PiMagics(InteractiveShell.instance(), s)
    yield m
    release_magics(m)
    _remove_containers(docker_client, tmp_path)


def _remove_containers(client, tmp_path: Path) -> None:
    for c in client.containers.list(all=True, filters={"label": "org.pimagic.managed=1"}):
        if str(tmp_path) in str(c.attrs.get("Mounts")):
            c.remove(force=True)


def _parent_swaps(pi_magics, scripted, host_dir: Path) -> None:
    """P's agent, in a real cell, replaces `child` by a symlink to the host folder."""
    swap = f"cd /workspace && mv child child.orig && ln -s {host_dir} child && ls -l"
    scripted.push(call("bash", command=swap), say("tidied"))
    result = pi_magics.shell.run_cell_magic("pi", "", "tidy up")
    assert result.ok and os.path.islink(pi_magics.settings.workspace_path / "child"), result.tool_calls


def _child_restarts(child_magics, scripted):
    """The child's sandbox starts again (idle exit, `%pi restart`) and its agent writes."""
    child_magics.session.close()
    child_magics.session.sandbox.remove()
    scripted.push(call("bash", command=f"echo '{ATTACK}' >> /workspace/authorized_keys"), say("child agent"))
    return child_magics.pi("", "continue")


def test_swapped_child_folder_is_refused(pi_magics, child_magics, scripted, workspace, host_dir, docker_client):
    scripted.push(call("bash", command="ls -a /workspace"), say("child ok"))
    assert child_magics.pi("", "hello from child").ok  # the child works normally first
    _parent_swaps(pi_magics, scripted, host_dir)

    with pytest.raises(WorkspaceReplacedError) as err:
        _child_restarts(child_magics, scripted)
    text = str(err.value)
    assert "was replaced" in text and "nothing was mounted" in text and str(host_dir) in text, (PIN, text)
    # The hint never offers the same path (`%config` follows links: it would pin the host folder).
    assert f"workspace = '{workspace / 'child'}'" not in (err.value.hint or ""), (PIN, err.value.hint)
    assert ATTACK not in (host_dir / "authorized_keys").read_text(), PIN
    assert child_magics.session.sandbox.find() is None, f"{PIN}: a container was created"
    assert (workspace / "child.orig").is_dir()  # the child's files are where P's agent moved them


def test_control_without_the_pin_mounts_the_host_folder(pi_magics, child_magics, scripted, host_dir, monkeypatch):
    """Both layers removed: the same attack writes into the host folder (the layers stop it)."""
    monkeypatch.setattr(workspace_pin, "check", lambda p: p)
    monkeypatch.setattr(Sandbox, "_verify_mounts", lambda self, container, agent_dir, **_: None)
    _parent_swaps(pi_magics, scripted, host_dir)
    result = _child_restarts(child_magics, scripted)
    assert result.ok, result.error
    assert ATTACK in (host_dir / "authorized_keys").read_text(), "control: the attack did not reach the host folder"


def test_container_check_alone_refuses(workspace, tmp_path, sandbox_image, docker_client, host_dir, monkeypatch):
    """The host's walk removed (as if the swap came right after it): the container check refuses,
    removes the container, and nothing of the agent's ran."""
    _owned(workspace / "child")
    s = _child_settings(workspace, tmp_path, sandbox_image)
    os.rename(workspace / "child", workspace / "child.orig")
    os.symlink(host_dir, workspace / "child")
    monkeypatch.setattr(workspace_pin, "check", lambda p: p)
    box = Sandbox(s, docker_client)
    try:
        with pytest.raises(WorkspaceReplacedError, match="while sandbox .* started"):
            box.start()
        assert box.find() is None, f"{MOUNTED}: the container with the wrong folder was kept"
    finally:
        _remove_containers(docker_client, tmp_path)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@pytest.mark.parametrize("walk", [True, False], ids=["both-layers", "container-check-only"])
def test_race_exchange_loop(workspace, tmp_path, sandbox_image, docker_client, host_dir, monkeypatch, walk):
    """`child` and a symlink to the host folder swap places with renameat2(RENAME_EXCHANGE) in a
    tight loop (what P's agent can run: both names are in its folder) while the child's sandbox
    starts again and again: each start is refused or mounts the pinned directory. Without the
    host's walk, the container check alone must hold."""
    if not walk:
        monkeypatch.setattr(workspace_pin, "check", lambda p: p)
    _owned(workspace / "child")
    s = _child_settings(workspace, tmp_path, sandbox_image)
    pinned = s.workspace_pin.identity
    os.symlink(host_dir, workspace / "decoy")
    libc = ctypes.CDLL(None, use_errno=True)
    a, b = str(workspace / "child").encode(), str(workspace / "decoy").encode()
    stop, flips = threading.Event(), [0]

    def flip() -> None:
        while not stop.is_set():
            if libc.renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE) == 0:
                flips[0] += 1

    outcomes = {"refused at the walk": 0, "refused in the container": 0, "mounted the pinned folder": 0,
                "host-side walk failed mid-swap": 0}
    box = Sandbox(s, docker_client)
    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        for _ in range(12):
            try:
                started = box.start(build=False)
            except WorkspaceReplacedError as e:
                outcomes["refused in the container" if "while sandbox" in e.message else "refused at the walk"] += 1
                assert box.find() is None, MOUNTED
                continue
            except OSError:  # the folder's view walk (pimagic.workspace) tripped on a flip (EINVAL)
                assert box.find() is None, MOUNTED
                outcomes["host-side walk failed mid-swap"] += 1
                continue
            code, out, _ = box.exec(["stat", "-c", "%d %i", "/workspace"])
            seen = workspace_pin.parse_stat(out, 1)[0]
            assert code == 0 and (seen.dev, seen.ino) == pinned, f"{MOUNTED}: another folder mounted"
            outcomes["mounted the pinned folder"] += 1
            box.remove_container(started.container)
    finally:
        stop.set()
        flipper.join(5)
        _remove_containers(docker_client, tmp_path)
    print("race:", flips[0], "exchanges;", outcomes)
    assert flips[0] > 100, "the race did not run"
    assert ATTACK not in (host_dir / "authorized_keys").read_text()


def test_allowed_restart_and_new_workspace(child_magics, scripted, workspace, tmp_path):
    """A normal restart keeps working; `%config` to another folder pins that folder (the user's act)."""
    (workspace / "child" / "note.txt").write_text("hello")
    scripted.push(call("bash", command="cat /workspace/note.txt"), say("ok"))
    assert "hello" in child_magics.pi("", "read").tool_calls[0].result
    child_magics.session.restart()
    scripted.push(call("bash", command="cat /workspace/note.txt"), say("ok"))
    assert "hello" in child_magics.pi("", "read again").tool_calls[0].result

    other = _owned(tmp_path / "elsewhere")
    (other / "other.txt").write_text("other folder")
    child_magics.session.close()
    child_magics.session.sandbox.remove()
    shell = child_magics.shell
    shell.configurables.append(child_magics.settings)  # as `%load_ext pimagic` does
    try:
        shell.run_line_magic("config", f"PimagicSettings.workspace = {str(other)!r}")
    finally:
        shell.configurables.remove(child_magics.settings)
        # %config also stores the value in the shell's config, which later settings would load
        shell.config.get("PimagicSettings", {}).pop("workspace", None)
    assert child_magics.settings.workspace_path == other.resolve()
    scripted.push(call("bash", command="cat /workspace/other.txt"), say("ok"))
    assert "other folder" in child_magics.pi("", "read the other").tool_calls[0].result


def test_start_inside_a_running_sandbox_folder_is_noted(pi_magics, child_magics, scripted, workspace):
    """P's sandbox runs: the child's start says that P's agent can rename its folder."""
    scripted.push(say("parent here"))
    assert pi_magics.shell.run_cell_magic("pi", "", "hi").ok
    scripted.push(say("child here"))
    shown = child_magics.pi("", "hi")._repr_mimebundle_()["text/plain"]
    assert f"this folder is inside {workspace.resolve()}, whose sandbox can rename or replace it" in shown, shown
