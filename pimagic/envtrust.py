"""May pimagic load the workspace's `.env`? The sandbox can write the workspace, so a `.env`
is the user's only when the host can vouch for it. No Docker here: pure decisions plus one
host-only state file.

The host records, per folder, the windows during which a sandbox could write the workspace
(opened when `Sandbox.start` creates or joins a container, closed when pimagic sees it stopped
or gone). A `.env` is trusted when its ctime (which no process can set; rename and link update it)
lies outside every window, or when the user accepted its exact content (`trust-env`: a hash ledger).
A host action on an agent-made inode after a window (unlinking a second hard link, a chmod) renews
its ctime without making it the user's: so a `.env` with several links is refused, and the content of
a `.env` that changed inside a window is remembered as suspect when the window closes.
The state lives beside pi's data dir, never inside anything mounted into the sandbox.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError

ENV_MAX_BYTES = 64 * 1024  # a settings file, not a data file: a larger one is refused unread
STATE_MAX_BYTES = 1024 * 1024
STATE_FILE = "env-trust.json"
SLACK = 2.0  # seconds around each window: clock granularity and the engine's timestamps
MAX_WINDOWS = 512  # older windows are merged into one span (conservative: it only grows)
MAX_ACCEPTED = 64

# Settings that point host-side actions at host paths, identities or code: where pi's data dir is
# (mounted read-write, chowned), which image runs with the token, which host files are copied into
# the image as trusted CAs. Machine-level, never per-project: never from a workspace `.env`, even a
# trusted one (environment, %config, or an --env-file outside the folder instead).
HOST_ONLY_KEYS = frozenset({"PIMAGIC_PI_DATA_DIR", "PIMAGIC_IMAGE", "PIMAGIC_BASE_IMAGE", "PIMAGIC_EXTRA_CA_CERTS"})

TRUST_COMMAND = "`%pi trust-env` in the notebook or `pimagic trust-env` in a shell"


class _Settings(Protocol):
    @property
    def pi_data_path(self) -> Path: ...

    @property
    def workspace_path(self) -> Path: ...


def state_dir(settings: _Settings) -> Path:
    """pimagic's host-only per-folder dir (beside the mounted pi data dir; see pimagic.piconfig)."""
    from .piconfig import state_dir as folder_state_dir

    return folder_state_dir(settings)


# --- the state file -------------------------------------------------------------------


@dataclass
class Window:
    """A span during which a sandbox (container `container`) could write the workspace."""

    container: str
    start: float
    end: float | None = None  # None: still open (or never observed closed)

    def covers(self, when: float, now: float) -> bool:
        end = self.end if self.end is not None else now
        return self.start - SLACK <= when <= end + SLACK


@dataclass
class TrustState:
    windows: list[Window] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # sha256 of `.env` contents the user accepted
    # sha256 of `.env` contents found, when a window closed, to have changed inside it: a later host
    # action on that inode (unlinking a hard link, chmod) renews its ctime, not its author
    suspect: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any) -> TrustState:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        windows = [
            Window(str(w["container"]), float(w["start"]), None if w.get("end") is None else float(w["end"]))
            for w in data.get("windows", [])
        ]
        return cls(
            windows, [str(h) for h in data.get("accepted", [])], [str(h) for h in data.get("suspect", [])]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "windows": [{"container": w.container, "start": w.start, "end": w.end} for w in self.windows],
            "accepted": self.accepted,
            "suspect": self.suspect,
        }

    def compact(self) -> None:
        if len(self.windows) > MAX_WINDOWS:
            old = self.windows[: len(self.windows) - MAX_WINDOWS + 1]
            ends = [w.end for w in old]
            end = None if None in ends else max(e for e in ends if e is not None)
            merged = Window("merged", min(w.start for w in old), end)
            self.windows = [merged, *self.windows[len(old):]]
        self.accepted = self.accepted[-MAX_ACCEPTED:]
        self.suspect = self.suspect[-MAX_ACCEPTED:]

    def note_suspect(self, env_path: Path | None, now: float) -> None:
        """Remember the content of a `.env` that changed inside a window (called as windows close)."""
        if env_path is None:
            return
        try:
            env = read_env(env_path)
        except ConfigError:
            return  # missing, a symlink, a FIFO...: refused by every later check anyway
        if any(w.covers(env.ctime, now) for w in self.windows) and env.sha256 not in self.suspect:
            self.suspect.append(env.sha256)


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


def load_state(directory: Path) -> TrustState | None:
    """The recorded state, or None when pimagic has recorded nothing for this folder yet."""
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
        hint=f"delete {directory / STATE_FILE}; pimagic then refuses the folder's .env until {TRUST_COMMAND}",
    )


@contextlib.contextmanager
def _locked_state(directory: Path) -> Iterator[TrustState]:
    """Read-modify-write of the state under an exclusive lock (several kernels share a folder)."""
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


# --- recording what the sandbox could do (called by Sandbox) --------------------------------


def parse_engine_time(text: str | None) -> float | None:
    """Docker's RFC 3339 timestamps (nanoseconds, `Z`) as epoch seconds; None when unset."""
    if not text or text.startswith("0001-"):
        return None
    try:
        main, _, frac = text.rstrip("Z").partition(".")
        base = datetime.fromisoformat(main).replace(tzinfo=timezone.utc).timestamp()
        return base + (float("0." + frac) if frac.isdigit() else 0.0)
    except ValueError:
        return None


def record_running(
    directory: Path, container: str, started_at: float | None = None, *, env_path: Path | None = None
) -> None:
    """A sandbox runs (created or joined): open its window. Any other open window belongs to a
    container that is gone (one container per folder): close those now."""
    now = time.time()
    with _locked_state(directory) as state:
        closing = [w for w in state.windows if w.end is None and w.container != container]
        for w in closing:
            w.end = now
        if closing:
            state.note_suspect(env_path, now)
        if not any(w.container == container and w.end is None for w in state.windows):
            state.windows.append(Window(container, min(started_at or now, now)))


def record_stopped(
    directory: Path, container: str | None = None, finished_at: float | None = None, *,
    env_path: Path | None = None,
) -> None:
    """The sandbox stopped or is gone: close its window at the engine's FinishedAt when known,
    every other open window (and it, when the time is unknown) at now. `env_path`: the folder's
    `.env`, whose content is remembered as suspect when it changed inside a window."""
    now = time.time()
    if not os.path.isdir(directory):
        return  # nothing was ever recorded for this folder, so nothing is open
    with _locked_state(directory) as state:
        for w in state.windows:
            if w.end is None and w.container == container and finished_at is not None:
                w.end = max(w.start, min(finished_at, now))
            elif w.end is None:
                w.end = now
        state.note_suspect(env_path, now)


def has_open_window(directory: Path) -> bool:
    """True when a recorded window is still open (its container may since have stopped unseen)."""
    try:
        state = load_state(directory)
    except ConfigError:
        return False
    return state is not None and any(w.end is None for w in state.windows)


def accept(directory: Path, data: bytes) -> str:
    """The user vouches for this exact `.env` content; returns its hash."""
    digest = hashlib.sha256(data).hexdigest()
    with _locked_state(directory) as state:
        if digest not in state.accepted:
            state.accepted.append(digest)
    return digest


# --- the decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvFile:
    path: Path
    data: bytes
    ctime: float
    nlink: int = 1

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Verdict:
    path: Path
    trusted: bool
    reason: str  # why not (empty when trusted)
    env: EnvFile | None = None  # the bytes the verdict is about (None: not a readable regular file)


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
    return EnvFile(path, data, st.st_ctime_ns / 1e9, st.st_nlink)


def decide(env: EnvFile, state: TrustState | None, *, history_unknown: bool, now: float | None = None) -> Verdict:
    """Trusted when the user accepted this content, or it last changed while no sandbox could write."""
    now = time.time() if now is None else now
    if state is not None and env.sha256 in state.accepted:
        return Verdict(env.path, True, "", env)
    if state is not None and env.sha256 in state.suspect:
        return Verdict(env.path, False, "this content was written while a sandbox for this folder could write it", env)
    if env.nlink != 1:  # a hard link made in a window: editing the other name later renews the ctime
        return Verdict(env.path, False, f"it has {env.nlink} hard links (another name can change it)", env)
    if state is None:
        if history_unknown:
            return Verdict(env.path, False, "a sandbox ran for this folder before pimagic recorded when", env)
        return Verdict(env.path, True, "", env)
    for w in state.windows:
        if w.covers(env.ctime, now):
            when = datetime.fromtimestamp(env.ctime).strftime("%Y-%m-%d %H:%M:%S")
            reason = f"it changed at {when}, while a sandbox for this folder could write it"
            return Verdict(env.path, False, reason, env)
    return Verdict(env.path, True, "", env)


def check(path: Path, settings: _Settings) -> Verdict:
    """The verdict on a workspace `.env` (the path must exist, as a name at least)."""
    directory = state_dir(settings)
    if _inside(directory, settings.workspace_path):
        return Verdict(path, False, f"pimagic's records for this folder ({directory}) are inside the folder")
    if os.path.realpath(path) != os.path.abspath(path):
        return Verdict(path, False, "it is reached through a symlink (not followed)")
    try:
        env = read_env(path)
    except ConfigError as e:
        return Verdict(path, False, e.message.removeprefix("invalid setting "))
    try:
        state = load_state(directory)
    except ConfigError as e:  # host-only, so not the agent's doing; still: vouch for nothing
        return Verdict(path, False, f"{e.message.removeprefix('invalid setting ')} ({e.hint})", env)
    return decide(env, state, history_unknown=os.path.lexists(settings.pi_data_path))


def _inside(path: Path, root: Path) -> bool:
    for candidate in {Path(os.path.abspath(path)), Path(os.path.realpath(path))}:
        if candidate == root or candidate.is_relative_to(root) or candidate.is_relative_to(root.resolve()):
            return True
    return False


def in_workspace(path: Path, workspace: Path) -> bool:
    """True when `path` (as given or resolved) lies in the workspace: the sandbox may have written it."""
    return _inside(path, workspace)


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
        f"ignored {', '.join(keys)} in {path}: host-only settings never come from a file in the "
        "workspace (the sandbox can write there); set them in the environment, with %config, "
        "or in an --env-file outside the folder"
    )
