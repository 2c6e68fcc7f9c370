"""The workspace folder, pinned when the user chose it (RT1-2).

A sandbox owns the directory entries of everything below its folder: the agent of a notebook in P
can rename P/child away and put a symlink to `~/.ssh` in its place. A kernel working in P/child
must then not mount "whatever P/child is now". So the folder is pinned once, when the settings are
loaded or the user sets `workspace` (`%config`): its real path and the directory's (st_dev,
st_ino). Each start walks that real path again, one component at a time without following any
symlink (none was on it at pin time), and refuses when a component became a link, the folder is
gone, or another directory now has its name. Docker gets the pinned real path; it follows links
at mount time, so `verify_mounted` compares what the container really mounted (stat as root inside
it, before anything else runs) with the pin, which closes the race between the check and the mount.

A bind mount shows the host's st_dev and st_ino inside the container (measured with Docker 20.10,
overlay2, ext4). An engine that bridges files through a VM (Docker Desktop) may show another st_dev:
`verify_mounted` learns that from a host-only reference file mounted in the same start and then
compares st_ino alone; an engine that keeps neither cannot be checked, so the start is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import WorkspaceReplacedError

_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)  # Linux: no read permission needed to walk
_FLAGS = _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class WorkspacePin:
    """`source` (the `workspace` setting) as pinned: its real path then, and the directory's
    identity then (None when it did not exist yet: the first start that finds it adopts it)."""

    source: str
    path: Path
    dev: int | None = None
    ino: int | None = None

    @property
    def identity(self) -> tuple[int, int] | None:
        return None if self.dev is None or self.ino is None else (self.dev, self.ino)


def pin(source: str) -> WorkspacePin:
    """Pin the folder `source` names now (the user's act: links in it are followed, once)."""
    path = Path(source).expanduser().resolve()
    try:
        st = os.lstat(path)
    except OSError:
        return WorkspacePin(source, path)
    if not stat.S_ISDIR(st.st_mode):
        return WorkspacePin(source, path)
    return WorkspacePin(source, path, st.st_dev, st.st_ino)


def walk(path: Path) -> os.stat_result:
    """stat of `path`, reached from `/` one component at a time with O_NOFOLLOW: OSError (ELOOP,
    ENOTDIR, ENOENT) when a component is a link, not a directory, or missing."""
    fd = os.open("/", _FLAGS | os.O_DIRECTORY)
    try:
        for part in path.parts[1:]:
            nxt = os.open(part, _FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
            st = os.fstat(fd)  # O_PATH|O_NOFOLLOW opens a symlink itself: check each component's type
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, "a symbolic link", part)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "not a directory", part)
        return os.fstat(fd)
    finally:
        os.close(fd)


def _replaced(p: WorkspacePin, what: str, *, linked: bool = False) -> WorkspaceReplacedError:
    # Never suggest the same path when a link is on it: `%config` follows links, and a link a
    # sandbox planted leads where that sandbox chose (e.g. ~/.ssh).
    again = ("" if linked else f" (`%config PimagicSettings.workspace = '{p.path}'` accepts a folder you "
             "recreated at the same path)")
    return WorkspaceReplacedError(
        f"the folder {p.path} was replaced (moved, or a link put in its place) since this kernel loaded "
        f"({what}); nothing was mounted and no file was touched",
        hint="a sandbox whose folder contains this one can rename it: check what is there. If you moved the "
        "folder yourself, reopen the notebook from the real folder, or point this kernel at the real folder "
        f"with `%config PimagicSettings.workspace = '...'`{again}",
    )


def _link_note(p: WorkspacePin, name: str) -> str:
    """Which component became a link, and where it leads (read, never followed)."""
    parts = p.path.parts
    if name not in parts:
        return f"{name} in its path is now a link or a file"
    where = Path(*parts[: parts.index(name) + 1])
    what = "it" if where == p.path else str(where)
    try:
        return f"{what} is now a link to {os.readlink(where)!r}"
    except OSError:
        return f"{where} is now a link or a file"


def check(p: WorkspacePin) -> WorkspacePin:
    """The pin, when its real path still leads, through no symlink, to the pinned directory; a pin
    made before the folder existed adopts the directory found (the walk follows no link).
    WorkspaceReplacedError otherwise."""
    try:
        st = walk(p.path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            what = "it is gone"
        elif e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _replaced(p, _link_note(p, str(e.filename or "")), linked=True) from None
        else:
            what = f"cannot check its path: {e.strerror}"
        raise _replaced(p, what) from None
    if p.identity is None:
        return replace(p, dev=st.st_dev, ino=st.st_ino)
    if (st.st_dev, st.st_ino) != p.identity:
        raise _replaced(p, "another directory now has its name")
    return p


@dataclass(frozen=True)
class Mounted:
    """What the container reports for one mount point: (st_dev, st_ino) from `stat` as root."""

    dev: int
    ino: int


def parse_stat(output: bytes, count: int) -> list[Mounted]:
    """`stat -c '%d %i'` lines -> Mounted; ValueError when the output is not `count` such lines."""
    lines = output.decode("ascii", errors="replace").split()
    if len(lines) != 2 * count:
        raise ValueError(f"unexpected stat output {output[:200]!r}")
    return [Mounted(int(lines[i]), int(lines[i + 1])) for i in range(0, len(lines), 2)]


def same(host: tuple[int, int], seen: Mounted, reference: tuple[tuple[int, int], Mounted]) -> bool:
    """`seen` (in the container) is the host directory `host`. `reference` is a host-only file
    mounted in the same start, with its container view: it tells whether this engine keeps st_dev
    across a bind mount (then both must match) or only st_ino. An engine that keeps neither: False."""
    (ref_dev, ref_ino), ref_seen = reference
    if ref_seen.ino != ref_ino:
        return False
    if ref_seen.dev == ref_dev:
        return (seen.dev, seen.ino) == host
    return seen.ino == host[1]
