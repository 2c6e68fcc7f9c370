"""The sandbox container's main process: it ends the container once no session is attached.

Usage: idle-supervisor.py --idle-timeout SECONDS   (0 = never: wait for `docker stop`)

pimagic runs it as uid 0 with no capabilities, so the agent's uid can neither signal, stop nor
trace it (kill and ptrace need the same uid or a capability). A process started by
`docker exec` (pi for a notebook, `pimagic shell`) has parent pid 0 inside the container's pid
namespace, because its parent lives outside; every process the agent spawns has a parent
inside, so background jobs cannot fake activity. When no such process has existed for
SECONDS, this script exits with IDLE_EXIT; docker-init (pid 1) then exits too and the kernel
kills every process left in the container.
"""

from __future__ import annotations

import os
import signal
import sys
import time

IDLE_EXIT = 75  # pimagic.sandbox.IDLE_EXIT_CODE: the host tells the user why the sandbox stopped


def attached_sessions() -> int:
    """Live processes whose parent is outside the container: the exec sessions."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "1":  # pid 1 (docker-init) has parent 0 too
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        if is_session(stat):
            count += 1
    return count


def is_session(stat: bytes) -> bool:
    """A /proc/<pid>/stat line of a live exec session: parent outside, not a zombie, and not stopped
    (the leash runs as the agent's uid, which can SIGSTOP it: a stopped leash would never see its
    kernel hang up, so it must not count as attached)."""
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
    state, ppid = stat[stat.rindex(b")") + 2 :].split()[:2]
    return ppid == b"0" and state not in (b"Z", b"X", b"T", b"t")


def supervise(idle_timeout: float) -> int:
    poll = min(1.0, max(idle_timeout / 4, 0.1))
    last_seen = time.monotonic()  # the start counts as attached: the host execs right after it
    while True:
        time.sleep(poll)
        now = time.monotonic()
        if attached_sessions():
            last_seen = now
        elif now - last_seen >= idle_timeout:
            print(f"pimagic: no notebook or shell attached for {idle_timeout:g}s: stopping the sandbox", flush=True)
            return IDLE_EXIT


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--idle-timeout":
        print("usage: idle-supervisor.py --idle-timeout SECONDS", file=sys.stderr)
        return 2
    idle_timeout = float(argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `docker stop`: exit at once, quietly
    if idle_timeout <= 0:
        while True:
            signal.pause()
    return supervise(idle_timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
