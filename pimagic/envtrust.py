"""May pimagic load a settings file (`.env`, `--env-file`)? A sandbox can write its folder and
everything below it, so a file there is the user's only when the host can vouch for it. No Docker
here: pure decisions plus one host-only state file for the whole machine user.

The host records every write window: the container, the mounted folder's path AND its
(st_dev, st_ino), start, end (opened when `Sandbox.start` creates or joins a container, closed by
container id when pimagic sees it stopped or gone). A file is refused when a window whose folder is
the file's folder or any ancestor of it (by path, or by inode: a moved tree is still caught) covers
its ctime, which no process can set on a POSIX filesystem (rename and link update it). When a window
closes, the folder is walked and the content of every `.env`-like file changed inside it is
remembered as suspect: a copy, a restore, a hard link left behind stays refused anywhere, until the
user accepts that content at that path (`trust-env`: a hash ledger). The state lives in pimagic's
data root, never inside anything mounted into a sandbox.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError

ENV_MAX_BYTES = 64 * 1024  # a settings file, not a data file: a larger one is refused unread
STATE_MAX_BYTES = 4 * 1024 * 1024
STATE_FILE = "env-trust.json"
SLACK = 2.0  # seconds around each window: clock granularity and the engine's timestamps
MAX_WINDOWS = 512  # older closed windows are merged into one span over "/" (conservative)
MAX_ACCEPTED = 256
MAX_SUSPECT = 16384  # oldest dropped: flushing it takes hundreds of capped windows
WALK_MAX_SUSPECT = 64  # new suspects per window; past it the window is incomplete (see `decide`)
WALK_MAX_ENTRIES = 200_000  # a window's folder walk stops here (and at WALK_MAX_SECONDS) ...
WALK_MAX_SECONDS = 20.0  # ... and the window is then marked incomplete (see `decide`)
MAX_SYMLINK_HOPS = 40
# Filesystems where a file's ctime follows its mtime, which the owner (the agent: it runs as the
# user's uid) sets with utimensat: there only accepted contents load.
CTIME_UNRELIABLE = frozenset({"vfat", "msdos", "fat", "exfat", "ntfs", "ntfs3", "fuseblk", "9p", "drvfs", "v9fs"})

# Settings that point host-side actions at host paths, identities or code: where pi's data dir is
# (mounted read-write, chowned), which image runs with the token, which host files are copied into
# the image as trusted CAs. Machine-level, never per-project: never from a file a sandbox can write,
# even a trusted one (environment, %config, or an --env-file outside every sandbox's folder instead).
HOST_ONLY_KEYS = frozenset({"PIMAGIC_PI_DATA_DIR", "PIMAGIC_IMAGE", "PIMAGIC_BASE_IMAGE", "PIMAGIC_EXTRA_CA_CERTS"})

TRUST_COMMAND = "`%pi trust-env` in the notebook or `pimagic trust-env` in a shell"


class _Settings(Protocol):
    @property
    def pi_data_path(self) -> Path: ...

    @property
    def workspace_path(self) -> Path: ...


def state_dir(settings: _Settings | None = None) -> Path:
    """Where the machine-wide trust state lives: pimagic's data root (never mounted anywhere)."""
    from .config import pimagic_data_root

    return pimagic_data_root()


def is_env_name(name: str) -> bool:
    """`.env`, `.env.*` (`.env.example` too: a user's `cp .env.example .env`) and `*.env`."""
    return name == ".env" or name.startswith(".env.") or name.endswith(".env")


# --- the state file -------------------------------------------------------------------


@dataclass
class Window:
    """A span during which container `container` could write `folder` (and all below it)."""

    container: str
    start: float
    end: float | None = None  # None: still open (or never observed closed)
    folder: str = "/"
    dev: int = -1
    ino: int = -1
    complete: bool = True  # False: the walk at close hit its bound (or the folder had moved)

    def covers(self, when: float, now: float) -> bool:
        end = self.end if self.end is not None else now
        return self.start - SLACK <= when <= end + SLACK

    def over(self, chain: list[Dir]) -> bool:
        """The window's folder is one of `chain` (a file's folder and its ancestors)."""
        return any(d.path == self.folder or (d.dev, d.ino) == (self.dev, self.ino) for d in chain)

    def to_json(self) -> dict[str, Any]:
        return {"container": self.container, "start": self.start, "end": self.end, "folder": self.folder,
                "dev": self.dev, "ino": self.ino, "complete": self.complete}

    @classmethod
    def from_json(cls, w: Any) -> Window:
        end = None if w.get("end") is None else float(w["end"])
        return cls(str(w["container"]), float(w["start"]), end, str(w.get("folder", "/")),
                   int(w.get("dev", -1)), int(w.get("ino", -1)), bool(w.get("complete", True)))


@dataclass
class TrustState:
    windows: list[Window] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # "sha256 path": the user vouched for it there
    # sha256 of `.env`-like contents found, when a window closed, to have changed inside it: refused
    # wherever they appear later (a copy, a restore, a hard link the user unlinks), until accepted
    suspect: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any) -> TrustState:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return cls(
            [Window.from_json(w) for w in data.get("windows", [])],
            [str(h) for h in data.get("accepted", [])], [str(h) for h in data.get("suspect", [])],
        )

    def to_json(self) -> dict[str, Any]:
        return {"windows": [w.to_json() for w in self.windows], "accepted": self.accepted, "suspect": self.suspect}

    def compact(self) -> None:
        closed = [w for w in self.windows if w.end is not None]
        if len(self.windows) > MAX_WINDOWS and len(closed) > 1:
            old = closed[: len(self.windows) - MAX_WINDOWS + 1]
            merged = Window("merged", min(w.start for w in old), max(w.end or 0.0 for w in old), "/",
                            complete=all(w.complete for w in old))
            self.windows = [merged, *(w for w in self.windows if w not in old)]
        self.accepted = self.accepted[-MAX_ACCEPTED:]
        self.suspect = self.suspect[-MAX_SUSPECT:]


def _read_regular(path: Path, limit: int, *, dir_fd: int | None = None) -> tuple[bytes, os.stat_result]:
    """Bytes of a regular file, never through a symlink, never blocking on a FIFO, bounded."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular(path)
        if st.st_size > limit:
            raise _TooLarge(path)
        chunks, size = [], 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:  # grew while we read
                raise _TooLarge(path)
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


class _NotRegular(OSError):
    pass


class _TooLarge(OSError):
    pass


def load_state(directory: Path | None = None) -> TrustState | None:
    """The recorded state, or None when pimagic has recorded nothing yet."""
    directory = directory or state_dir()
    try:
        data, _ = _read_regular(directory / STATE_FILE, STATE_MAX_BYTES)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _state_error(directory, f"cannot read it ({e.strerror or type(e).__name__})") from None
    try:
        return TrustState.from_json(json.loads(data))
    except (ValueError, KeyError, TypeError) as e:
        raise _state_error(directory, f"it is damaged ({e})") from None


def _state_error(directory: Path, reason: str) -> ConfigError:
    return ConfigError(
        str(directory / STATE_FILE), None, reason,
        hint=f"delete {directory / STATE_FILE}; pimagic then refuses every `.env` a sandbox could have "
        f"written until {TRUST_COMMAND}",
    )


@contextlib.contextmanager
def _locked_state(directory: Path | None = None) -> Iterator[TrustState]:
    """Read-modify-write of the state under an exclusive lock (every kernel of the user shares it)."""
    directory = directory or state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(directory / f"{STATE_FILE}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load_state(directory)
        if state is None:
            state = TrustState()
        before = json.dumps(state.to_json())
        yield state
        state.compact()
        if json.dumps(state.to_json()) != before:
            _write_state(directory, state)
    finally:
        os.close(lock)


def _write_state(directory: Path, state: TrustState) -> None:
    tmp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state.to_json(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / STATE_FILE)


# --- recording what a sandbox could do (called by Sandbox) --------------------------------

_ENGINE_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_engine_time(text: str | None) -> float | None:
    """Docker's RFC 3339 timestamps (nanoseconds, `Z` or an offset) as epoch seconds; None when unset."""
    match = _ENGINE_TIME.match(text or "")
    if not match or text.startswith("0001-"):  # type: ignore[union-attr]
        return None
    main, frac, zone = match.groups()
    try:
        base = datetime.fromisoformat(main).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        base -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])).total_seconds()
    return base + (float("0." + frac) if frac else 0.0)


def record_running(container: str, folder: Path, started_at: float | None = None,
                   directory: Path | None = None) -> None:
    """A sandbox for `folder` runs (created or joined): open its window (once per container)."""
    now = time.time()
    st = os.stat(folder)  # the user's chosen folder (resolved), mounted by inode
    with _locked_state(directory) as state:
        if not any(w.container == container and w.end is None for w in state.windows):
            start = now if started_at is None else min(started_at, now)
            state.windows.append(Window(container, start, None, str(folder), st.st_dev, st.st_ino))


def record_stopped(container: str, finished_at: float | None = None, directory: Path | None = None) -> None:
    """Container `container` stopped or is gone: close its window (only its own) at `finished_at`
    (host clock; None: now), then remember the suspect contents of its folder."""
    now = time.time()
    if not (directory or state_dir()).is_dir():
        return  # nothing was ever recorded, so nothing is open
    with _locked_state(directory) as state:
        for w in state.windows:
            if w.end is None and w.container == container:
                w.end = now if finished_at is None else max(w.start, min(finished_at, now))
                w.complete = _note_suspects(state, w, now)


def open_windows(directory: Path | None = None) -> list[Window]:
    """Windows still open (their container may since have stopped unseen)."""
    try:
        state = load_state(directory)
    except ConfigError:
        return []
    return [w for w in state.windows if w.end is None] if state is not None else []


def accept(path: Path, data: bytes, directory: Path | None = None) -> str:
    """The user vouches for this exact content at this path; returns its hash."""
    digest = hashlib.sha256(data).hexdigest()
    entry = f"{digest} {path}"
    with _locked_state(directory) as state:
        if entry not in state.accepted:
            state.accepted.append(entry)
    return digest


def _note_suspects(state: TrustState, window: Window, now: float) -> bool:
    """Hash every `.env`-like file under the window's folder that changed inside a window (all of
    them where ctime is unreliable), never following a symlink, skipping `.git`. False when the
    walk was cut short or the folder is no longer the mounted one."""
    try:
        st = os.lstat(window.folder)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != (window.dev, window.ino):
        return False  # moved or replaced: the ctime rule (by inode) still holds in place
    unreliable = filesystem_type(Path(window.folder)) in CTIME_UNRELIABLE
    deadline, seen, added, todo = time.monotonic() + WALK_MAX_SECONDS, 0, 0, [window.folder]
    while todo:
        try:
            with os.scandir(todo.pop()) as found:  # lazily: a huge directory counts against the bound
                for entry in found:
                    seen += 1
                    if seen > WALK_MAX_ENTRIES or time.monotonic() > deadline:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name != ".git":
                            todo.append(entry.path)
                    elif is_env_name(entry.name) and entry.is_file(follow_symlinks=False):
                        added += _note_one(state, Path(entry.path), unreliable, now)
                        if added > WALK_MAX_SUSPECT:  # an agent flooding the ledger to push old entries out
                            return False
        except OSError:
            continue
    return True


def _note_one(state: TrustState, path: Path, unreliable: bool, now: float) -> bool:
    """True when `path`'s content became suspect."""
    try:
        env = read_env(path)
    except ConfigError:
        return False  # a FIFO, too large...: refused by every later check anyway
    above = [w for w in state.windows if path.is_relative_to(w.folder)]
    changed = unreliable or env.nlink != 1 or any(w.covers(env.ctime, now) for w in above)
    accepted = f"{env.sha256} {path}" in state.accepted
    if changed and not accepted and env.sha256 not in state.suspect:
        state.suspect.append(env.sha256)
        return True
    return False



# --- where a file really is ---------------------------------------------------------------------


@dataclass(frozen=True)
class Dir:
    path: str
    dev: int
    ino: int


class _Refused(Exception):
    pass


def locate(path: Path, writable: list[Window], workspace: Path) -> tuple[list[Dir], Path]:
    """The physical folder chain ("/" .. the file's folder) and physical path of `path`, found one
    component at a time with lstat: a symlink outside every sandbox-writable folder (the user's own)
    is followed by hand, one inside one is refused unresolved (no realpath: no automount, no FIFO)."""
    parts = list(Path(os.path.abspath(path)).parts[1:])
    root = os.lstat("/")
    chain, hops = [Dir("/", root.st_dev, root.st_ino)], 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if len(chain) > 1:
                chain.pop()
            continue
        nxt = os.path.join(chain[-1].path, part)
        st = os.lstat(nxt)
        if stat.S_ISLNK(st.st_mode):
            if _writable(chain, writable, workspace):
                raise _Refused(f"it is reached through a symlink ({nxt}) a sandbox could have made (not followed)")
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise _Refused("too many symlinks")
            target = os.readlink(nxt)
            if os.path.isabs(target):
                chain = chain[:1]
            parts = [*Path(target).parts[(1 if os.path.isabs(target) else 0):], *parts]
            continue
        if parts:
            if not stat.S_ISDIR(st.st_mode):
                raise _Refused(f"{nxt} is not a directory")
            chain.append(Dir(nxt, st.st_dev, st.st_ino))
        else:
            return chain, Path(nxt)
    raise _Refused("it is not a file")


def _writable(chain: list[Dir], windows: list[Window], workspace: Path) -> bool:
    return any(d.path == str(workspace) for d in chain) or any(w.over(chain) for w in windows)


_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


def filesystem_type(folder: Path, mountinfo: str | None = None) -> str | None:
    """The filesystem type of the mount holding `folder` (longest mount-point prefix in
    /proc/self/mountinfo); None where that cannot be read (not Linux)."""
    try:
        lines = (mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()).splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = _MOUNTINFO_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), parts[4])
        inside = str(folder) == point or str(folder).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, rest.split()[0]
    return kind


# --- the decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvFile:
    path: Path
    data: bytes
    ctime: float
    nlink: int = 1
    mtime: float = 0.0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Verdict:
    path: Path
    trusted: bool
    reason: str  # why not (empty when trusted)
    env: EnvFile | None = None  # the bytes the verdict is about (None: not a readable regular file)
    writable: bool = True  # a sandbox could write it (False: the user's own file, all keys load)
    missing: bool = False  # no such file (found without following a sandbox's symlink)


def read_env(path: Path) -> EnvFile:
    """The `.env` as a regular file read without following a symlink; ConfigError otherwise."""
    try:
        data, st = _read_regular(path, ENV_MAX_BYTES)
    except _NotRegular:
        raise ConfigError(str(path), None, "not a regular file (a FIFO, device or directory)") from None
    except _TooLarge:
        raise ConfigError(str(path), None, f"larger than {ENV_MAX_BYTES // 1024} KiB") from None
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise ConfigError(str(path), None, "a symlink (not followed)") from None
        raise ConfigError(str(path), None, e.strerror or str(e)) from None
    return EnvFile(path, data, st.st_ctime_ns / 1e9, st.st_nlink, st.st_mtime_ns / 1e9)


def decide(env: EnvFile, state: TrustState | None, *, history_unknown: bool, now: float | None = None,
           chain: list[Dir] | None = None, fs_type: str | None = None) -> Verdict:
    """Trusted when the user accepted this content here, or it last changed while no sandbox could
    write its folder (nor any folder above it). `chain`: the file's folders (None: every window)."""
    now = time.time() if now is None else now
    if state is not None and f"{env.sha256} {env.path}" in state.accepted:
        return Verdict(env.path, True, "", env)
    if state is not None and env.sha256 in state.suspect:
        return Verdict(env.path, False, "this content was written while a sandbox could write where it was", env)
    if fs_type in CTIME_UNRELIABLE:
        reason = (f"it is on a {fs_type} filesystem, where a file's owner (the agent too) can set its change "
                  "time, so only contents you accepted load")
        return Verdict(env.path, False, reason, env)
    if env.nlink != 1:  # a hard link made in a window: editing the other name later renews the ctime
        return Verdict(env.path, False, f"it has {env.nlink} hard links (another name can change it)", env)
    windows = [w for w in (state.windows if state else []) if chain is None or w.over(chain)]
    for w in windows:
        if w.covers(env.ctime, now):
            when = datetime.fromtimestamp(env.ctime).strftime("%Y-%m-%d %H:%M:%S")
            return Verdict(env.path, False, f"it changed at {when}, while a sandbox for {w.folder} could write it", env)
        if not w.complete and w.covers(env.mtime, now):  # a copy (cp -a, rsync -a) of an unwalked window's file
            return Verdict(env.path, False, f"it was modified while a sandbox for {w.folder} could write it", env)
    if history_unknown:
        return Verdict(env.path, False, "a sandbox ran for this folder before pimagic recorded when", env)
    return Verdict(env.path, True, "", env)


def check(path: Path, settings: _Settings) -> Verdict:
    """The verdict on a settings file (the path must exist, as a name at least)."""
    directory, workspace = state_dir(), settings.workspace_path
    try:
        state = load_state(directory)
    except ConfigError as e:  # host-only, so not the agent's doing; still: vouch for nothing
        return Verdict(path, False, f"{e.message.removeprefix('invalid setting ')} ({e.hint})")
    windows = state.windows if state else []
    try:
        chain, real = locate(path, windows, workspace)
    except _Refused as e:
        return Verdict(path, False, str(e))
    except FileNotFoundError:
        return Verdict(path, False, "no such file", missing=True)
    except OSError as e:
        return Verdict(path, False, e.strerror or str(e))
    if not _writable(chain, windows, workspace):
        try:
            return Verdict(path, True, "", read_env(real), writable=False)
        except ConfigError as e:
            return Verdict(path, False, e.message.removeprefix("invalid setting "), writable=False)
    if _inside(directory, workspace):
        return Verdict(path, False, f"pimagic's records ({directory}) are inside the folder")
    try:
        env = read_env(real)
    except ConfigError as e:
        return Verdict(path, False, e.message.removeprefix("invalid setting "))
    history = _history_unknown(chain, windows, settings)
    return decide(env, state, history_unknown=history, chain=chain, fs_type=filesystem_type(Path(chain[-1].path)))


def _history_unknown(chain: list[Dir], windows: list[Window], settings: _Settings) -> bool:
    """A folder on the chain has pi data (a sandbox ran there) but no recorded window."""
    from .config import pimagic_data_root

    recorded = {w.folder for w in windows}
    workspaces = pimagic_data_root() / "workspaces"
    for d in chain:
        if d.path in recorded:
            continue
        name = Path(d.path).name
        digest = hashlib.sha256(d.path.encode()).hexdigest()[:12]
        if os.path.lexists(workspaces / f"{name}-{digest}" / "agent"):
            return True
        if d.path == str(settings.workspace_path) and os.path.lexists(settings.pi_data_path):
            return True
    return False


def _inside(path: Path, root: Path) -> bool:
    for candidate in {Path(os.path.abspath(path)), Path(os.path.realpath(path))}:
        if candidate == root or candidate.is_relative_to(root) or candidate.is_relative_to(root.resolve()):
            return True
    return False


def in_workspace(path: Path, workspace: Path) -> bool:
    """True when `path` lies lexically in the workspace (never resolved: the agent's symlinks)."""
    return Path(os.path.abspath(path)).is_relative_to(workspace)


def refusal_note(verdict: Verdict, keys: list[str] | None) -> str:
    """What the cell says: the file, why, the key names (never values) and how to accept it."""
    named = f" It would set {', '.join(keys)}." if keys else ""
    accept_hint = f" If you wrote it, review it, then run {TRUST_COMMAND}." if verdict.env is not None else ""
    return (
        f"did not load {verdict.path}: {verdict.reason}; the agent may have written it.{named} "
        f"Settings come from the environment and %config only.{accept_hint}"
    )


def host_only_note(path: Path, keys: list[str]) -> str:
    return (
        f"ignored {', '.join(keys)} in {path}: host-only settings never come from a file a sandbox can "
        "write; set them in the environment, with %config, or in an --env-file outside every sandbox's folder"
    )
