"""Which pi conversation a kernel continues: its notebook's file, not the file's name.

A notebook is known by its file's identity, (st_dev, st_ino) plus its birth time where the file
system keeps one, as the kernel sees it when pimagic loads. jupyter_server renames with
`shutil.move` (os.rename: same inode) and saves in place (its default `atomic_writing` copies the
old content aside and rewrites the file through `open(path, "w")`; `use_atomic_writing=False`
writes in place too), so the identity survives saves and renames: `Untitled.ipynb` renamed to
`snake.ipynb` keeps its conversation, and a new `Untitled.ipynb` starts its own.

The host-only state dir (`conversations/.notebooks.json`, never mounted) records both
{file -> session id, last path} and {path -> file, session id}. A file whose inode changed under
the same path (an editor or a setup that saves by replacing the file, a `git checkout`) continues
its path's conversation, but only when that path's old file lives nowhere else (it was not renamed
or moved away: its last known folder, the notebook's folder and then the workspace's tree are
searched for it, a bounded number of entries, no symlinks followed). The birth time tells a
reused inode number (a deleted notebook's) from the file that had it; where the file system keeps
none, a file that takes a deleted notebook's inode would continue that conversation.

The notebook lives in the workspace, which the agent writes: it is only ever stat'ed without
following a symlink in its last component, never opened or read, and what it says only picks which
of this folder's conversations continues (all of them are the agent's already: pi's sessions live
in its own data dir). Nothing else is decided from it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hostfs

INDEX_FILE = ".notebooks.json"  # a dot name: no slug of a named conversation is one
MAX_RECORDS = 1000  # per table; the least recently seen go first
SCAN_MAX_ENTRIES = 20_000  # folders searched for a renamed notebook: bounded (the agent fills folders)
SCAN_MAX_DEPTH = 6
SKIP_DIRS = frozenset({"node_modules", "__pycache__", "venv", "site-packages"})
LEGACY_PREFIX = "nb-"  # pimagic <= this change: conversations/nb-<notebook name>.json


@dataclass(frozen=True)
class FileId:
    """A file's identity: device, inode and (when the file system keeps it) birth time in ns."""

    dev: int
    ino: int
    birth: int | None = None

    @property
    def key(self) -> str:
        return f"{self.dev}:{self.ino}"

    def same_file(self, other: FileId) -> bool:
        """Same inode, and not a reuse of its number (birth times differ) when both are known."""
        if (self.dev, self.ino) != (other.dev, other.ino):
            return False
        return self.birth is None or other.birth is None or self.birth == other.birth


@dataclass(frozen=True)
class Notebook:
    """A notebook as its kernel saw it at start: its absolute path, and its file (None when no
    file is there, e.g. a console, or a notebook not saved yet: then the path alone is the key)."""

    path: str
    file: FileId | None

    @property
    def label(self) -> str:
        return os.path.basename(self.path).removesuffix(".ipynb")


@dataclass(frozen=True)
class Claim:
    """This kernel's conversation: pi's session id and how it was found ("file", "path", "legacy",
    "key" for a named conversation; None: a new one)."""

    session_id: str
    found: str | None = None


# --- the notebook's file, as the kernel sees it ----------------------------------------------------


class _Timestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_reserved", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    """struct statx (linux/stat.h, 256 bytes): only the birth time is read from it."""

    _fields_ = [
        ("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32), ("attributes", ctypes.c_uint64),
        ("nlink", ctypes.c_uint32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
        ("mode", ctypes.c_uint16), ("_spare0", ctypes.c_uint16), ("ino", ctypes.c_uint64),
        ("size", ctypes.c_uint64), ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
        ("atime", _Timestamp), ("btime", _Timestamp), ("ctime", _Timestamp), ("mtime", _Timestamp),
        ("rdev_major", ctypes.c_uint32), ("rdev_minor", ctypes.c_uint32),
        ("dev_major", ctypes.c_uint32), ("dev_minor", ctypes.c_uint32), ("_spare2", ctypes.c_uint64 * 14),
    ]


_STATX_INO, _STATX_BTIME, _AT_SYMLINK_NOFOLLOW = 0x100, 0x800, 0x100


def _statx() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).statx  # glibc >= 2.28
    except (OSError, AttributeError):
        return None


_STATX = _statx()


def _birth_ns(dir_fd: int, name: str, st: os.stat_result) -> int | None:
    """The birth time (ns) of `name` (not following a symlink), if the system tells it."""
    birth = getattr(st, "st_birthtime_ns", None) or getattr(st, "st_birthtime", None)  # BSD, macOS
    if birth is not None:
        return int(birth) if isinstance(birth, int) else int(birth * 1e9)
    if _STATX is None:
        return None
    buf = _Statx()
    if _STATX(dir_fd, os.fsencode(name), _AT_SYMLINK_NOFOLLOW, _STATX_INO | _STATX_BTIME, ctypes.byref(buf)) != 0:
        return None
    if not buf.mask & _STATX_BTIME or buf.ino != st.st_ino:  # no birth time here, or a racing rename
        return None
    return buf.btime.tv_sec * 1_000_000_000 + buf.btime.tv_nsec


def file_id(path: str | os.PathLike) -> FileId | None:
    """The identity of the file at `path` without following a symlink in its last component (a
    symlinked notebook is known by its link). None when nothing (or not a file or link) is there.
    The folders on the way are resolved as usual: this is a lookup key, nothing is opened by it."""
    folder, name = os.path.split(os.path.abspath(path))
    try:
        dir_fd = os.open(folder or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            return None
        return FileId(st.st_dev, st.st_ino, _birth_ns(dir_fd, name, st))
    except OSError:
        return None
    finally:
        os.close(dir_fd)


def notebook_at(path: str | os.PathLike, cwd: str | None = None) -> Notebook:
    """The notebook Jupyter named (JPY_SESSION_NAME: absolute; an older server may give a path
    relative to its root, and the kernel then runs in the notebook's folder)."""
    path = os.fspath(path)
    if not os.path.isabs(path):
        path = os.path.join(cwd or os.getcwd(), os.path.basename(path))
    path = os.path.normpath(path)
    return Notebook(path, file_id(path))


def _holds(folder: str, wanted: FileId, budget: list[int], subfolders: list[str] | None = None) -> bool:
    """Whether `folder` holds the file `wanted` under any name. readdir's inode numbers pick the
    candidates and lstat confirms them (notebooks are checked however readdir numbers them).
    `budget`: entries left to read, shared by a whole search (the agent can fill folders).
    `subfolders`: collects the plain (not symlinked) folders seen, for a search of a tree."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if budget[0] <= 0:
                    return False
                budget[0] -= 1
                try:
                    if entry.inode() == wanted.ino or entry.name.endswith(".ipynb"):
                        found = file_id(entry.path)
                        if found is not None and found.same_file(wanted):
                            return True
                    if subfolders is not None and entry.is_dir(follow_symlinks=False) \
                            and not entry.name.startswith(".") and entry.name not in SKIP_DIRS:
                        subfolders.append(entry.path)
                except OSError:
                    continue
    except OSError:
        return False
    return False


def lives_in(wanted: FileId, folders: list[str], trees: list[str]) -> bool:
    """Whether the file `wanted` is still in one of `folders`, or anywhere in the `trees`
    (breadth first, no symlinks followed, at most SCAN_MAX_ENTRIES entries read in all)."""
    budget = [SCAN_MAX_ENTRIES]
    if any(_holds(folder, wanted, budget) for folder in dict.fromkeys(folders)):
        return True
    queue = list(dict.fromkeys(trees))
    depth = {folder: 0 for folder in queue}
    while queue and budget[0] > 0:
        folder = queue.pop(0)
        below: list[str] = []
        if _holds(folder, wanted, budget, below if depth[folder] < SCAN_MAX_DEPTH else None):
            return True
        for sub in below:
            depth[sub] = depth[folder] + 1
            queue.append(sub)
    return False


# --- the host-only record ------------------------------------------------------------------------


def slug(text: str) -> str:
    """A conversation key as a file name (and pi session id prefix)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:48] or "default"


def new_session_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class ConversationStore:
    """The folder's conversations, in its host-only state dir (`conversations/`). Every change is
    one read-modify-write under an exclusive lock on the directory (kernels of one folder share it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        self.folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        hostfs.make_dir(self.folder)
        with hostfs.opened_dir(self.folder) as dfd:
            with contextlib.suppress(OSError):  # a file system without flock: a rare lost update, not a failure
                fcntl.flock(dfd, fcntl.LOCK_EX)
            yield dfd  # closing the fd releases the lock

    @staticmethod
    def _read(dfd: int, name: str) -> dict[str, Any]:
        raw = hostfs.read_file(dfd, name)
        try:
            data = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = {}  # pimagic's own bookkeeping, unreadable: start again rather than fail every cell
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _write(dfd: int, name: str, data: Mapping[str, Any]) -> None:
        hostfs.write_atomic(dfd, name, (json.dumps(data, indent=1) + "\n").encode("utf-8"), mode=0o600)

    # --- a named conversation (no notebook file known: PIMAGIC_CONVERSATION, terminal IPython) ---

    def claim_key(self, key: str) -> Claim:
        with self._locked() as dfd:
            sid = self._read(dfd, f"{key}.json").get("session_id")
            if isinstance(sid, str) and sid:
                return Claim(sid, "key")
            sid = new_session_id(key)
            self._write(dfd, f"{key}.json", {"session_id": sid})
            return Claim(sid)

    def save_key(self, key: str, session_id: str) -> None:
        with self._locked() as dfd:
            self._write(dfd, f"{key}.json", {"session_id": session_id})

    # --- a notebook ---------------------------------------------------------------------------------

    def claim(self, notebook: Notebook, *, search: tuple[str, ...] = ()) -> Claim:
        """The notebook's conversation (a new one when it has none), recorded under its file and
        path. `search`: folders whose trees may hold a notebook moved away from this path."""
        with self._locked() as dfd:
            index = self._read(dfd, INDEX_FILE)
            files, paths = _table(index, "files"), _table(index, "paths")
            claim = _lookup(files, paths, notebook, search) or self._legacy(dfd, notebook)
            if claim is None:
                claim = Claim(new_session_id("nb"))
            _record(files, paths, notebook, claim.session_id)
            self._write(dfd, INDEX_FILE, {"version": 1, "files": files, "paths": paths})
            return claim

    def save(self, notebook: Notebook, session_id: str) -> None:
        """The notebook now continues `session_id` (`%pi new`)."""
        with self._locked() as dfd:
            index = self._read(dfd, INDEX_FILE)
            files, paths = _table(index, "files"), _table(index, "paths")
            _record(files, paths, notebook, session_id)
            self._write(dfd, INDEX_FILE, {"version": 1, "files": files, "paths": paths})

    def _legacy(self, dfd: int, notebook: Notebook) -> Claim | None:
        """A conversation an older pimagic kept under the notebook's name: taken over once (the file
        goes, so a later notebook of that name does not continue it too)."""
        name = f"{slug(LEGACY_PREFIX + notebook.label)}.json"
        try:
            sid = self._read(dfd, name).get("session_id")
        except hostfs.HostFileError:
            return None
        if not isinstance(sid, str) or not sid:
            return None
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dfd)
        return Claim(sid, "legacy")


def _table(index: Mapping[str, Any], name: str) -> dict[str, dict[str, Any]]:
    table = index.get(name)
    if not isinstance(table, dict):
        return {}
    return {k: v for k, v in table.items() if isinstance(k, str) and isinstance(v, dict)}


def _file_of(record: Mapping[str, Any], key: str) -> FileId | None:
    try:
        dev, ino = (int(x) for x in key.split(":"))
    except ValueError:
        return None
    birth = record.get("birth")
    return FileId(dev, ino, birth if isinstance(birth, int) else None)


def _lookup(
    files: dict[str, dict[str, Any]], paths: dict[str, dict[str, Any]], nb: Notebook, search: tuple[str, ...] = (),
) -> Claim | None:
    if nb.file is not None:
        record = files.get(nb.file.key)
        known = _file_of(record, nb.file.key) if record else None
        if record and known is not None and known.same_file(nb.file) and isinstance(record.get("session"), str):
            return Claim(record["session"], "file")  # the same file, under this name or another
        if record:
            files.pop(nb.file.key)  # a deleted notebook's inode number, reused: forget that record
    record = paths.get(nb.path)
    if not record or not isinstance(record.get("session"), str):
        return None
    old_key = record.get("file")
    old = _file_of(files.get(old_key) or {}, old_key) if isinstance(old_key, str) else None
    if old is not None and nb.file is not None and old.same_file(nb.file):
        return Claim(record["session"], "path")
    if old is not None and nb.file is not None:
        # Another file at this path. Its old file still living elsewhere means it was renamed or
        # moved away, and this is a new notebook at the old name: the old one keeps the conversation.
        # (No file at the path at all: a kernel whose name went stale, the same notebook's.)
        last = (files.get(old_key) or {}).get("path")
        folders = [os.path.dirname(nb.path)] + ([os.path.dirname(last)] if isinstance(last, str) else [])
        if lives_in(old, folders, list(search)):
            return None
    return Claim(record["session"], "path")


def _record(files: dict[str, dict[str, Any]], paths: dict[str, dict[str, Any]], nb: Notebook, sid: str) -> None:
    now = int(time.time())
    if nb.file is not None:
        files[nb.file.key] = {"session": sid, "birth": nb.file.birth, "path": nb.path, "seen": now}
    paths[nb.path] = {"session": sid, "file": nb.file.key if nb.file else None, "seen": now}
    for table in (files, paths):
        if len(table) > MAX_RECORDS:
            oldest = sorted(table, key=lambda k: table[k].get("seen") if isinstance(table[k].get("seen"), int) else 0)
            for key in oldest[: len(table) - MAX_RECORDS]:
                del table[key]


# --- what the first cell of a kernel says ---------------------------------------------------------

_START = {
    "created": "sandbox started",
    "replaced": "started a new sandbox",
    "joined": "joined the running sandbox",
}


def prompts_text(prompts: int | None) -> str:
    """"3 prompts" (the turns the user sent, not pi's message count)."""
    if prompts is None:
        return "prompts unknown"
    return f"{prompts} prompt{'' if prompts == 1 else 's'}"


def greeting(action: str | None, claim: Claim | None, prompts: int | None, *, kind: str = "notebook") -> str:
    """One line for the first `%%pi` output of a kernel: what the start did to the sandbox (the
    StartReport's action, once per kernel) and whether the conversation continues. `kind`:
    "notebook" (found by its file), "named" (PIMAGIC_CONVERSATION) or "kernel" (no notebook known:
    this process only). `claim` None: nothing about the conversation (the cell starts afresh)."""
    parts = [_START[action]] if action in _START else []
    if claim is not None:
        whose = "this notebook's conversation" if kind == "notebook" else f"conversation {claim.session_id}"
        if prompts:
            plural = "" if prompts == 1 else "s"
            parts.append(f"continuing {whose}: {prompts} earlier prompt{plural} (`%pi new` starts fresh)")
        elif prompts is None and claim.found is not None:
            parts.append(f"continuing {whose} (`%pi new` starts fresh)")
        elif kind == "notebook":
            parts.append("new conversation for this notebook (its next kernels continue it, also after a rename)")
        elif kind == "named":
            parts.append(f"new conversation {claim.session_id}")
        else:
            parts.append("new conversation for this kernel (no notebook file is known, so the next kernel "
                         "starts another)")
    return "; ".join(parts)
