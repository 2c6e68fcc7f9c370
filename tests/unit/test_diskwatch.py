"""pimagic.diskwatch without Docker: accounting through a fake statvfs, then the real kernel's
counters on the test's own filesystem (write, fallocate, a shared mmap of a sparse file)."""

from __future__ import annotations

import mmap
import os
import threading
import time
from types import SimpleNamespace

import pytest

import pimagic.diskwatch as diskwatch
from pimagic.diskwatch import DiskWatch
from pimagic.errors import DiskLimitError

MB = 2**20
FRSIZE = 4096


class FakeDisk:
    """statvfs at the seam: used blocks and inodes the test sets, per path."""

    def __init__(self) -> None:
        self.used_blocks = 1000
        self.used_files = 500
        self.calls: list[str] = []
        self.error: OSError | None = None

    def add(self, nbytes: int = 0, files: int = 0) -> None:
        self.used_blocks += nbytes // FRSIZE
        self.used_files += files

    def __call__(self, path: str) -> SimpleNamespace:
        self.calls.append(path)
        if self.error is not None:
            raise self.error
        return SimpleNamespace(f_blocks=10**9, f_bfree=10**9 - self.used_blocks, f_frsize=FRSIZE,
                               f_files=10**7, f_ffree=10**7 - self.used_files)


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


@pytest.fixture
def fake(tmp_path):
    disk = FakeDisk()
    trips: list[int] = []
    watch = DiskWatch(tmp_path, 50 * MB, trips.append, poll=0.01, statvfs=disk)
    watch.start()
    yield watch, disk, trips
    watch.stop()


def test_growth_is_used_bytes_and_inodes_since_the_baseline(fake):
    watch, disk, trips = fake
    assert watch.growth == 0 and watch.files_growth == 0 and trips == []
    disk.add(8 * MB, files=3)
    wait_for(lambda: watch.growth == 8 * MB)
    assert watch.files_growth == 3
    disk.add(-10 * MB, files=-5)  # freed space is negative growth
    wait_for(lambda: watch.growth == -2 * MB)
    assert watch.files_growth == -2 and trips == []


def test_bytes_trip_once_then_reset_rearms(fake):
    watch, disk, trips = fake
    disk.add(51 * MB)
    wait_for(lambda: trips)
    disk.add(100 * MB)
    time.sleep(0.1)
    assert trips == [51 * MB] and watch.exceeded_by == 51 * MB and watch.tripped_on == "bytes" and watch.trips == 1
    assert watch.reset_if_clear() is False, "a trip is kept until shown"
    watch.reset()
    assert watch.growth == 0 and watch.exceeded_by is None and watch.tripped_on is None
    disk.add(49 * MB)
    time.sleep(0.1)
    assert len(trips) == 1
    disk.add(2 * MB)
    wait_for(lambda: len(trips) == 2)
    assert watch.trips == 2


def test_inodes_trip_at_the_cap(fake, monkeypatch):
    watch, disk, trips = fake
    monkeypatch.setattr(diskwatch, "INODE_LIMIT", 1000)
    disk.add(files=1000)
    time.sleep(0.1)
    assert trips == []
    disk.add(files=1)
    wait_for(lambda: trips)
    assert watch.tripped_on == "inodes" and watch.files_growth == 1001 and trips == [0]


def test_the_default_inode_cap_is_sound():
    assert diskwatch.INODE_LIMIT == 1_000_000


def test_baseline_per_cell_and_kept_across_stop(fake):
    """reset() at a cell start forgets what came before; stop()/start() (a reconnect) does not."""
    watch, disk, trips = fake
    disk.add(40 * MB)
    wait_for(lambda: watch.growth == 40 * MB)
    assert watch.reset_if_clear() is True  # the next cell
    disk.add(40 * MB)
    wait_for(lambda: watch.growth == 40 * MB)
    watch.stop()
    disk.add(20 * MB)  # while stopped
    watch.start()
    assert watch.growth == 60 * MB and len(trips) == 1


def test_set_limit_applies_at_once_and_zero_disables(fake):
    watch, disk, trips = fake
    disk.add(30 * MB)
    wait_for(lambda: watch.growth == 30 * MB)
    watch.set_limit(0)
    disk.add(100 * MB)
    time.sleep(0.1)
    assert trips == []
    watch.set_limit(20 * MB)
    assert trips == [130 * MB]


def test_one_statvfs_per_filesystem(tmp_path):
    """Workspace and pi's data dir on one disk: its growth counts once, not twice."""
    disk = FakeDisk()
    (tmp_path / "ws").mkdir()
    (tmp_path / "agent").mkdir()
    watch = DiskWatch(tmp_path / "ws", 50 * MB, lambda g: None, also=[tmp_path / "agent"], poll=0.01, statvfs=disk)
    watch.start()
    try:
        disk.add(8 * MB)
        wait_for(lambda: watch.growth == 8 * MB)
        assert set(disk.calls) == {str(tmp_path / "ws")}
    finally:
        watch.stop()


def test_a_disk_that_cannot_be_measured_fails_closed(fake):
    watch, disk, trips = fake
    disk.error = OSError(5, "Input/output error")
    wait_for(lambda: trips)
    assert "statvfs failed" in (watch.failure or "") and watch.exceeded_by == 0
    disk.error = None
    watch.reset()
    assert watch.failure is None and watch.exceeded_by is None


def test_a_missing_folder_is_an_actionable_error(tmp_path):
    watch = DiskWatch(tmp_path / "missing", MB, lambda g: None)
    with pytest.raises(DiskLimitError, match="cannot measure") as info:
        watch.start()
    assert "PIMAGIC_WRITE_LIMIT" in str(info.value)


# --- the real kernel's counters -----------------------------------------------------------
# The test's filesystem is shared with every other process on the machine, so each check waits
# for "at least what this test wrote" and never asserts an upper bound tighter than noise.


@pytest.fixture
def real(tmp_path):
    trips: list[int] = []
    watch = DiskWatch(tmp_path, 10**15, trips.append, poll=0.02)
    watch.start()
    yield watch, tmp_path
    watch.stop()


def test_real_write_is_counted(real):
    watch, root = real
    with open(root / "w.bin", "wb") as f:
        f.write(b"x" * 64 * MB)  # still in the page cache: ext4 reserves its blocks at once
    wait_for(lambda: watch.growth >= 60 * MB)


def test_real_fallocate_is_counted(real):
    watch, root = real
    fd = os.open(root / "fa.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.posix_fallocate(fd, 0, 64 * MB)
    finally:
        os.close(fd)
    wait_for(lambda: watch.growth >= 60 * MB)


def test_real_shared_mmap_of_a_sparse_file_is_counted(real):
    """The red team's evasion: writes through a shared mapping raise no file event, and the
    file's size never changes; the filesystem's free-block counter still moves."""
    watch, root = real
    fd = os.open(root / "sparse", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.ftruncate(fd, 64 * MB)
        with mmap.mmap(fd, 64 * MB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            time.sleep(0.1)
            assert watch.growth < 32 * MB, "a sparse file costs no blocks"
            for off in range(0, 64 * MB, MB):
                m[off:off + MB] = b"x" * MB
            wait_for(lambda: watch.growth >= 60 * MB)  # before msync or unmap
    finally:
        os.close(fd)


def test_real_empty_files_count_as_inodes(real):
    watch, root = real
    for i in range(3000):
        (root / f"e{i}").touch()
    wait_for(lambda: watch.files_growth >= 3000)


def test_a_real_writer_is_caught_near_the_limit(tmp_path):
    """Reaction: a writer at full speed (~3 GB/s into the page cache here) is stopped by the
    callback close to the limit: the poll speeds up as the disk fills (measured: 263-276 MiB
    written under a 256 MiB limit; a fixed 50 ms poll would let ~150 MiB past it)."""
    stop = threading.Event()
    watch = DiskWatch(tmp_path, 256 * MB, lambda g: stop.set())
    watch.start()
    written = 0
    try:
        with open(tmp_path / "fill", "wb") as f:
            while not stop.is_set() and written < 2048 * MB:
                f.write(b"z" * MB)
                written += MB
        assert stop.is_set()
        assert written < 256 * MB + 64 * MB, f"wrote {written // MB} MiB before the callback"
    finally:
        watch.stop()


def test_the_poll_never_lists_the_folder(tmp_path):
    """O(1) in the folder's size, and nothing in it is ever opened or listed: an audit hook sees
    no open/listdir/scandir from the poll thread while the folder churns."""
    import sys

    seen: list[tuple[str, tuple]] = []

    def hook(event: str, args: tuple) -> None:
        if threading.current_thread().name == "pimagic-diskwatch" and event in ("open", "os.listdir", "os.scandir"):
            seen.append((event, args))

    sys.addaudithook(hook)
    watch = DiskWatch(tmp_path, 10**15, lambda g: None, poll=0.01)
    watch.start()
    try:
        for i in range(200):
            (tmp_path / f"d{i}").mkdir()
            (tmp_path / f"d{i}" / "f").write_bytes(b"x")
        time.sleep(0.2)
        assert watch.running and seen == []
    finally:
        watch.stop()
    # Control: a walker on a thread of the same name is seen (the hook can fail the test).
    walker = threading.Thread(target=lambda: list(os.walk(tmp_path)), name="pimagic-diskwatch")
    walker.start()
    walker.join()
    assert any(event == "os.scandir" for event, _ in seen)
