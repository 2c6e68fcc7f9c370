"""The one view of the workspace folder: what a turn changed (and which of those files the host
may run), which files are secrets to mask, which paths are mounted read-only, and disarming
(`.git/hooks` made present so a read-only mount covers it). Filesystem reads only, except
`disarm`; no Docker. The agent is hostile: anything it writes that the host could execute is
named after each cell, and no symlink it plants is followed or mounted."""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Never walked, by the change snapshot nor the secret search: generated trees that hold neither
# your secrets nor what the host runs on its own, and can be huge (a walk bounded at _MAX_FILES
# would spend its budget there and miss real changes). The union of the two lists this replaces,
# minus `.git`, `.venv` and `venv`: the agent can write `.git/modules/*/config`, `.git/worktrees/`
# and a virtualenv created after the start, and the host runs those, so the change report walks them.
SKIP_DIRS = frozenset(
    {"node_modules", "__pycache__", ".ipynb_checkpoints", ".tox", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
)
_GIT_BULK = {"objects", "logs", "lfs"}  # inside .git: many files, never run
# Secret files are the user's, not a tool's: `.git` and virtualenvs hold certificate bundles
# (certifi's cacert.pem) that a mask would empty, and their run-time paths are read-only anyway.
_MASK_SKIP = SKIP_DIRS | {".git", ".venv", "venv"}
_MASK_DEPTH = 4  # secret files deeper than this are not searched for (each one is a mount)
_MAX_FILES = 50_000

# Paths the host may execute or load without the user running them on purpose.
# Anything in a git dir is handled by _in_git_dir, at any depth (a nested repo's config runs on the
# host's `git status` too); these are the paths outside one.
HOST_EXECUTABLE_PATTERNS = (
    ".gitattributes", ".gitmodules", "*.pth", "sitecustomize.py",
    "usercustomize.py", "conftest.py", "setup.py", "pyproject.toml", "Makefile", "makefile", "*.mk",
    ".envrc", ".bashrc", ".profile", ".zshrc", ".bash_profile", ".vscode/*", ".idea/*",
    ".github/workflows/*", ".gitlab-ci.yml", ".pre-commit-config.yaml", "package.json", "*.ipynb",
    ".venv/*", "venv/*", "*/bin/activate*", ".pi/*", "ipython_config.py", ".ipython/*", ".jupyter/*",
    "tox.ini", "noxfile.py", "Dockerfile", "docker-compose.yml", "compose.yaml",
    # IPython and Jupyter read config from the folder they start in: code that runs on the host.
    "jupyter_*_config.py", "jupyter_*_config.json", "ipython_kernel_config.py", ".pythonrc*",
    "pytest.ini", "setup.cfg", ".npmrc", ".yarnrc*", "justfile", "Taskfile.yml", ".direnv/*",
)

# The patterns as two regexes for the snapshot's per-file check: those with a `/` on the path,
# the others on the name (fnmatch's `*` crosses `/`, so `is_host_executable` also tries the path).
_NAME_RE = re.compile("|".join(fnmatch.translate(p) for p in HOST_EXECUTABLE_PATTERNS if "/" not in p))
_PATH_RE = re.compile("|".join(fnmatch.translate(p) for p in HOST_EXECUTABLE_PATTERNS if "/" in p))
# Names that make a folder a bare-looking git dir (see `_bare_git_live`), or live in one.
_BARE_NAMES = frozenset({"HEAD", "config", "config.worktree", "commondir", "gitdir"})


class Snapshot(dict[str, tuple[int, int, int]]):
    """relative path -> (mtime_ns, size, mode). `truncated`: ordinary files past `_MAX_FILES` were
    left out (the files the host may run never are)."""

    truncated: bool = False


def _walk(
    root: Path, max_depth: int | None = None, skip: frozenset[str] = SKIP_DIRS
) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
    """(relative directory prefix ("" or "a/b/"), its non-directory entries) under root, top-down,
    without `skip`, `.git`'s bulk or symlinked directories. Relative paths are built from the
    prefix, not with os.path.relpath: per file, that was most of a cell's cost in a big folder."""
    stack: list[tuple[str, str, int]] = [(str(root), "", 0)]
    while stack:
        path, prefix, depth = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            continue
        files = []
        in_git = _is_git_root(prefix)
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir:
                files.append(entry)
            elif entry.name not in skip and (max_depth is None or depth < max_depth) and not (
                in_git and entry.name in _GIT_BULK
            ):
                stack.append((entry.path, f"{prefix}{entry.name}/", depth + 1))
        yield prefix, files


def _is_git_root(prefix: str) -> bool:
    """`prefix` ("a/.git/", "a/.git/modules/m/", "modules/m/modules/n/" under one) names a git
    dir, whose bulk the walks skip."""
    parts = prefix.rstrip("/").split("/")
    while len(parts) >= 3 and parts[-2] == "modules":
        parts = parts[:-2]
    return parts[-1] == ".git"


# --- change tracking ------------------------------------------------------------------------


def _watched(prefix: str, name: str) -> bool:
    """A path the host may run by its name alone (the executable bit needs a stat): these are
    stat'ed past the bound, so a flood of ordinary files hides none of them."""
    if name == ".git" or (".git" in prefix and _in_git_dir(f"{prefix}{name}".split("/"))):
        return True
    if name in _BARE_NAMES or "/hooks/" in f"/{prefix}" or "/info/" in f"/{prefix}":
        return True
    return bool(_NAME_RE.match(name) or (prefix and _PATH_RE.match(prefix + name)))


def _split(rel: str) -> tuple[str, str]:
    """"a/b/c" -> ("a/b/", "c"): the walk's (prefix, name)."""
    head, _, name = rel.rpartition("/")
    return (f"{head}/" if head else ""), name


def snapshot(root: Path) -> Snapshot:
    """Every file under root (outside SKIP_DIRS), stat'ed: all the ones the host may run by name,
    ordinary ones up to `_MAX_FILES` (then `truncated`). Every folder is listed whatever its size,
    so the agent cannot choose the walk order to push a host-run file past the bound."""
    out = Snapshot()
    ordinary: int | None = None  # counted from the bound on: below it no file needs classifying
    for prefix, entries in _walk(root):
        for entry in entries:
            rel = prefix + entry.name
            if ordinary is None and len(out) >= _MAX_FILES:
                ordinary = sum(1 for r in out if not _watched(*_split(r)))
            if ordinary is not None and not _watched(prefix, entry.name):
                if ordinary >= _MAX_FILES:
                    out.truncated = True
                    continue
                ordinary += 1
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            out[rel] = (st.st_mtime_ns, st.st_size, st.st_mode)
    return out


@dataclass
class Changes:
    created: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    host_executable: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        return sorted(self.created + self.modified)

    def __bool__(self) -> bool:
        return bool(self.created or self.modified or self.deleted)


def complete(snap: Snapshot) -> bool:
    """False when `snapshot` left ordinary files out at its bound: its keys are not the whole folder."""
    return not getattr(snap, "truncated", False)


def bound_note(*snaps: Snapshot) -> str | None:
    """What the cell says when a snapshot was cut at its bound (None when none was)."""
    if all(complete(s) for s in snaps):
        return None
    return (f"more than {_MAX_FILES:,} files: changes to other files are not listed; files your machine may "
            "run are still checked (by name: a new executable bit past the bound is not)")


# What git writes in a git dir during ordinary use and never runs nor reads as settings (below
# `modules/<name>/` and `worktrees/<name>/` too). Everything else in a git dir (config, hooks,
# info, commondir, gitdir, config.worktree, files git may learn to read) is host-executable.
_GIT_INERT = frozenset({
    "index", "index.lock", "HEAD", "ORIG_HEAD", "FETCH_HEAD", "MERGE_HEAD", "MERGE_MSG", "MERGE_MODE",
    "CHERRY_PICK_HEAD", "REVERT_HEAD", "AUTO_MERGE", "COMMIT_EDITMSG", "SQUASH_MSG", "packed-refs",
    "description", "shallow", "refs", "objects", "logs", "lfs", "gc.log", "gitk.cache",
})  # not rebase-merge/rebase-apply/sequencer: their todo files hold `exec` lines `--continue` runs
# In a folder that only looks like a bare git dir (its `HEAD` is a sibling): what git would run.
_GIT_LIVE = frozenset({"config", "config.worktree", "commondir", "gitdir", "hooks", "info", "modules", "worktrees"})


def _in_git_dir(parts: list[str]) -> bool:
    """A file at `parts` is a `.git` file, or a live part of a `.git` dir at any depth."""
    if parts[-1] == ".git":
        return True  # a gitfile: `gitdir: <where git finds config and hooks>`
    if ".git" not in parts[:-1]:
        return False
    rest = parts[len(parts) - 1 - parts[:-1][::-1].index(".git"):]  # after the last `.git` component
    while len(rest) > 2 and rest[0] in ("modules", "worktrees"):
        rest = rest[2:]  # a submodule's or a worktree's own git dir
    return rest[0] not in _GIT_INERT


def is_host_executable(rel: str, mode: int) -> bool:
    """True when the host may run the file: an executable bit, a live part of a git dir (at any
    depth), or a path tools load on their own."""
    if stat.S_ISREG(mode) and mode & 0o111:
        return True
    rel = rel.replace(os.sep, "/")
    parts = rel.split("/")
    if _in_git_dir(parts):
        return True
    name = parts[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in HOST_EXECUTABLE_PATTERNS)


def _bare_git_live(rel: str, after: Snapshot) -> bool:
    """`rel` is a live part (config, hooks...) of a folder whose sibling `HEAD` makes it a git dir
    (`git init --bare`, a `gitdir:` target): git runs its config when a command starts inside."""
    parts = rel.split("/")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in _GIT_LIVE and "/".join([*parts[:i], "HEAD"]) in after:
            return True
    return parts[0] in _GIT_LIVE and "HEAD" in after


_INDEX_CAP = 64 << 20  # a bigger index is not parsed: it is named (fail closed)
_GITLINK = 0o160000


def index_has_gitlink(data: bytes) -> bool:
    """A git index (DIRC, versions 2-4, SHA-1) holds a gitlink entry: a repository the host's
    `git status` recurses into, running its config. Parsed here, never by git on the host.
    Anything that does not parse (SHA-256, damaged, cut) counts as one: fail closed."""
    if len(data) < 12 or data[:4] != b"DIRC":
        return True
    version, count = struct.unpack_from(">II", data, 4)
    if version not in (2, 3, 4):
        return True
    pos = 12
    for _ in range(count):
        if pos + 62 > len(data):
            return True
        mode, = struct.unpack_from(">I", data, pos + 24)
        if mode & 0o170000 == _GITLINK:
            return True
        flags, = struct.unpack_from(">H", data, pos + 60)
        name = pos + 62 + (2 if version >= 3 and flags & 0x4000 else 0)
        if version == 4:  # a varint (how much of the previous name to drop), then the NUL-ended rest
            while name < len(data) and data[name] & 0x80:
                name += 1
            end = data.find(b"\0", name + 1)
            if end < 0:
                return True
            pos = end + 1
        else:  # the NUL-ended name, padded with NULs to a multiple of 8 bytes from the entry's start
            end = data.find(b"\0", name)
            if end < 0:
                return True
            pos += (end - pos + 8) & ~7
    return False


def _read_capped(root: Path, rel: str, cap: int) -> bytes | None:
    """A regular file's bytes, opened component by component with O_NOFOLLOW (no link the agent
    planted is followed); None when it is not one, or bigger than `cap`."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        *dirs, last = rel.split("/")
        for part in dirs:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        nxt = os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        os.close(fd)
        fd = nxt
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
            return None
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read(cap + 1)
        return data if len(data) <= cap else None
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _is_git_index(rel: str) -> bool:
    """`rel` is a git dir's index (`.git/index`, a submodule's or a worktree's)."""
    parts = rel.split("/")
    if parts[-1] != "index" or ".git" not in parts[:-1]:
        return False
    rest = parts[len(parts) - 1 - parts[:-1][::-1].index(".git"):]
    while len(rest) > 2 and rest[0] in ("modules", "worktrees"):
        rest = rest[2:]
    return rest == ["index"]


def _gitlinked_index(root: Path | None, rel: str) -> bool:
    """A changed index that now holds a gitlink (or that cannot be read and parsed)."""
    if root is None or not _is_git_index(rel):
        return False
    data = _read_capped(root, rel, _INDEX_CAP)
    return data is None or index_has_gitlink(data)


def diff(before: Snapshot, after: Snapshot, root: Path | None = None) -> Changes:
    """What changed between two snapshots; `root` lets a changed git index be read for gitlinks."""
    changes = Changes()
    for rel, meta in after.items():
        if rel not in before:
            changes.created.append(rel)
        elif before[rel] != meta:
            changes.modified.append(rel)
    changes.deleted = sorted(set(before) - set(after))
    changes.created.sort()
    changes.modified.sort()
    # A nested repo that appeared (`x/.git/...`, a gitfile `x/.git`) plus a changed index is a
    # gitlink the host's `git status` recurses into: name the index with it.
    nested = any(".git" in r.split("/")[1:] for r in changes.created)
    changes.host_executable = [
        r for r in changes.changed
        if is_host_executable(r, after[r][2]) or _bare_git_live(r, after)
        or (nested and r.split("/")[-2:] == [".git", "index"]) or _gitlinked_index(root, r)
    ]
    return changes


# --- what the sandbox sees: secret masks, read-only paths -------------------------------------


def secret_files(
    root: Path, patterns: Iterable[str], keep_visible: Iterable[str] = (), candidates: Iterable[str] | None = None
) -> list[Path]:
    """Regular files under root whose name matches a secret pattern: mounted over with an empty file.

    `candidates` (paths relative to root, e.g. a snapshot's keys) saves a second walk per cell."""
    # One regex for all patterns, tried on the name first: N fnmatch calls per file were the cost.
    match = re.compile("|".join(fnmatch.translate(p) for p in patterns) or r"(?!)").match
    keep = set(keep_visible)
    if candidates is None:
        candidates = [prefix + e.name for prefix, entries in _walk(root, _MASK_DEPTH, _MASK_SKIP) for e in entries]
    found: list[Path] = []
    for rel in candidates:
        name = rel.rpartition(os.sep)[2]
        if name in keep or not match(name):
            continue
        parts = Path(rel).parts
        if len(parts) > _MASK_DEPTH + 1 or any(p in _MASK_SKIP for p in parts[:-1]):
            continue
        path = root / rel
        if path.is_file() and not path.is_symlink():
            found.append(path)
    return sorted(found)


def git_dir(root: Path) -> Path | None:
    """The workspace's own `.git` directory (not a symlink, not a worktree's `.git` file)."""
    git = root / ".git"
    return git if git.is_dir() and not git.is_symlink() else None


_GIT_DEPTH = _MASK_DEPTH  # nested repositories deeper than this are not searched for
MAX_GIT_DIRS = 32  # git dirs made read-only per start (two mounts each): a flood of repos is capped


def _plain_dir(root: Path, rel: str) -> bool:
    """`root/rel` is a directory reached through no symlink (every component lstat'ed)."""
    path = root
    for part in Path(rel).parts:
        path = path / part
        try:
            if not stat.S_ISDIR(path.lstat().st_mode):
                return False
        except OSError:
            return False
    return True


def _gitfile_target(root: Path, rel: str) -> str | None:
    """The git dir a `.git` file at `rel` names, relative to root, when it is a plain directory
    inside the workspace (None otherwise: outside, nothing of it is ours to mount)."""
    try:
        fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        head = f.read(4097)
    text = head.decode("utf-8", "replace")
    if len(head) > 4096 or not text.startswith("gitdir:"):
        return None
    target = text[len("gitdir:"):].strip()
    where = os.path.normpath(os.path.join(root, os.path.dirname(rel), target))
    inside = os.path.relpath(where, root)
    if inside == "." or inside.startswith(".."):
        return None
    return inside if _plain_dir(root, inside) else None


@dataclass(frozen=True)
class GitDirs:
    """Where git finds config and hooks in the folder: git dirs (relative, "" prefix style
    "a/.git") and `.git` files, found by a depth-bounded walk that follows no symlink."""

    dirs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    capped: int = 0  # how many git dirs were left out over MAX_GIT_DIRS


def find_git_dirs(root: Path) -> GitDirs:
    """Every `.git` directory (and its `modules/*` git dirs) and `.git` file under root, nested
    ones included; a gitfile's target when it is inside the folder. The top-level `.git` first."""
    dirs: list[str] = []
    files: list[str] = []
    stack: list[tuple[str, int]] = [("", 0)]
    while stack:
        rel, depth = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if entry.name == ".git":
                if is_dir:
                    dirs.append(sub)
                    dirs.extend(_module_dirs(root, sub))
                elif is_file:
                    files.append(sub)
                    target = _gitfile_target(root, sub)
                    if target is not None:
                        dirs.append(target)
            elif is_dir and entry.name not in _MASK_SKIP and depth < _GIT_DEPTH:
                stack.append((sub, depth + 1))
    unique = list(dict.fromkeys(dirs))
    unique.sort(key=lambda d: (d != ".git", d.count("/"), d))
    return GitDirs(tuple(unique[:MAX_GIT_DIRS]), tuple(files[:MAX_GIT_DIRS]),
                   max(0, len(unique) - MAX_GIT_DIRS) + max(0, len(files) - MAX_GIT_DIRS))


def _module_dirs(root: Path, git: str) -> list[str]:
    """A git dir's submodule git dirs (`modules/<name>`, one level: each has a HEAD)."""
    try:
        with os.scandir(root / git / "modules") as it:
            names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    return [f"{git}/modules/{n}" for n in names if (root / git / "modules" / n / "HEAD").is_file()]


def read_only_paths(root: Path, gits: GitDirs | None = None) -> list[Path]:
    """Existing workspace paths the host executes or loads by itself, mounted read-only: each git
    dir's `config` and `hooks` (nested ones too), every `.git` file, and the virtualenvs."""
    gits = find_git_dirs(root) if gits is None else gits
    found: list[Path] = []
    for git in gits.dirs:
        if _plain_dir(root, git):
            found += [root / git / "hooks", root / git / "config"]
    found += [root / f for f in gits.files] + [root / ".venv", root / "venv"]
    real = root.resolve()
    return [p for p in found if p.exists() and not p.is_symlink() and p.resolve().is_relative_to(real)]


def disarm(root: Path, gits: GitDirs | None = None) -> None:
    """Make `hooks` exist in every git dir before a start, so its read-only mount leaves the agent
    no hooks folder to create. Each directory is opened component by component with O_NOFOLLOW:
    a symlink planted on the way is never written through."""
    gits = find_git_dirs(root) if gits is None else gits
    for git in gits.dirs:
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # gone, or a link put in its place: the start's folder check refuses it
        try:
            for part in Path(git).parts:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
            os.mkdir("hooks", 0o755, dir_fd=fd)
        except OSError:
            pass  # there already (a dir, or something the mount check refuses), or not a plain dir
        finally:
            os.close(fd)


@dataclass(frozen=True)
class WorkspaceView:
    """What one start mounts of the folder: secret files masked, paths mounted read-only,
    `.git` (its own mount, so it cannot be renamed away from those), and what the user should
    hear about it (git dirs left writable over the cap)."""

    root: Path
    secret_files: tuple[Path, ...] = ()
    read_only: tuple[Path, ...] = ()
    git_dir: Path | None = None
    notes: tuple[str, ...] = ()
    git_id: tuple[int, int] | None = None  # git_dir's (st_dev, st_ino) when the view was built


def view(
    root: Path, patterns: Iterable[str], keep_visible: Iterable[str] = (), candidates: Iterable[str] | None = None
) -> WorkspaceView:
    """The folder as the next start mounts it (reads only; `disarm` first)."""
    gits = find_git_dirs(root)
    notes = ()
    if gits.capped:
        notes = (f"{gits.capped} more git repositories in the folder were left writable (only {MAX_GIT_DIRS} "
                 "get read-only config and hooks); the change report still names what the agent writes there",)
    git = git_dir(root)
    try:
        st = git.lstat() if git is not None else None
    except OSError:
        st = None
    return WorkspaceView(
        root, tuple(secret_files(root, patterns, keep_visible, candidates)), tuple(read_only_paths(root, gits)),
        git, notes, None if st is None else (st.st_dev, st.st_ino),
    )
