"""How much a folder has grown since a baseline, kept current from file events.

The workspace is a bind mount with no quota of its own: the sandbox can fill the host's disk
at its full speed. The kernel-side bound is the `fsize` ulimit (one file); this module bounds
the total. It counts allocated blocks (`st_blocks`), so sparse files cost nothing and
`fallocate` counts in full. One walk at start() records every entry's size; after that only
the paths that file events name are stat'ed again (plus, every `poll` seconds, the paths that
changed in the last `hot_seconds`: writes through a shared mmap raise no event). When the
kernel's event queue overflowed (events lost) the folder is walked again; when watching stops
working (e.g. no inotify watch left for a new directory) the watch fails closed: it reports the
limit as exceeded, with `failure` saying why. Nothing here follows a symlink: every stat is an
lstat, and symlinked directories are not walked.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from .errors import DiskLimitError

_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileDeletedEvent, FileMovedEvent,
    DirCreatedEvent, DirModifiedEvent, DirDeletedEvent, DirMovedEvent,
]
HOT_LIMIT = 4096  # most recently changed paths re-stat'ed by the poll
_LIVE: weakref.WeakSet[DiskWatch] = weakref.WeakSet()


class _OverflowSignal(logging.Handler):
    """watchdog reports a kernel queue overflow (events lost) only in its log: walk again then."""

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            for watch in list(_LIVE):
                watch.lost.set()


logging.getLogger("watchdog.observers").addHandler(_OverflowSignal(logging.WARNING))


def allocated(path: str) -> int | None:
    """Bytes allocated to `path` itself (never a symlink's target); None if it is gone."""
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return None


class DiskWatch(FileSystemEventHandler):
    """Growth of `root` (and any `also` roots: the sandbox's other host mounts) in allocated
    bytes; `on_exceed(growth)` runs once when it passes `limit`.

    start() after stop() walks again and keeps the first baseline, so growth while the watch
    was stopped still counts; reset() starts a new baseline (after the user was told)."""

    def __init__(
        self, root: Path, limit: int, on_exceed: Callable[[int], None], *,
        also: Sequence[Path] = (), poll: float = 0.5, hot_seconds: float = 30.0,
    ) -> None:
        self.roots = [str(root), *(str(r) for r in also)]
        self.limit = limit
        self.on_exceed = on_exceed
        self.poll = poll
        self.hot_seconds = hot_seconds
        self.exceeded_by: int | None = None  # the growth that tripped the limit, once it did
        self.failure: str | None = None  # why the watch stopped working, if it did (fails closed)
        self.lost = threading.Event()  # events were lost: walk again
        self._lock = threading.RLock()
        self._sizes: dict[str, int] = {}
        self._hot: dict[str, float] = {}  # path -> when an event last named it
        self._total = 0
        self._baseline: int | None = None
        self._observer = None
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._observer is not None

    def start(self) -> None:
        """Watch first, then walk, so nothing written during the walk is missed."""
        if self.running:
            return
        observer = Observer()
        try:
            for root in self.roots:
                observer.schedule(self, root, recursive=True, event_filter=_EVENTS)
            observer.start()
        except OSError as e:  # e.g. fs.inotify.max_user_watches reached
            raise DiskLimitError(
                f"cannot watch {', '.join(self.roots)} for growth: {e}",
                hint="raise fs.inotify.max_user_watches (sysctl), or set PIMAGIC_WRITE_LIMIT=0 "
                "to rely on the per-file bound alone",
            ) from None
        self._observer = observer
        with self._lock:
            self._sizes.clear()
            self._total = 0
            for root in self.roots:
                self._walk(root)
            if self._baseline is None:
                self._baseline = self._total
        self._stopping.clear()
        _LIVE.add(self)
        self._poller = threading.Thread(target=self._poll_loop, name="pimagic-diskwatch", daemon=True)
        self._poller.start()
        self._check()

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        _LIVE.discard(self)
        self._stopping.set()
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None

    def reset(self) -> None:
        """A new baseline (the current size, or the next start()'s walk); the limit may trip again."""
        if self.failure is not None:  # blind: the next start() watches afresh
            self.stop()
        with self._lock:
            self._baseline = self._total if self.running else None
            self.exceeded_by = None
            self.failure = None

    def set_limit(self, limit: int) -> None:
        """A changed setting takes effect at once; the baseline stays."""
        self.limit = limit
        self._check()

    @property
    def growth(self) -> int:
        with self._lock:
            return self._total - (self._baseline if self._baseline is not None else self._total)

    # --- accounting --------------------------------------------------------------

    def _set(self, path: str, size: int | None) -> None:
        old = self._sizes.pop(path, 0)
        if size is not None:
            self._sizes[path] = size
        self._total += (size or 0) - old

    def _walk(self, top: str) -> None:
        """Record `top` and everything under it (an lstat each; symlinks not followed)."""
        self._set(top, allocated(top))
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                self._set(path, allocated(path))

    def _forget_under(self, top: str) -> None:
        prefix = top.rstrip(os.sep) + os.sep
        for path in [p for p in self._sizes if p.startswith(prefix)]:
            self._set(path, None)

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        with self._lock:
            if isinstance(event, (DirMovedEvent, DirDeletedEvent)):
                self._forget_under(src)
            self._set(src, allocated(src))
            self._touch(src)
            dest = os.fsdecode(event.dest_path) if getattr(event, "dest_path", "") else ""
            if dest:
                if isinstance(event, DirMovedEvent):
                    self._walk(dest)  # its content arrived without events of its own
                self._set(dest, allocated(dest))
                self._touch(dest)
            elif isinstance(event, DirCreatedEvent):
                self._walk(src)  # files made before the new directory's watch was added
        self._check()

    def _touch(self, path: str) -> None:
        """Mark `path` recently changed; the dict stays in recency order, so the oldest goes first."""
        self._hot.pop(path, None)
        self._hot[path] = time.monotonic()
        if len(self._hot) > HOT_LIMIT:
            del self._hot[next(iter(self._hot))]

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self.poll):
            observer = self._observer
            if observer is not None and not all(e.is_alive() for e in observer.emitters):
                self._fail("the folder's file events stopped (too many directories for inotify?)")
                return
            cutoff = time.monotonic() - self.hot_seconds
            with self._lock:
                if self.lost.is_set():  # the kernel dropped events: recount everything once
                    self.lost.clear()
                    self._sizes.clear()
                    self._total = 0
                    for root in self.roots:
                        self._walk(root)
                for path, seen in list(self._hot.items()):
                    if seen < cutoff:
                        del self._hot[path]
                    else:
                        self._set(path, allocated(path))
            self._check()

    def _fail(self, why: str) -> None:
        """Blind from now on: report the limit as reached rather than let growth go uncounted."""
        with self._lock:
            if self.exceeded_by is not None or self._stopping.is_set():  # stop() ends the emitters too
                return
            self.failure = why
            self.exceeded_by = max(self.growth, 0)
        self.on_exceed(self.exceeded_by)

    def _check(self) -> None:
        with self._lock:
            if self.exceeded_by is not None or self.limit <= 0:
                return
            growth = self.growth
            if growth <= self.limit:
                return
            self.exceeded_by = growth
        self.on_exceed(growth)
