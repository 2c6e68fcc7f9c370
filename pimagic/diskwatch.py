"""How much the disk holding the workspace filled since a baseline, polled with statvfs.

The workspace is a bind mount with no quota of its own: the sandbox can fill the host's disk at
its full speed. The kernel-side bound is the `fsize` ulimit (one file); this module bounds the
total. It asks the kernel how full each filesystem holding a watched folder is (`statvfs`:
used blocks and used inodes) every `poll` seconds and trips when either grew past its bound.

Why the whole filesystem rather than the folder's files: nothing the sandbox does can hide a
block or an inode from the filesystem's own counters (no event to suppress, as with a shared
mmap; no tree to walk, so no symlink to follow out of the folder and no directory too private to
list; no inotify watch to run out of), and each poll costs O(1) whatever the folder holds. The
price: every writer to that filesystem counts, the host's own processes included.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import DiskLimitError

# New inodes one cell may use. An ext4 disk gets one inode per 16 KiB, so a small disk (64 GiB)
# has ~4M: a million empty files uses a quarter of that while costing almost no blocks. A large
# git checkout or node_modules tree makes ~100k files, so legitimate work stays far below it.
INODE_LIMIT = 1_000_000
# Overshoot is the writer's rate times (the time to notice + the time `docker kill` takes). A
# quiet disk is polled every 50 ms (~0.4% of a core); a filling one faster (see _next_wait).
POLL_SECONDS = 0.05
MIN_POLL = 0.005  # the fastest poll, while a writer nears the bound


class DiskWatch:
    """Growth of the filesystems holding `root` (and the `also` roots: the sandbox's other host
    mounts) in used bytes and inodes; `on_exceed(growth)` runs once when bytes pass `limit` or
    inodes pass `INODE_LIMIT`.

    start() after stop() keeps the baseline, so growth while stopped still counts; reset()
    starts a new one. `statvfs` is the seam tests replace."""

    def __init__(
        self, root: Path, limit: int, on_exceed: Callable[[int], None], *,
        also: Sequence[Path] = (), poll: float = POLL_SECONDS, statvfs: Callable[[str], Any] = os.statvfs,
    ) -> None:
        self.roots = [str(root), *(str(r) for r in also)]
        self.limit = limit
        self.on_exceed = on_exceed
        self.poll = poll
        self._statvfs = statvfs
        self.exceeded_by: int | None = None  # the byte growth when the bound tripped, once it did
        self.tripped_on: str | None = None  # "bytes" or "inodes"
        self.failure: str | None = None  # why measuring stopped working, if it did (fails closed)
        self.trips = 0  # how many times the bound tripped: lets the caller tell a new trip from a shown one
        self._lock = threading.RLock()
        self._paths: list[str] = []  # one root per filesystem
        self._used: tuple[int, int] = (0, 0)  # bytes, inodes at the last poll
        self._baseline: tuple[int, int] | None = None
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._poller is not None

    def start(self) -> None:
        if self.running:
            return
        try:
            self._paths = self._one_per_filesystem()
            used = self._measure()
        except OSError as e:
            raise DiskLimitError(
                f"cannot measure the disk holding {', '.join(self.roots)}: {e}",
                hint="check that the folder exists, or set PIMAGIC_WRITE_LIMIT=0 to rely on the per-file bound alone",
            ) from None
        with self._lock:
            self._used = used
            if self._baseline is None:
                self._baseline = used
        self._stopping.clear()
        self._poller = threading.Thread(target=self._poll_loop, name="pimagic-diskwatch", daemon=True)
        self._poller.start()
        self._check()

    def stop(self) -> None:
        self._stopping.set()
        poller, self._poller = self._poller, None
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=5)

    def reset(self) -> None:
        """A new baseline (now); the bound may trip again. If the disk cannot be measured, the
        bound trips instead."""
        with self._lock:
            try:
                self._used = self._measure()
            except OSError as e:
                self.exceeded_by = None
                self._fail(f"statvfs failed: {e}")
                return
            self._baseline = self._used
            self.exceeded_by = self.tripped_on = self.failure = None

    def reset_if_clear(self) -> bool:
        """reset() unless the bound has tripped (that trip must reach the user first)."""
        with self._lock:
            if self.exceeded_by is not None:
                return False
            self.reset()
            return True

    def set_limit(self, limit: int) -> None:
        """A changed setting takes effect at once; the baseline stays."""
        self.limit = limit
        self._check()

    @property
    def growth(self) -> int:
        """Bytes used now minus at the baseline (negative when space was freed)."""
        with self._lock:
            return self._used[0] - (self._baseline or self._used)[0]

    @property
    def inode_limit(self) -> int:
        return INODE_LIMIT  # read at use: tests scale it down

    @property
    def files_growth(self) -> int:
        """Inodes used now minus at the baseline."""
        with self._lock:
            return self._used[1] - (self._baseline or self._used)[1]

    # --- measuring --------------------------------------------------------------

    def _one_per_filesystem(self) -> list[str]:
        """The roots, one per st_dev: two folders on one disk must not count its growth twice."""
        seen: dict[int, str] = {}
        for root in self.roots:
            seen.setdefault(os.stat(root).st_dev, root)
        return list(seen.values())

    def _measure(self) -> tuple[int, int]:
        used_bytes = used_files = 0
        for path in self._paths:
            st = self._statvfs(path)
            used_bytes += (st.f_blocks - st.f_bfree) * st.f_frsize
            used_files += max(st.f_files - st.f_ffree, 0)  # btrfs reports 0/0: no inode table to exhaust
        return used_bytes, used_files

    def _refresh(self) -> None:
        """The current usage; when the kernel cannot say, the bound fails closed."""
        try:
            used = self._measure()
        except OSError as e:
            self._fail(f"statvfs failed: {e}")
            return
        with self._lock:
            self._used = used

    def _poll_loop(self) -> None:
        wait = self.poll
        while not self._stopping.wait(wait):
            before, then = self._used, time.monotonic()
            self._refresh()
            self._check()
            wait = self._next_wait(before, time.monotonic() - then + wait)

    def _next_wait(self, before: tuple[int, int], elapsed: float) -> float:
        """`poll` while quiet; while the disk fills, a quarter of the time the current rate needs
        to reach the bound (at least MIN_POLL): the trip lands near the limit, not a poll past it."""
        with self._lock:
            if self.exceeded_by is not None or self.limit <= 0:
                return self.poll
            left = [(self.limit - self.growth, self._used[0] - before[0]),
                    (self.inode_limit - self.files_growth, self._used[1] - before[1])]
        times = [room * elapsed / grew for room, grew in left if grew > 0]
        return max(MIN_POLL, min([self.poll, *(t / 4 for t in times)]))

    def _fail(self, why: str) -> None:
        """Blind from now on: report the bound as reached rather than let growth go uncounted."""
        with self._lock:
            if self.exceeded_by is not None or self._stopping.is_set():
                return
            self.failure = why
            self.exceeded_by = max(self.growth, 0)
            self.tripped_on = "bytes"
            self.trips += 1
        self.on_exceed(self.exceeded_by)

    def _check(self) -> None:
        with self._lock:
            if self.exceeded_by is not None or self.limit <= 0:
                return
            growth, files = self.growth, self.files_growth
            if growth > self.limit:
                self.tripped_on = "bytes"
            elif files > self.inode_limit:
                self.tripped_on = "inodes"
            else:
                return
            self.exceeded_by = growth
            self.trips += 1
        self.on_exceed(growth)
