"""pimagic.diskwatch on a temp dir (no Docker): growth in allocated bytes, from file events."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pimagic.diskwatch import DiskWatch, allocated
from pimagic.errors import DiskLimitError

MB = 2**20


def settle(watch: DiskWatch, want, timeout: float = 5.0) -> int:
    """Wait until `want(growth)` holds (events arrive on watchdog's thread); return the growth."""
    deadline = time.monotonic() + timeout
    while not want(watch.growth):
        if time.monotonic() > deadline:
            raise AssertionError(f"growth stayed at {watch.growth}")
        time.sleep(0.02)
    return watch.growth


def write(path: Path, size: int, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(b"x" * size)


@pytest.fixture
def watched(tmp_path):
    trips: list[int] = []
    (tmp_path / "old.bin").write_bytes(b"y" * 3 * MB)  # present before the watch: the baseline
    watch = DiskWatch(tmp_path, 50 * MB, trips.append, poll=0.05)
    watch.start()
    yield watch, tmp_path, trips
    watch.stop()


def test_baseline_is_zero_growth(watched):
    watch, _, trips = watched
    assert watch.growth == 0 and trips == []


def test_create_append_truncate_delete(watched):
    watch, root, _ = watched
    write(root / "a.bin", 4 * MB)
    settle(watch, lambda g: g >= 4 * MB)
    write(root / "a.bin", 2 * MB, "ab")
    settle(watch, lambda g: g >= 6 * MB)
    os.truncate(root / "a.bin", MB)
    settle(watch, lambda g: g <= 2 * MB)
    os.unlink(root / "a.bin")
    os.unlink(root / "old.bin")  # shrinking below the baseline is negative growth
    assert settle(watch, lambda g: g <= -3 * MB + 64 * 1024) < 0


def test_fallocate_counts_allocated_blocks_and_sparse_files_do_not(watched):
    watch, root, _ = watched
    with open(root / "sparse", "wb") as f:
        f.truncate(40 * MB)  # apparent size only: no blocks
    with open(root / "alloc", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 8 * MB)
    growth = settle(watch, lambda g: g >= 8 * MB)
    assert growth < 9 * MB, "a sparse file must not count by its apparent size"


def test_keep_size_fallocate_is_seen_by_the_poll(watched):
    """fallocate with FALLOC_FL_KEEP_SIZE does not change the size; st_blocks still grows."""
    import ctypes

    watch, root, _ = watched
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(root / "keep", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(8 * MB)) == 0, ctypes.get_errno()
    finally:
        os.close(fd)
    settle(watch, lambda g: g >= 8 * MB)


def test_many_small_files_in_new_directories(watched):
    watch, root, _ = watched
    for d in range(5):
        sub = root / f"d{d}" / "deep"
        sub.mkdir(parents=True)
        for i in range(40):
            write(sub / f"f{i}", 64 * 1024)
    settle(watch, lambda g: g >= 200 * 64 * 1024)


def test_moves_and_directory_deletes_keep_the_books(watched):
    watch, root, _ = watched
    (root / "src").mkdir()
    write(root / "src" / "f", 5 * MB)
    settle(watch, lambda g: g >= 5 * MB)
    os.rename(root / "src", root / "dst")  # same bytes under a new name: no growth
    time.sleep(0.3)
    assert 5 * MB <= watch.growth < 6 * MB
    os.unlink(root / "dst" / "f")
    os.rmdir(root / "dst")
    settle(watch, lambda g: g < MB)


def test_directory_moved_in_from_outside_counts(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    (outside / "sub").mkdir(parents=True)
    write(outside / "sub" / "f", 6 * MB)
    watch = DiskWatch(inside, 50 * MB, lambda g: None, poll=0.05)
    watch.start()
    try:
        os.rename(outside, inside / "moved")
        settle(watch, lambda g: g >= 6 * MB)
    finally:
        watch.stop()


def test_symlinks_are_not_followed(watched, tmp_path_factory):
    watch, root, _ = watched
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    write(elsewhere / "big", 20 * MB)
    os.symlink(elsewhere, root / "link-dir")
    os.symlink(elsewhere / "big", root / "link-file")
    time.sleep(0.3)
    assert watch.growth < MB


def test_the_limit_trips_once_and_reset_rearms(watched):
    watch, root, trips = watched
    write(root / "a", 30 * MB)
    write(root / "b", 30 * MB)
    settle(watch, lambda g: g > 50 * MB)
    time.sleep(0.2)
    assert len(trips) == 1 and trips[0] > 50 * MB and watch.exceeded_by == trips[0]
    watch.reset()
    assert watch.growth == 0 and watch.exceeded_by is None
    write(root / "c", 51 * MB)
    settle(watch, lambda g: g > 50 * MB)
    time.sleep(0.2)
    assert len(trips) == 2


def test_growth_while_stopped_still_counts(watched):
    watch, root, trips = watched
    watch.stop()
    write(root / "a", 10 * MB)
    watch.start()
    assert watch.growth >= 10 * MB


def test_a_writer_is_caught_near_the_limit(tmp_path):
    """Reaction: a writer at full speed is stopped by the callback; the overshoot is small."""
    stop = threading.Event()
    watch = DiskWatch(tmp_path, 64 * MB, lambda g: stop.set(), poll=0.05)
    watch.start()
    written = 0
    try:
        with open(tmp_path / "fill", "wb") as f:
            while not stop.is_set() and written < 1024 * MB:
                f.write(b"z" * MB)
                written += MB
        assert stop.is_set()
        assert written < 64 * MB + 32 * MB, f"wrote {written // MB} MiB before the callback"
    finally:
        watch.stop()


def test_an_unwatchable_folder_is_an_actionable_error(tmp_path):
    watch = DiskWatch(tmp_path / "missing", MB, lambda g: None)
    with pytest.raises(DiskLimitError, match="cannot watch") as info:
        watch.start()
    assert "PIMAGIC_WRITE_LIMIT" in str(info.value)


def test_allocated_never_follows(tmp_path):
    write(tmp_path / "t", MB)
    os.symlink(tmp_path / "t", tmp_path / "l")
    assert allocated(str(tmp_path / "l")) < MB <= allocated(str(tmp_path / "t"))
    assert allocated(str(tmp_path / "gone")) is None


def test_lost_events_are_recounted(watched):
    """An inotify queue overflow (watchdog only logs it) makes the watch walk the folder again."""
    import logging

    watch, root, _ = watched
    write(root / "unseen", 7 * MB)
    settle(watch, lambda g: g >= 7 * MB)
    time.sleep(0.3)  # the file's last events are in
    with watch._lock:  # as if the kernel had dropped this file's events
        watch._set(str(root / "unseen"), 0)
        watch._hot.clear()
    assert watch.growth < MB
    logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; filesystem events were lost")
    settle(watch, lambda g: g >= 7 * MB)


def test_a_blind_watch_fails_closed(watched):
    """Watching stops (e.g. no inotify watch left for a new directory): the limit is reported as
    reached, with the reason, instead of letting growth go uncounted; reset() watches afresh."""
    watch, root, trips = watched
    for emitter in list(watch._observer.emitters):
        emitter.stop()
        emitter.join(5)
    deadline = time.monotonic() + 5
    while not trips and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(trips) == 1 and "inotify" in (watch.failure or "")
    watch.reset()
    watch.start()
    assert watch.failure is None and watch.running
    write(root / "after", 2 * MB)
    settle(watch, lambda g: g >= 2 * MB)


def test_also_roots_count_toward_the_same_limit(tmp_path):
    """The sandbox's second host mount (pi's data dir) adds to the same growth."""
    ws, agent = tmp_path / "ws", tmp_path / "agent"
    ws.mkdir()
    agent.mkdir()
    trips: list[int] = []
    watch = DiskWatch(ws, 3 * MB, trips.append, also=[agent], poll=0.05)
    watch.start()
    try:
        (ws / "a").write_bytes(b"x" * 2 * MB)
        (agent / "b").write_bytes(b"x" * 2 * MB)
        deadline = time.monotonic() + 5
        while not trips and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trips and trips[0] >= 4 * MB
    finally:
        watch.stop()
