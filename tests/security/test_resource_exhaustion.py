"""Resource exhaustion: each attack is bounded (small sizes, timeouts) and must hit the
sandbox's limit, not the host's. This module's sandbox: 128 pids, 512 MiB, 32 MiB tmpfs."""

from __future__ import annotations

from secharness import MEMORY, PIDS, TMPFS, ULIMIT, assert_allowed, assert_stopped


def test_fork_bomb_hits_the_pids_limit(box):
    res = box.py(
        """
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
        """,
        timeout=30,
    )
    values = res.values()
    assert_stopped(res, PIDS, values.get("error") == "EAGAIN" and int(values.get("forked", 999)) < 128)


def test_memory_hog_is_killed_by_the_cgroup(box):
    res = box.sh("python3 -c 'x = [bytearray(64 << 20) for _ in range(16)]; print(\"survived\")'", timeout=60)
    assert_stopped(res, MEMORY, res.code == 137 and "survived" not in res.out)
    assert box.sh("echo alive").out == "alive\n"


def test_filling_tmp_stops_at_the_tmpfs_size(box):
    res = box.sh("head -c 64M /dev/zero > /tmp/fill; echo rc=$?; du -m /tmp/fill | cut -f1; rm -f /tmp/fill")
    assert_stopped(res, TMPFS, "No space left" in res.err and int(res.out.split()[-1]) <= 32)


def test_filling_home_stops_at_the_tmpfs_size(box):
    res = box.sh("head -c 64M /dev/zero > ~/fill; rm -f ~/fill")
    assert_stopped(res, TMPFS, "No space left" in res.err)


def test_file_descriptor_hog_hits_nofile(box):
    res = box.py(
        """
        import resource
        fds, error = [], None
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))
        except (ValueError, OSError) as e:
            error = type(e).__name__
        try:
            for _ in range(20000):
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            report(opened=len(fds), emfile=e.errno == errno.EMFILE, raise_hard=error)
        """
    )
    v = res.values()
    assert_stopped(res, ULIMIT, v.get("emfile") == "True" and int(v["opened"]) < 8192 and v["raise_hard"] != "None")


def test_twin_ordinary_work_fits_the_limits(box):
    res = box.sh("for i in $(seq 20); do (sleep 0.2 &) ; done; head -c 8M /dev/zero > /tmp/ok && echo ok; rm /tmp/ok")
    assert_allowed(res, PIDS, res.out == "ok\n")
