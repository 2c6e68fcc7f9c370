"""Filesystem escape: reaching host files, writing outside the workspace, running code
from writable places, unmasking secrets through other names."""

from __future__ import annotations

import pytest
from secharness import (
    FS_VAULT,
    MASK,
    MOUNT_NS,
    NOEXEC,
    RO_MOUNT,
    RO_ROOT,
    assert_allowed,
    assert_stopped,
)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/etc/ld.so.preload", id="write-ld-so-preload"),
        pytest.param("/usr/local/lib/pimagic/gh-vault", id="write-gh-vault"),
        pytest.param("/usr/local/bin/gh", id="replace-gh-symlink"),
        pytest.param("/proc/self/root/usr/local/lib/pimagic/app-firewall.js", id="write-root-via-proc-self-root"),
    ],
)
def test_root_filesystem_cannot_be_written(box, target):
    res = box.sh(f"echo pwned > {target} || ln -sf /tmp/x {target}")
    assert_stopped(res, RO_ROOT, res.code != 0 and "Read-only file system" in res.err)


def test_host_path_of_the_workspace_is_not_visible(box):
    """host-source-path: the bind mounts' host paths do not exist inside the sandbox."""
    res = box.sh(f"ls {box.workspace}/.env {box.pi_dir}/auth.json 2>&1; ls / ")
    assert_stopped(res, MOUNT_NS, "No such file or directory" in res.out and "workspace" in res.out)


def test_hardlink_to_masked_file_crosses_a_mount(box):
    res = box.py(
        """
        r, err = sc("linkat", AT_FDCWD, b"/workspace/.env", AT_FDCWD, b"/workspace/env-copy", 0)
        report(err=errno.errorcode.get(err, err))
        """
    )
    assert_stopped(res, MASK, res.values().get("err") == "EXDEV")


def test_copy_of_masked_file_is_empty(box):
    res = box.sh("cp --no-preserve=all /proc/self/root/workspace/server.pem /tmp/k && wc -c < /tmp/k")
    assert_stopped(res, MASK, res.out.strip() == "0")


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("cp /bin/true /tmp/t && chmod +x /tmp/t && /tmp/t", id="exec-from-tmp"),
        pytest.param("cp /bin/true ~/t && chmod +x ~/t && ~/t", id="exec-from-home"),
        pytest.param("cp /bin/true /tmp/t2 && /lib64/ld-linux-x86-64.so.2 /tmp/t2", id="exec-via-ld-so"),
    ],
)
def test_writable_tmpfs_cannot_run_code(box, script):
    res = box.sh(script)
    assert_stopped(res, NOEXEC, res.code != 0 and ("Permission denied" in res.err or "failed to map" in res.err))


def test_git_dir_cannot_be_moved_away(box):
    """rename-git-dir: replacing .git wholesale would shed the read-only mounts in it."""
    res = box.sh("mv .git .git-old; mv .venv .venv-old; rm -rf .git/hooks")
    stopped = res.code != 0 and res.err.count("busy") == 2 and "Read-only" in res.err
    assert_stopped(res, RO_MOUNT, stopped, "(.git is a mount point)")


def test_masked_file_cannot_be_replaced(box):
    res = box.sh("rm -f .env .env.local; stat -c %s .env .env.local")
    assert_stopped(res, MASK, res.err.count("busy") == 2 and res.out.split() == ["0", "0"])


def test_symlink_out_of_the_workspace_stays_in_the_container(box):
    """A symlink the agent plants points into the container's filesystem, not the host's,
    while inside; on the host it is a dangling or host-side link (reported by the change list)."""
    res = box.sh("ln -sfn /etc/passwd /workspace/pw && head -1 /workspace/pw && rm /workspace/pw")
    assert_allowed(res, MOUNT_NS, res.out.startswith("root:x:0:0"))


def test_twin_workspace_is_writable(box):
    res = box.sh("echo ok > /workspace/note.txt && cat note.txt && rm note.txt && echo ok > /tmp/x && cat /tmp/x")
    assert_allowed(res, FS_VAULT, res.out == "ok\nok\n")
