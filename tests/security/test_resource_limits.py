"""Resource limits: each attack is bounded (small sizes, timeouts) and must hit the sandbox's
limit, not the host's. This module's sandbox: 128 pids, 512 MiB, 32 MiB tmpfs, nofile 4096/8192.
Each control is the same start path with that one limit raised (the limits are settings, except
nofile, a run option)."""

from __future__ import annotations

from secharness import MEMORY, PIDS, TMPFS, ULIMIT, assert_allowed, assert_stopped, says

FORK_BOMB = """
import time
kids, error = [], None
for _ in range(400):
    try:
        pid = os.fork()
    except OSError as e:
        error = errno.errorcode.get(e.errno); break
    if pid == 0:
        time.sleep(3); os._exit(0)
    kids.append(pid)
for k in kids:
    os.kill(k, 9); os.waitpid(k, 0)
report(forked=len(kids), error=error)
"""


def test_fork_bomb_hits_the_pids_limit(box, control):
    attack, raised = box.py(FORK_BOMB), control(pids_limit=1024).py(FORK_BOMB)
    assert_stopped(PIDS, attack, lambda r: r.values().get("error") == "EAGAIN" and int(r.values()["forked"]) < 128,
                   control=raised, then=lambda r: r.values() == {"forked": "400", "error": "None"})


def test_memory_hog_is_killed_by_the_cgroup(box, control):
    script = "python3 -c 'x = [bytearray(64 << 20) for _ in range(12)]; print(\"survived\")'"
    attack, raised = box.sh(script, timeout=60), control(memory="1536m").sh(script, timeout=60)
    assert_stopped(MEMORY, attack, lambda r: r.code == 137 and "survived" not in r.out, control=raised,
                   then=says("survived"))
    assert box.sh("echo alive").out == "alive\n"


def test_filling_tmp_stops_at_the_tmpfs_size(box, control):
    script = "head -c 48M /dev/zero > /tmp/fill; du -m /tmp/fill | cut -f1; rm -f /tmp/fill"
    attack, raised = box.sh(script), control(tmpfs_size="128m").sh(script)
    assert_stopped(TMPFS, attack, lambda r: "No space left" in r.err and int(r.out.split()[-1]) <= 32,
                   control=raised, then=lambda r: r.out.split() == ["48"])


def test_filling_home_stops_at_the_tmpfs_size(box, control):
    script = "head -c 48M /dev/zero > ~/fill; du -m ~/fill | cut -f1; rm -f ~/fill"
    attack, raised = box.sh(script), control(tmpfs_size="128m").sh(script)
    assert_stopped(TMPFS, attack, says("No space left"), control=raised, then=lambda r: r.out.split() == ["48"])


FD_HOG = """
import resource
fds, error = [], None
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))
except (ValueError, OSError) as e:
    error = type(e).__name__
try:
    for _ in range(20000):
        fds.append(os.open("/dev/null", os.O_RDONLY))
    report(opened=len(fds), emfile=False, raise_hard=error)
except OSError as e:
    report(opened=len(fds), emfile=e.errno == errno.EMFILE, raise_hard=error)
"""


def test_file_descriptor_hog_hits_nofile(box, control):
    attack, raised = box.py(FD_HOG), control(ULIMIT).py(FD_HOG)
    assert_stopped(ULIMIT, attack,
                   lambda r: r.values().get("emfile") == "True" and int(r.values()["opened"]) < 8192
                   and r.values()["raise_hard"] != "None",
                   control=raised, then=lambda r: int(r.values()["opened"]) > 8192)


def test_twin_ordinary_work_fits_the_limits(box):
    res = box.sh("for i in $(seq 20); do (sleep 0.2 &) ; done; head -c 8M /dev/zero > /tmp/ok && echo ok; rm /tmp/ok")
    assert_allowed(res, PIDS, res.out == "ok\n")
