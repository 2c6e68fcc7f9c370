"""Paranoid mode that sticks: the folder's choice and what the host last pushed, both host-only.

Two small files in the folder's state dir (pimagic.statedir; the sandbox never sees it):

    paranoid.json          the user's deliberate choice: the panel's checkbox or `%pi paranoid on|off`
    paranoid-applied.json  what the host last wrote into which container's root-only policy file

A kernel's setting (the `paranoid` trait) is its own value (`%config`, then the environment, a
trusted `.env`, the IPython configuration: traitlets' usual order) OR the folder's choice: either
saying on wins. Three rules keep it from going off silently:

- `%config PimagicSettings.paranoid = False` (or any non-deliberate set) does not undo the folder's
  choice or an on from the kernel's own sources ("pins"): the value stays on and the cell says how
  to turn it off (the validator in PimagicSettings calls `validate`).
- Only `choose(settings, False, ...)` (unticking, `%pi paranoid off`) records "off"; it is refused
  while the kernel's own sources pin it on, and says which.
- A push never lowers the policy the host last wrote into the running container (or the one it
  replaces) unless a deliberate "off" came after that write: the kernel keeps it on and says so.

The container's current policy is only ever read from `paranoid-applied.json`, never from inside
the container (the agent could fake anything there). No Docker here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import statedir
from .errors import PimagicError

CHOICE_FILE = "paranoid.json"
APPLIED_FILE = "paranoid-applied.json"
OFF_HOW = "`%pi paranoid off` (or untick it in `%pi settings`) turns it off for the folder"


@dataclass(frozen=True)
class Record:
    """One host-written fact: paranoid on/off, who or what set it, when; the container for a push."""

    paranoid: bool
    by: str
    at: float
    container: str | None = None

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at)) if self.at else "an unknown time"

    def chosen(self) -> str:
        """The choice as the user reads it: "chosen for this folder with the settings panel at ..."."""
        return f"chosen for this folder with {self.by} at {self.when()}"


@dataclass
class Tracker:
    """Per settings object: the kernel's own value and what pins it on ("" when nothing does)."""

    own: bool
    pin: str = ""
    busy: int = 0  # a deliberate or synchronising set is under way: the validator lets it through


def _path(settings: Any, name: str) -> Path | None:
    """The record's path; None when the settings name no usable state dir (a bad
    PIMAGIC_PI_DATA_DIR, which refuses every start anyway)."""
    try:
        return statedir.state_dir(settings) / name
    except PimagicError:
        return None


def _read(path: Path) -> Record | None:
    data = statedir.read_json(path)
    if not data:
        return None
    paranoid, by, at = data.get("paranoid"), data.get("by"), data.get("at")
    container = data.get("container")
    if not isinstance(paranoid, bool) or not isinstance(by, str) or not isinstance(at, (int, float)):
        raise PimagicError(f"{path} is not a record pimagic wrote")
    return Record(paranoid, by, float(at), container if isinstance(container, str) else None)


def read_choice(settings: Any) -> Record | None:
    """The folder's deliberate choice, None when never made. A file that cannot be read counts as
    "on" (fail closed): choosing again rewrites it."""
    path = _path(settings, CHOICE_FILE)
    if path is None:
        return None
    try:
        return _read(path)
    except (OSError, PimagicError) as e:
        return Record(True, f"an unreadable {path} ({e}; choosing again rewrites it)", 0.0)


def read_applied(settings: Any) -> Record | None:
    """What the host last wrote into a container's policy file (None: never, or unreadable)."""
    path = _path(settings, APPLIED_FILE)
    try:
        return _read(path) if path is not None else None
    except (OSError, PimagicError):
        return None


def _write(settings: Any, name: str, record: Record) -> None:
    data: dict[str, Any] = {"paranoid": record.paranoid, "by": record.by, "at": record.at}
    if record.container is not None:
        data["container"] = record.container
    statedir.write_json(statedir.state_dir(settings) / name, data)


# --- the kernel's setting --------------------------------------------------------------------


def tracker(settings: Any) -> Tracker | None:
    return getattr(settings, "_paranoid_tracker", None)


def track(settings: Any, pin: str = "") -> Tracker:
    """Start applying the rules to `settings` (idempotent): its current value is its own, and the
    folder's choice is adopted. `pin`: the source outside the notebook that set it on (the
    environment, a `.env`), which a deliberate "off" cannot override."""
    t = tracker(settings)
    if t is None:
        t = Tracker(own=bool(settings.paranoid), pin=pin if settings.paranoid else "")
        settings._paranoid_tracker = t
        sync(settings)
    return t


@contextlib.contextmanager
def _busy(t: Tracker) -> Iterator[None]:
    t.busy += 1
    try:
        yield
    finally:
        t.busy -= 1


def is_busy(settings: Any) -> bool:
    """A deliberate or synchronising change: whoever made it pushes the policy itself."""
    t = tracker(settings)
    return t is not None and t.busy > 0


def validate(settings: Any, value: bool) -> bool:
    """The trait's validator: a non-deliberate "off" keeps paranoid mode on while the folder's
    choice or a pin says on (printed, so `%config` in a cell says it). Untracked settings: as is."""
    t = tracker(settings)
    if t is None or t.busy:
        return value
    if value:
        t.own = True
        return True
    if not t.pin:
        t.own = False
    why = keeps_on(settings)
    if why is None:
        return False
    print(f"pimagic: paranoid mode stays ON: {why}; {OFF_HOW}")  # `%config` in a cell: said there
    return True


def keeps_on(settings: Any) -> str | None:
    """Why this kernel cannot simply switch paranoid mode off, or None."""
    t = tracker(settings)
    if t is not None and t.pin:
        return f"{t.pin} sets it"
    choice = read_choice(settings)
    if choice is not None and choice.paranoid:
        return f"it was {choice.chosen()}"
    return None


def choose(settings: Any, on: bool, by: str) -> Record:
    """The user's deliberate choice for the folder: recorded first (host-only), then this kernel's
    setting follows. Refused ("off") while the kernel's own sources pin it on. The caller pushes."""
    t = track(settings)
    if not on and t.pin:
        raise PimagicError(
            f"paranoid mode stays ON: {t.pin} sets it",
            hint="remove it there (then restart the kernel) to turn paranoid mode off",
        )
    record = Record(on, by, time.time())
    _write(settings, CHOICE_FILE, record)
    if not on:  # "on" stays the folder's, not this kernel's own: a later "off" elsewhere is followed here
        t.own = False
    with _busy(t):
        settings.paranoid = on
    return record


def sync(settings: Any) -> list[str]:
    """Adopt the folder's choice (another notebook may have changed it): the setting becomes the
    kernel's own value OR the choice. Returns what changed, for the user."""
    t = tracker(settings)
    if t is None:
        return []
    choice = read_choice(settings)
    want = t.own or bool(t.pin) or (choice is not None and choice.paranoid)
    if want == settings.paranoid:
        return []
    with _busy(t):
        settings.paranoid = want
    if want:
        assert choice is not None
        return [f"paranoid mode is ON: {choice.chosen()}; {OFF_HOW}"]
    by = f" with {choice.by} at {choice.when()}" if choice is not None else ""
    return [f"paranoid mode was turned OFF for this folder{by}"]


def reload(settings: Any, pin: str) -> None:
    """The kernel's own sources set the value again (`%pi trust-env`): it is its own; `pin` names
    the source when it is on."""
    t = tracker(settings)
    if t is not None:
        t.own, t.pin = bool(settings.paranoid), pin if settings.paranoid else ""


@contextlib.contextmanager
def reloading(settings: Any) -> Iterator[None]:
    """Let a reload of the kernel's own sources set the trait either way (then `reload`)."""
    t = tracker(settings)
    if t is None:
        yield
        return
    with _busy(t):
        yield


def describe(settings: Any) -> str:
    """Why the setting is what it is, in a few words."""
    t = tracker(settings)
    choice = read_choice(settings)
    if not settings.paranoid:
        return "off"
    if t is not None and t.pin:
        return t.pin
    if choice is not None and choice.paranoid:
        return choice.chosen()
    return "a notebook's own %config"


# --- the container's policy file ----------------------------------------------------------------


def decide(settings: Any, container_id: str | None, replaced: str | None = None) -> tuple[bool, str, list[str]]:
    """What to write into `container_id`'s policy file now: (paranoid, why, notes). The setting
    (synchronised with the folder's choice), kept ON when the host last made this container (or
    the running one it `replaced`) paranoid and no deliberate "off" came after that."""
    notes = sync(settings)
    want = bool(settings.paranoid)
    why = describe(settings)
    if not want:
        applied = read_applied(settings)
        live = {c for c in (container_id, replaced) if c}
        if applied is not None and applied.paranoid and applied.container in live:
            choice = read_choice(settings)
            if not (choice is not None and not choice.paranoid and choice.at >= applied.at):
                want, why = True, applied.by
                notes.append(
                    f"kept paranoid mode ON in the running sandbox (set there at {applied.when()}: {applied.by}), "
                    f"although this kernel's settings say off; {OFF_HOW}"
                )
    return want, why, notes


def needs_push(settings: Any, container_id: str) -> bool:
    """The host's record of `container_id` lags behind: nothing recorded for it, weaker than the
    setting, or a deliberate "off" came after it (a push that failed, or never happened)."""
    applied = read_applied(settings)
    if applied is None or applied.container != container_id:
        return True
    if settings.paranoid and not applied.paranoid:
        return True
    choice = read_choice(settings)
    return (applied.paranoid and not settings.paranoid and choice is not None and not choice.paranoid
            and choice.at >= applied.at)


def record_applied(settings: Any, container_id: str, paranoid: bool, why: str) -> None:
    """The host wrote `paranoid` into `container_id`'s policy file (the only record of it)."""
    _write(settings, APPLIED_FILE, Record(paranoid, why, time.time(), container_id))


def status(settings: Any, container_id: str | None) -> str:
    """One line for `%pi status` and the panel: the setting, why, and what the running sandbox has."""
    on = "ON" if settings.paranoid else "off"
    line = f"paranoid mode {on}" + (f" ({describe(settings)})" if settings.paranoid else "")
    if container_id is None:
        return line
    applied = read_applied(settings)
    if applied is None or applied.container != container_id:
        return f"{line}; the running sandbox gets it at the next %%pi cell"
    if applied.paranoid != bool(settings.paranoid):
        have = "ON" if applied.paranoid else "off"
        line = f"{line}; the running sandbox has it {have} (set there at {applied.when()}: {applied.by})"
        return f"{line}; {OFF_HOW}" if applied.paranoid else f"{line}; the next %%pi cell applies it"
    return line
