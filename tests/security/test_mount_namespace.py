"""The container's mount namespace: only the workspace and pi's agent dir are shared with the host,
at fixed container paths. No control: a sandbox in the host's mount namespace is not something
Docker's run options can express (the namespace is what a container is)."""

from __future__ import annotations

from secharness import MOUNT_NS, assert_allowed, assert_stopped

NO_CONTROL = "the mount namespace is what a container is: no run option shares the host's"


def test_host_path_of_the_workspace_is_not_visible(box):
    """host-source-path: the bind mounts' host paths do not exist inside the sandbox."""
    res = box.sh(f"ls {box.workspace}/.env {box.pi_dir}/auth.json 2>&1; ls / ")
    assert_stopped(MOUNT_NS, res, lambda r: r.out.count("No such file or directory") == 2 and "workspace" in r.out,
                   no_control=NO_CONTROL)


def test_symlink_out_of_the_workspace_stays_in_the_container(box):
    """A symlink the agent plants points into the container's filesystem, not the host's, while
    inside; on the host it is a dangling or host-side link (reported by the change list)."""
    res = box.sh("ln -sfn /etc/passwd /workspace/pw && head -1 /workspace/pw && rm /workspace/pw")
    assert_allowed(res, MOUNT_NS, res.out.startswith("root:x:0:0"))


def test_twin_the_shared_folders_are_the_hosts(box):
    """What the agent writes in /workspace and pi's dir is on the host at once."""
    res = box.sh("echo shared > /workspace/shared.txt && echo pi > /home/pi/.pi/agent/shared.txt")
    try:
        assert_allowed(res, MOUNT_NS, (box.workspace / "shared.txt").read_text() == "shared\n"
                       and (box.pi_dir / "shared.txt").read_text() == "pi\n")
    finally:
        box.sh("rm -f /workspace/shared.txt /home/pi/.pi/agent/shared.txt")
