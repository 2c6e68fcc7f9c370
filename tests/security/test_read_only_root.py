"""The read-only root filesystem and the noexec tmpfs mounts (/tmp, the home).

Read-only root: the control is the same sandbox with a writable root. There the agent's writes
to root's files fail otherwise (file modes: "Permission denied"), and uid 0 (the vault's euid)
writes them. noexec: the control mounts /tmp and the home without noexec; the same programs run."""

from __future__ import annotations

import pytest
from secharness import NOEXEC, RO_ROOT, assert_allowed, assert_stopped, says

ROOT = "0:0"
ROFS = "Read-only file system"


@pytest.fixture(scope="module")
def writable_root(control):
    return control(RO_ROOT)


@pytest.fixture(scope="module")
def exec_tmpfs(control):
    return control(NOEXEC)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/etc/ld.so.preload", id="write-ld-so-preload"),
        pytest.param("/usr/local/lib/pimagic/gh-vault", id="write-gh-vault"),
        pytest.param("/usr/local/bin/gh", id="replace-gh-symlink"),
        pytest.param("/proc/self/root/usr/local/lib/pimagic/app-firewall.js", id="write-root-via-proc-self-root"),
    ],
)
def test_root_filesystem_cannot_be_written(box, writable_root, target):
    script = f"echo pwned >> {target} || ln -sf /tmp/x {target}"
    assert_stopped(RO_ROOT, box.sh(script), lambda r: r.code != 0 and ROFS in r.err,
                   control=writable_root.sh(script), then=says("Permission denied"))


def test_uid_0_cannot_write_the_root_either(box, writable_root):
    """uid 0 owns the image's files: only the read-only root stops it."""
    script = "touch /usr/local/lib/pimagic/planted && echo planted"
    assert_stopped(RO_ROOT, box.sh(script, user=ROOT), lambda r: r.code != 0 and ROFS in r.err,
                   control=writable_root.sh(script, user=ROOT), then=says("planted"))


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("cp /bin/true /tmp/t && chmod +x /tmp/t && /tmp/t && echo ran", id="exec-from-tmp"),
        pytest.param("cp /bin/true ~/t && chmod +x ~/t && ~/t && echo ran", id="exec-from-home"),
        pytest.param("cp /bin/true /tmp/t2 && /lib64/ld-linux-x86-64.so.2 /tmp/t2 && echo ran", id="exec-via-ld-so"),
    ],
)
def test_writable_tmpfs_cannot_run_code(box, exec_tmpfs, script):
    assert_stopped(NOEXEC, box.sh(script),
                   lambda r: r.code != 0 and ("Permission denied" in r.err or "failed to map" in r.err),
                   control=exec_tmpfs.sh(script), then=says("ran"))


@pytest.mark.parametrize("directory", ["/tmp", "/home/pi", "/workspace"])
def test_twin_writable_places_stay_writable(box, directory):
    res = box.sh(f"echo data > {directory}/file && cat {directory}/file && rm {directory}/file")
    assert_allowed(res, RO_ROOT, res.out == "data\n")
