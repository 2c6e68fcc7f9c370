"""One conversation with pi inside the workspace's sandbox.

pi runs as `pi --mode rpc --session-id ID` through a `docker exec` whose stdin
stays open for the conversation's life. The session id is kept on the host per
notebook (its file, not its name: pimagic.conversations), so a restarted kernel, a
renamed notebook or a replaced container continues the same persisted pi session;
two notebooks in one folder get different pi processes and sessions, so their
events never interleave.

This is the one start path: `start_sandbox` (the container created or joined by
`Sandbox.start`, which stores the token and pushes the policy, then pi's config and the relays
of local model servers) serves notebooks, the panel and the CLI alike; `PiSession.open` adds pi's
process and returns a `StartReport`. The policy is pushed again only when the setting changes.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import conversations, policy, providers, statedir, workspace
from .config import PimagicSettings
from .diskwatch import DiskWatch
from .errors import DiskLimitError, DockerUnavailableError, PimagicError, RpcError, SandboxError
from .rpc import RpcClient, SocketTransport
from .sandbox import Sandbox, SandboxStart

Progress = Callable[[str], None]
READY_TIMEOUT = 90.0
# pi loads code and instructions it finds in its agent dir and the project's `.pi/`, both of which
# the agent writes: an extension planted there would run inside every later pi (other notebooks'
# included) and could forge their output or ask pi for its keys. None of it is discovered.
PI_SAFE_FLAGS = ("--no-extensions", "--no-skills", "--no-prompt-templates", "--no-themes", "--no-approve")
# Every session runs behind container/leash/leash.c: the idle supervisor counts it, never pi itself,
# and --hup ends pi when this kernel's channel hangs up even if pi stopped reading (a FIFO the
# agent put in place of its session file), so a detached or dead kernel leaves nothing attached.
LEASH = ("/usr/local/lib/pimagic/leash", "--hup")


def _weak_call(method: Callable[[Any], None]) -> Callable[[Any], None]:
    """`method` without keeping its object alive (the watcher's thread, or the settings object
    observed, would, for ever)."""
    ref = weakref.WeakMethod(method)

    def call(value: Any) -> None:
        target = ref()
        if target is not None:
            target(value)

    return call


@dataclass(frozen=True)
class StartReport:
    """What `PiSession.open` did: "running" (nothing to start), "created", "joined" or
    "replaced" (the container), and what the user should hear about (said in the next cell)."""

    action: str
    notes: tuple[str, ...] = ()

    def then(self, later: StartReport) -> StartReport:
        """This (a background start nobody was told about) followed by `later`: the sandbox's
        story for this kernel is this one's unless `later` made a new container."""
        action = later.action if later.action in ("created", "replaced") else self.action
        return StartReport(action, self.notes + later.notes)


def settings_values(settings: PimagicSettings) -> dict[str, Any]:
    """The settings as plain values, to tell whether any changed since a background start
    (`turn_timeout` and `warm_start` shape no start)."""
    skip = {"config", "parent", "log", "turn_timeout", "warm_start"}
    return {name: _frozen(getattr(settings, name)) for name in sorted(settings.trait_names()) if name not in skip}


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@contextlib.contextmanager
def _holding(lock: threading.RLock, progress: Progress | None) -> Iterator[None]:
    """Hold `lock`; while another thread (the extension's background start) has it, wait in short
    steps so that Ctrl-C (SIGINT, delivered to the main thread between steps) ends the wait."""
    if not lock.acquire(blocking=False):
        if progress is not None:
            progress("waiting for the sandbox start begun when the extension loaded")
        while not lock.acquire(timeout=0.1):
            pass
    try:
        yield
    finally:
        lock.release()


def configure_pi(settings: PimagicSettings) -> None:
    """Write pimagic's defaults (model, thinking level) into the host-owned settings.json
    (merged, never clobbered) and refresh the sandbox's read-only view of it."""
    values: dict[str, Any] = {}
    model = settings.model_ref
    if model is not None:
        values.update(defaultProvider=model.provider, defaultModel=model.id)
    if settings.thinking:
        values["defaultThinkingLevel"] = settings.thinking
    if values:
        providers.merge_settings(statedir.config_dir(settings), values)
    providers.refresh_view(settings)


def start_sandbox(sandbox: Sandbox, *, progress: Progress | None = None, build: bool = True) -> SandboxStart:
    """The one start sequence, for notebooks and `pimagic run/shell`: the container (created or
    joined, token stored and policy pushed by `Sandbox.start`), pi's config written from the
    settings, and local model servers relayed (the relays live as long as this process).
    `build=False`: a missing image is an error (ImageNotFoundError), never a build."""
    sandbox.settings.raise_env_errors()  # a mistyped setting is never replaced by its default here
    started = sandbox.start(progress=progress, build=build)
    configure_pi(sandbox.settings)
    try:
        providers.relay_local_providers(sandbox.settings, sandbox.client)
    except PimagicError:
        raise
    except OSError as e:  # a port that cannot be bound, a server that went away
        raise SandboxError(f"could not relay local model servers into the sandbox: {e}") from e
    return started


class PiSession:
    """A pi RPC process in the sandbox for one conversation: a notebook's, or a named one."""

    def __init__(
        self, settings: PimagicSettings, key: str | conversations.Notebook = "default", *, client: Any = None,
    ) -> None:
        self.settings = settings
        self.notebook = key if isinstance(key, conversations.Notebook) else None
        self.key = conversations.slug(key.label if isinstance(key, conversations.Notebook) else key)
        self._claim: conversations.Claim | None = None
        self.sandbox = Sandbox(settings, client)
        self.rpc: RpcClient | None = None
        self._container_id: str | None = None
        self._masked: set[Path] = set()  # secret files hidden in the container pi runs in
        self._diskwatch: DiskWatch | None = None  # the workspace's growth while this session uses a sandbox
        self._disk_shown = 0  # how many of the watch's trips the user has been shown
        self._in_turn = False  # a turn's events are being read (a trip then is "during this cell")
        self._disk_trip_in_turn = False
        # open/close/restart one at a time: a cell waits for (joins) the background start begun by
        # `%load_ext` instead of starting a second pi; that start's report waits here for the next open.
        self._lock = threading.RLock()
        self._held: tuple[StartReport, dict[str, Any]] | None = None
        # open() just checked the folder (a cell's start): the prompt that follows must not walk it
        # again (a second full walk per cell, whose report nobody would show).
        self._checked = False
        # The policy file follows the setting while the sandbox runs (a start pushes it too).
        policy.track(settings)  # paranoid mode: this kernel's value OR the folder's choice, never lowered silently
        settings.observe(_weak_call(self._on_paranoid), names=["paranoid"])

    # --- persisted conversation identity -----------------------------------

    def _store(self) -> conversations.ConversationStore:
        return conversations.ConversationStore(statedir.state_dir(self.settings) / "conversations")

    @property
    def claim(self) -> conversations.Claim:
        """This kernel's conversation, looked up once and kept for the kernel's life (a notebook
        renamed while its kernel runs keeps it; the next kernel finds it by the file)."""
        if self._claim is None:
            store = self._store()
            if self.notebook is not None:  # a notebook moved away from its path may be anywhere in the folder
                self._claim = store.claim(self.notebook, search=(str(self.settings.workspace_path),))
            else:
                self._claim = store.claim_key(self.key)
        return self._claim

    @property
    def session_id(self) -> str:
        return self.claim.session_id

    def _save_session_id(self, session_id: str) -> None:
        store = self._store()
        if self.notebook is not None:
            store.save(self.notebook, session_id)
        else:
            store.save_key(self.key, session_id)
        self._claim = conversations.Claim(session_id)

    # --- lifecycle -----------------------------------------------------------

    def alive(self) -> bool:
        """True while our pi process answers. A dead or replaced container closes the exec
        socket, which closes the client, so no Docker round trip is needed on the hot path."""
        return self.rpc is not None and not self.rpc.closed

    def open(self, *, progress: Progress | None = None, workspace_files: Iterable[str] | None = None) -> StartReport:
        """Make sure pi runs in a sandbox that hides every secret file, starting (or replacing a
        dead) sandbox and pi as needed; say what happened. `workspace_files`: the folder's
        relative paths when the caller has listed them (saves a walk). Waits for a background
        start in flight (`warm`), then reports it as its own; settings changed since that start
        began are applied as a start now would (pi restarted, the container replaced if needed)."""
        self.settings.raise_env_errors()  # a mistyped setting: nothing starts until it is fixed
        with _holding(self._lock, progress):
            held, self._held = self._held, None
            self._checked = False
            if held is None:
                report = self._open(progress=progress, workspace_files=workspace_files)
                self._checked = True
                return report
            report, values = held
            changed = settings_values(self.settings) != values
            if changed:
                self.close()  # pi restarts with the settings as they are now
            later = self._open(progress=progress, workspace_files=workspace_files)
            token = self.settings.github_token
            ours = report.action in ("created", "replaced") and later.action == "joined"
            if ours and values["github_token"] != token:
                # The container that start made got the token of then (a start stores it at creation).
                self.sandbox.put_secret("github_token", token.encode())
            self._checked = True
            return report.then(later)

    def warm(self) -> StartReport | None:
        """Start the sandbox and pi now, without building an image (ImageNotFoundError instead),
        and keep the report for the next `open` (the first cell says what happened). None when a
        cell got there first. Meant for a background thread: it holds the lock while it starts."""
        values = settings_values(self.settings)  # before anything is read: a change during the start counts
        with self._lock:
            if self.rpc is not None:
                return None
            report = self._open(build=False)
            self._held = (report, values)
            return report

    def _open(self, *, progress: Progress | None = None, workspace_files: Iterable[str] | None = None,
              build: bool = True) -> StartReport:
        notes: list[str] = []
        if self.alive():
            new = self._new_secrets(workspace_files)
            if not new:
                return StartReport("running", tuple(self._recheck_policy()))
            # Secret files that appeared after the container started are not masked in it:
            # replace the container so they are. pi's session resumes.
            self.close()
            self.sandbox.remove()
            names = ", ".join(str(p.relative_to(self.settings.workspace_path)) for p in new)
            notes.append(f"new secret files ({names}) are now hidden: restarted the sandbox, session resumed")
        elif self.rpc is not None:
            notes.append(self._loss_note())
            self.rpc.close(timeout=1)
            self.rpc = None
        else:
            notes.extend(self._idle_note())
        started = start_sandbox(self.sandbox, progress=progress, build=build)
        notes.extend(started.notes)
        notes.extend(started.view.notes)
        self._masked = set(started.view.secret_files)
        notes.extend(self._watch_disk())
        self._container_id = started.container.id
        cmd = [*LEASH, "pi", "--mode", "rpc", *PI_SAFE_FLAGS, "--session-id", self.session_id]
        _, sock = self.sandbox.exec_socket(cmd)
        rpc = RpcClient(SocketTransport(sock))
        try:
            state = rpc.wait_ready(READY_TIMEOUT)
        except RpcError as e:
            rpc.close(timeout=1)
            raise SandboxError(
                f"pi did not start in the sandbox: {e.message}", container=self.sandbox.name,
                logs=e.stderr, hint="`%pi logs` shows the container's output",
            ) from None
        self.rpc = rpc
        self._apply_model(rpc, state)
        return StartReport(started.action, tuple(notes))

    def ensure(self, *, progress: Progress | None = None) -> RpcClient:
        """A ready RPC client (see `open`; its notes are for callers that show them)."""
        with _holding(self._lock, progress):
            if self._held is not None and self.rpc is not None and self.alive():
                return self.rpc  # a background start's pi: its report stays for the next open()
            self.open(progress=progress)
            assert self.rpc is not None  # open() raises or leaves pi running
            return self.rpc

    def _new_secrets(self, workspace_files: Iterable[str] | None) -> list[Path]:
        """Secret files in the folder now that the running container does not hide."""
        s = self.settings  # the secret files only: the rest of the view (git dirs) is a start's
        found = workspace.secret_files(s.workspace_path, s.secret_patterns, s.keep_visible, workspace_files)
        return sorted(set(found) - self._masked)

    def _on_paranoid(self, change: dict[str, Any]) -> None:
        """The setting changed (`%config`): the running sandbox's policy file says so from the next
        gh call. A deliberate choice pushes itself (`set_paranoid`); one adopted from the folder's
        record was pushed by whoever made it."""
        if policy.is_busy(self.settings):
            return
        for note in self.push_policy():
            print(f"pimagic: {note}")

    def push_policy(self) -> list[str]:
        """Write the policy into the running sandbox, if one runs; what the user should hear."""
        try:
            state = self.sandbox.state()
        except DockerUnavailableError:
            return []  # no engine, so no sandbox: the next start pushes the policy
        if state is None or not state.running:
            return []
        return self.sandbox.apply_policy(state.container_id)

    def _recheck_policy(self) -> list[str]:
        """Each cell on a running pi: adopt the folder's choice (another notebook may have changed
        it: said in this cell), and push again when a push failed or was never recorded."""
        notes = policy.sync(self.settings)
        if self._container_id is not None and policy.needs_push(self.settings, self._container_id):
            notes.extend(self.sandbox.apply_policy(self._container_id))
        return notes

    def set_paranoid(self, on: bool, by: str) -> list[str]:
        """The user's deliberate choice for the folder (the panel's checkbox, `%pi paranoid on|off`):
        recorded on the host, then pushed to the running sandbox, even when it lowers what another
        notebook had set. Refused (PimagicError) while this kernel's own sources pin it on."""
        policy.choose(self.settings, on, by)
        return self.push_policy()

    def policy_status(self) -> str:
        """Paranoid mode as `%pi status` and the panel show it (what the host wrote, never the container's word)."""
        notes = policy.sync(self.settings)
        try:
            state = self.sandbox.state()
        except DockerUnavailableError:
            state = None
        running = state.container_id if state is not None and state.running else None
        return "; ".join([policy.status(self.settings, running), *notes])

    def _loss_note(self) -> str:
        """Our pi's channel closed: say why (write limit, container gone, idle exit, pi died)."""
        state = self.sandbox.state()
        if self._diskwatch is not None and self._diskwatch.exceeded_by is not None:
            self._disk_shown = self._diskwatch.trips
            what = self._disk_message()
        elif state is None:
            what = "the sandbox container was removed"
        elif state.idle_exit:
            what = self._idle_message()
        elif not state.running or state.container_id != self._container_id:
            what = f"the sandbox container stopped ({state.status}, exit code {state.exit_code})"
        else:
            what = "pi exited inside the sandbox"
        return f"{what}; started a new one and resumed session {self.session_id}"

    def _idle_note(self) -> list[str]:
        """The sandbox ended itself for lack of an attached session: say so in the next cell."""
        state = self.sandbox.state()
        if state is not None and state.idle_exit:
            return [f"{self._idle_message()}; started a new one and resumed session {self.session_id}"]
        return []

    def _idle_message(self) -> str:
        return (
            f"the sandbox stopped itself, with every process in it, after {self.settings.idle_timeout:g}s "
            "with no notebook or shell attached (idle_timeout, PIMAGIC_IDLE_TIMEOUT)"
        )

    # --- workspace write limit ------------------------------------------------------

    def _watch_disk(self) -> list[str]:
        """Keep the disk-fill poll running while this session uses a sandbox (between cells too:
        a background process the agent left can write then). Returns a trip not yet shown."""
        notes: list[str] = []
        limit = self.settings.write_limit_bytes
        if limit <= 0:  # no bound: no watch
            if self._diskwatch is not None:
                self._diskwatch.stop()
                self._diskwatch = None
            return notes
        if self._diskwatch is None:
            # pi's agent dir is the sandbox's other host mount: the agent can fill the disk there too
            self._diskwatch = DiskWatch(
                self.settings.workspace_path, limit, _weak_call(self._on_disk_limit), also=[self.settings.pi_data_path]
            )
            self._disk_shown = 0
            weakref.finalize(self, self._diskwatch.stop)  # a dropped session ends its poll thread
        elif self._diskwatch.exceeded_by is not None:  # the user was told (or is, now): a new baseline
            if self._disk_unreported():
                self._disk_shown = self._diskwatch.trips
                notes.append(self._disk_message())
            self._diskwatch.reset()
        self._diskwatch.set_limit(limit)
        self._diskwatch.start()
        return notes

    def _on_disk_limit(self, growth: int) -> None:
        """Over the limit (on the watcher's thread): kill the sandbox, so every writer dies now."""
        self._disk_trip_in_turn = self._in_turn
        with contextlib.suppress(PimagicError):  # no engine: nothing left to kill; the cell still says why
            self.sandbox.kill()

    def _disk_unreported(self) -> bool:
        watch = self._diskwatch
        return watch is not None and watch.exceeded_by is not None and watch.trips != self._disk_shown

    def _disk_message(self) -> str:
        watch = self._diskwatch
        limit = f"workspace_write_limit={self.settings.workspace_write_limit}"
        stopped = "stopped the sandbox and every process in it (the files are kept)"
        if watch is not None and watch.failure:
            return (f"pimagic could no longer measure the disk that holds the workspace ({watch.failure}), "
                    f"so it enforces {limit} by stopping the sandbox: {stopped}")
        when = "during this cell" if self._disk_trip_in_turn else "after the last cell ended"
        # The whole disk is measured (the one bound the agent cannot evade): say that others count.
        whose = "by any writer, the sandbox or another program on this machine"
        if watch is not None and watch.tripped_on == "inodes":
            return (f"{watch.files_growth} new files and folders appeared on the disk that holds the workspace "
                    f"{when} ({whose}), more than the {watch.inode_limit} allowed per cell: {stopped}")
        growth = max(watch.exceeded_by or 0, watch.growth) if watch else 0  # what landed, overshoot included
        return (f"the disk that holds the workspace (and pi's data dir) filled by {growth / 2**20:.0f} MiB {when} "
                f"({whose}), more than {limit}: {stopped}")

    def _bounded(self, events: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """A turn's events; a trip of the write limit during the turn ends it with DiskLimitError.
        A turn that ends clear starts a new baseline: the gap until the next cell is bounded alone."""
        self._in_turn = True
        try:
            yield from events
        except PimagicError:
            if not self._disk_unreported():
                raise
        finally:
            self._in_turn = False
        if self._disk_unreported():
            self._disk_shown = self._diskwatch.trips if self._diskwatch is not None else 0
            raise DiskLimitError(
                self._disk_message(),
                hint="delete what you do not need, or raise the limit (PIMAGIC_WRITE_LIMIT, or "
                "%config PimagicSettings.workspace_write_limit = '8g'; 0 keeps only the per-file bound); "
                "the next cell starts a new sandbox",
            )
        if self._diskwatch is not None:
            self._diskwatch.reset_if_clear()

    def _apply_model(self, rpc: RpcClient, state: dict[str, Any]) -> None:
        s = self.settings
        model = s.model_ref
        if model is not None:
            current = state.get("model") or {}
            if (current.get("provider"), current.get("id")) != (model.provider, model.id):
                rpc.set_model(model.provider, model.id)
        if s.thinking and state.get("thinkingLevel") != s.thinking:
            rpc.set_thinking_level(s.thinking)

    # --- conversation --------------------------------------------------------

    def prompt(self, message: str, *, timeout: float | None = None, progress: Progress | None = None,
               tick: float | None = None) -> Iterator[dict[str, Any]]:
        checked, self._checked = self._checked, False
        if checked and self.rpc is not None and self.alive():
            rpc = self.rpc  # this cell's open() checked the folder and said what it did
        else:
            rpc = self.ensure(progress=progress)
        if self._diskwatch is not None and self.settings.write_limit_bytes > 0:
            self._diskwatch.set_limit(self.settings.write_limit_bytes)  # %config between cells
            # The bound is per cell: what the user's own code wrote between cells (a downloaded
            # data set) must not add up into a kill many cells later. A trip not yet shown stays.
            self._diskwatch.reset_if_clear()
        # No idle limit: a quiet tool (a long `sleep`, a model load) is legitimate; the turn's
        # overall timeout bounds it, and a dead pi or container ends the stream at once.
        return self._bounded(rpc.prompt(message, timeout=timeout, tick=tick, event_timeout=None))

    def new_session(self) -> str:
        rpc = self.ensure()
        rpc.new_session()
        sid = rpc.get_state().get("sessionId")
        if sid:
            self._save_session_id(sid)
        return sid or ""

    def prompt_count(self) -> int | None:
        """How many prompts the conversation holds (pi's count of user messages over the whole
        session, compacted history included); None when pi is not running or cannot say."""
        rpc = self.rpc
        if rpc is None or rpc.closed:
            return None
        try:
            count = rpc.get_session_stats().get("userMessages")
        except PimagicError:
            return None
        return count if isinstance(count, int) and count >= 0 else None

    def set_model(self, provider: str, model_id: str) -> dict[str, Any]:
        return self.ensure().set_model(provider, model_id)

    def set_thinking(self, level: str) -> None:
        self.ensure().set_thinking_level(level)

    def state(self) -> dict[str, Any] | None:
        if self.rpc is None or not self.alive():
            return None
        return self.rpc.get_state()

    def abort(self) -> bool:
        return self.rpc.abort() if self.rpc is not None and not self.rpc.closed else False

    def close(self) -> None:
        """End this conversation's pi process; the container keeps running for others.
        The disk-fill poll stops too; the next ensure() resumes it with the same baseline."""
        with _holding(self._lock, None):
            if self._diskwatch is not None:
                self._diskwatch.stop()
            if self.rpc is not None:
                self.rpc.close(timeout=5)
                self.rpc = None

    def stop(self) -> None:
        with _holding(self._lock, None):
            self.close()
            self.sandbox.stop()

    def restart(self, *, progress: Progress | None = None) -> StartReport:
        """A new container and pi process; the conversation resumes."""
        with _holding(self._lock, progress):
            self._held = None  # a background start's report: this restart's says what happened
            self.close()
            self.sandbox.remove()
            return self.open(progress=progress)
