"""The folder's host-only state dir: where pi's config lives, out of the sandbox's reach.

A folder's state dir (the parent of `settings.pi_data_path`) holds:

    agent/          pi's agent dir, the ONLY part mounted (read-write): sessions, auth.json
    pi-config/      the host-owned models.json / settings.json (pimagic, the panel and you write these;
                    their content is pimagic.providers' job)
    sandbox-view/   what pi reads: a generated copy (relay URLs substituted), bind-mounted
                    read-only as files over agent/models.json and agent/settings.json
    conversations/, relays.json, empty-mask   host-only bookkeeping

The host never reads or writes inside `agent/` (the agent owns it): it only creates the
directory, and `pimagic clean --reset` removes it without following symlinks. Every read and
write here is symlink-safe (pimagic.hostfs). No Docker here.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hostfs
from .errors import ConfigError

MODELS_FILE = "models.json"
SETTINGS_FILE = "settings.json"
CONFIG_DIR = "pi-config"
VIEW_DIR = "sandbox-view"
AGENT_DIR = "agent"
VIEW_FILES = (MODELS_FILE, SETTINGS_FILE)
TRASH_PREFIX = ".retired-"  # what a reset moved out of the way, deleted after


def state_dir(settings: Any) -> Path:
    return Path(settings.pi_data_path).parent


def config_dir(settings: Any) -> Path:
    """The host-owned pi config (edit models.json here; the sandbox only sees a read-only copy)."""
    return state_dir(settings) / CONFIG_DIR


def view_dir(settings: Any) -> Path:
    return state_dir(settings) / VIEW_DIR


# --- JSON in host-owned dirs ---------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path` ({} when missing). Symlinks, FIFOs, devices and oversize files
    are refused; a broken file is an error, not silently replaced."""
    path = Path(path)
    try:
        with hostfs.opened_dir(path.parent) as dfd:
            raw = hostfs.read_file(dfd, path.name)
    except FileNotFoundError:
        return {}
    if raw is None or not raw.strip():
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise ConfigError(
            str(path), None, f"not valid JSON ({where})",
            hint="fix the file by hand; pimagic will not overwrite it",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "expected a JSON object at the top level")
    return data


def _dump(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic, symlink-safe write of a host-owned file (its dir is created, mode 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with hostfs.opened_dir(path.parent) as dfd:
        hostfs.write_atomic(dfd, path.name, _dump(data), mode=0o600)


# --- the state dir and the sandbox's read-only view ---------------------------------------


@dataclass
class StateDir:
    """What preparing the state dir found (notes for the cell)."""

    path: Path
    notes: list[str] = field(default_factory=list)


def prepare_state(settings: Any) -> StateDir:
    """Create the state dir, the host-owned config and view dirs, and `agent/` (chowned to the
    sandbox's uid on its fd, never recursively). Nothing inside `agent/` is opened."""
    state = state_dir(settings)
    state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    hostfs.make_dir(state)
    out = StateDir(state)
    with hostfs.opened_dir(state) as sfd:
        hostfs.make_dir(AGENT_DIR, dir_fd=sfd, mode=0o700)
        if hostfs.make_dir(CONFIG_DIR, dir_fd=sfd):
            out.notes.extend(_legacy_note(settings, sfd))
        with hostfs.opened_dir(AGENT_DIR, dir_fd=sfd) as afd:
            if os.getuid() == 0:  # root on the host: hand only this one dir to the sandbox's uid
                os.fchown(afd, settings.uid, settings.gid)
            _clear_mount_points(afd, sfd)
        hostfs.make_dir(VIEW_DIR, dir_fd=sfd, mode=0o755)
        with hostfs.opened_dir(VIEW_DIR, dir_fd=sfd) as vfd:
            for name in VIEW_FILES:  # the mount sources must exist before the container starts
                if hostfs.read_file(vfd, name) is None:
                    hostfs.write_in_place(vfd, name, b"{}\n")
    left = empty_trash(state)
    if left:
        out.notes.append(f"could not delete {', '.join(left)} (no longer used by the sandbox): remove it by hand")
    return out


def _clear_mount_points(afd: int, sfd: int) -> None:
    """The view is mounted over agent/models.json and agent/settings.json. No container runs now
    (start() removed it), so nothing races: a symlink or directory the agent left at those names
    (which would move or fail the mount) is moved to the host-only trash, never followed or walked
    here (a directory may be made too deep to walk); files are left alone."""
    import stat

    for name in VIEW_FILES:
        try:
            st = os.stat(name, dir_fd=afd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            os.rename(name, f"{TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}", src_dir_fd=afd, dst_dir_fd=sfd)


def _legacy_note(settings: Any, sfd: int) -> list[str]:
    """An older pimagic kept pi's config inside agent/, where the agent can write: never imported."""
    found = []
    for name in VIEW_FILES:
        try:
            os.stat(f"{AGENT_DIR}/{name}", dir_fd=sfd, follow_symlinks=False)
            found.append(name)
        except OSError:
            pass
    if not found:
        return []
    return [
        f"pi's {' and '.join(found)} now live in {config_dir(settings)} (host-only); the old copies in "
        f"{settings.pi_data_path} were not imported because the agent could write them. "
        "Copy what you need by hand after checking it."
    ]


def write_view(settings: Any, models: Mapping[str, Any], pi_settings: Mapping[str, Any]) -> None:
    """Update the sandbox's read-only copies in place (same inode: a running container sees them)."""
    vdir = view_dir(settings)
    vdir.mkdir(parents=True, exist_ok=True, mode=0o755)
    with hostfs.opened_dir(vdir) as vfd:
        for name, data in ((MODELS_FILE, models), (SETTINGS_FILE, pi_settings)):
            payload = _dump(data)
            if hostfs.read_file(vfd, name) != payload:
                hostfs.write_in_place(vfd, name, payload, mode=0o644)


def reset_pi_data(settings: Any) -> list[str]:
    """Retire the folder's pi data: `agent/` (sessions, auth.json, and whatever the agent planted:
    extensions, AGENTS.md, skills, symlinks) and the conversation ids that point into it. The host-
    owned config, relays record and view are kept. Returns what went.

    Each is first renamed to a trash name in the host-only state dir, so the reset holds even when
    deleting fails (a tree the agent made too deep to walk, or unreadable): a new, empty `agent/`
    is made at the next start, and the trash is retried then."""
    state = state_dir(settings)
    removed = []
    try:
        sfd = hostfs.open_dir(state)
    except FileNotFoundError:
        return removed
    try:
        for name in (AGENT_DIR, "conversations"):
            try:
                os.rename(name, f"{TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}", src_dir_fd=sfd, dst_dir_fd=sfd)
            except FileNotFoundError:
                continue
            removed.append(str(state / name))
    finally:
        os.close(sfd)
    empty_trash(state)
    return removed


def empty_trash(state: Path) -> list[str]:
    """Delete retired trees in the state dir; returns the ones still left (reported, retried later)."""
    try:
        names = [n for n in os.listdir(state) if n.startswith(TRASH_PREFIX)]
    except FileNotFoundError:
        return []
    return [str(state / n) for n in names if not hostfs.remove_retired_tree(state / n)]
