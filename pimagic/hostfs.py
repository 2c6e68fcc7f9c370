"""Small, symlink-safe file helpers for the host side.

Everything pimagic reads or writes on the host goes through a directory file
descriptor and `O_NOFOLLOW`: a name that is a symlink, a FIFO or a device is
refused, reads are size-capped, and mode/owner are changed on the open fd, never
by path. pimagic keeps its own files out of the sandbox's reach; these helpers
are the second layer (and the only way the host touches its state dir).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .errors import HostFileError

__all__ = [
    "MAX_CONFIG_BYTES",
    "HostFileError",
    "make_dir",
    "open_dir",
    "read_file",
    "remove_retired_tree",
    "write_atomic",
    "write_in_place",
]

MAX_CONFIG_BYTES = 4 * 2**20  # pi's JSON files are kilobytes; anything bigger is not ours
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _refuse(path: str, what: str) -> HostFileError:
    return HostFileError(
        f"refusing to use {path}: {what}",
        hint="pimagic only uses regular files it wrote itself; remove the odd entry "
        "(`pimagic clean --reset` resets the folder's pi data)",
    )


def open_dir(path: str | os.PathLike, *, dir_fd: int | None = None) -> int:
    """An fd for the directory `path` (its last component must not be a symlink)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(str(path), "not a plain directory (a symlink or a file)") from None
        raise


@contextlib.contextmanager
def opened_dir(path: str | os.PathLike, *, dir_fd: int | None = None) -> Iterator[int]:
    fd = open_dir(path, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def make_dir(name: str | os.PathLike, *, dir_fd: int | None = None, mode: int = 0o700) -> bool:
    """Create a directory; True when this call created it, False when a plain one was there."""
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
        return True
    except FileExistsError:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(str(name), "not a plain directory (a symlink or a file)") from None
        return False


def _open_regular(dir_fd: int, name: str, flags: int) -> int:
    """openat(name) refusing symlinks, FIFOs (O_NONBLOCK: no hang), devices and directories."""
    try:
        fd = os.open(name, flags | _NOFOLLOW | os.O_NONBLOCK, 0o600, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse(name, "it is a symlink") from None
        if e.errno in (errno.EISDIR, errno.ENXIO):
            raise _refuse(name, "not a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(name, "not a regular file (a FIFO, a device or a directory)")
    os.set_blocking(fd, True)
    return fd


def read_file(dir_fd: int, name: str, *, limit: int = MAX_CONFIG_BYTES) -> bytes | None:
    """The bytes of regular file `name` in `dir_fd` (None when missing); refused above `limit`."""
    try:
        fd = _open_regular(dir_fd, name, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _refuse(name, f"larger than {limit} bytes")
    return data


def _finish(fd: int, data: bytes, mode: int, uid: int | None, gid: int | None) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fchmod(fd, mode)
    if uid is not None and os.getuid() == 0:
        os.fchown(fd, uid, gid if gid is not None else uid)


def write_atomic(
    dir_fd: int, name: str, data: bytes, *, mode: int = 0o600, uid: int | None = None, gid: int | None = None,
) -> None:
    """Replace `name` in `dir_fd` by rename. The temp file is created O_EXCL|O_NOFOLLOW (a planted
    symlink at its name is never followed), and mode/owner are set on its fd before the rename."""
    for _ in range(16):
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise _refuse(name, "could not create a fresh temporary file beside it")
    try:
        try:
            _finish(fd, data, mode, uid, gid)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def write_in_place(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644) -> None:
    """Rewrite regular file `name` keeping its inode (a file bind mount pins the inode, so a
    running container sees the new content)."""
    fd = _open_regular(dir_fd, name, os.O_WRONLY | os.O_CREAT)
    try:
        os.ftruncate(fd, 0)
        _finish(fd, data, mode, None, None)
    finally:
        os.close(fd)


def remove_retired_tree(path: Path) -> bool:
    """Delete a tree that no sandbox can reach any more (moved into the host-only state dir), of
    any depth or permissions: coreutils' `rm` walks it without recursion limits and never follows
    symlinks; when not root, `find -P ... -type d` first gives the directories the agent locked
    (`chmod 000`) back to their owner, touching no symlink (`chmod -R` would follow the agent's
    links to your files). True when it is gone."""
    if os.getuid() != 0:  # only real directories (find -P, -type d), each before find descends into it
        subprocess.run(["find", "-P", str(path), "-type", "d", "!", "-perm", "-u=rwx", "-exec", "chmod", "u+rwx",
                        "{}", ";"], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, check=False)
    return not os.path.lexists(path)


def path_in(root: Path, path: Path) -> bool:
    """`path` lies strictly inside `root` (both already resolved)."""
    return path != root and path.is_relative_to(root)
