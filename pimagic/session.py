"""One conversation with pi inside the workspace's sandbox.

pi runs as `pi --mode rpc --session-id ID` through a `docker exec` whose stdin
stays open for the conversation's life. The session id is kept on the host per
conversation key, so a restarted kernel or a replaced container continues the
same persisted pi session; different keys (two notebooks in one folder) get
different pi processes and sessions, so their events never interleave.
"""

from __future__ import annotations

import contextlib
import re
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import piconfig
from .config import PimagicSettings
from .diskwatch import DiskWatch
from .errors import DiskLimitError, PimagicError, RpcError, SandboxError
from .rpc import RpcClient, SocketTransport
from .sandbox import IDLE_EXIT_CODE, Sandbox

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


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return slug[:48] or "default"


def _weak_call(method: Callable[[int], None]) -> Callable[[int], None]:
    """`method` without keeping its object alive (the watcher's thread would, for ever)."""
    ref = weakref.WeakMethod(method)

    def call(value: int) -> None:
        target = ref()
        if target is not None:
            target(value)

    return call


class PiSession:
    """A pi RPC process in the sandbox for one conversation key."""

    def __init__(self, settings: PimagicSettings, key: str = "default", *, client: Any = None) -> None:
        self.settings = settings
        self.key = _slug(key)
        self.sandbox = Sandbox(settings, client)
        self.rpc: RpcClient | None = None
        self._container_id: str | None = None
        self.notes: list[str] = []  # what happened to the sandbox since the last turn
        self._masked: set[Path] = set()  # secret files hidden when the container started
        self._diskwatch: DiskWatch | None = None  # the workspace's growth while this session uses a sandbox
        self._disk_shown = 0  # how many of the watch's trips the user has been shown
        self._in_turn = False  # a turn's events are being read (a trip then is "during this cell")
        self._disk_trip_in_turn = False

    # --- persisted conversation identity -----------------------------------

    @property
    def _state_path(self) -> Path:
        return piconfig.state_dir(self.settings) / "conversations" / f"{self.key}.json"

    def _load_session_id(self) -> str | None:
        try:
            sid = piconfig.read_json(self._state_path).get("session_id")
        except (OSError, PimagicError):
            return None
        return sid if isinstance(sid, str) else None

    def _save_session_id(self, session_id: str) -> None:
        piconfig.write_json(self._state_path, {"session_id": session_id})

    @property
    def session_id(self) -> str:
        sid = self._load_session_id()
        if not sid:
            sid = f"{self.key}-{uuid.uuid4().hex[:12]}"
            self._save_session_id(sid)
        return sid

    # --- lifecycle -----------------------------------------------------------

    def alive(self) -> bool:
        """True while our pi process answers. A dead or replaced container closes the exec
        socket, which closes the client, so no Docker round trip is needed on the hot path."""
        return self.rpc is not None and not self.rpc.closed

    def ensure(self, *, progress: Progress | None = None) -> RpcClient:
        """A ready RPC client, starting (or replacing a dead) sandbox and pi as needed."""
        if self.rpc is not None and self.alive():
            return self.rpc
        if self.rpc is not None:
            self._note_loss()
            self.rpc.close(timeout=1)
            self.rpc = None
        else:
            self._note_idle_stop()
        container = self.sandbox.start(progress=progress)
        self._watch_disk()
        self.notes.extend(f"Docker host check: {w}" for w in self.sandbox.preflight_warnings)
        self.notes.extend(self.sandbox.notes)
        self.sandbox.notes.clear()
        # The container may predate this kernel's settings (another kernel started it): the
        # policy file must say what this kernel's settings say before pi runs any gh.
        self.sandbox.apply_policy()
        self._container_id = container.id
        self.configure_pi()
        self._relay_local_providers()
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
        return rpc

    def hide_new_secrets(
        self, *, progress: Progress | None = None, candidates: Iterable[str] | None = None
    ) -> list[Path]:
        """Secret files that appeared in the workspace after the container started are not
        masked in it: replace the container so they are. pi's session resumes; returns them.
        `candidates`: the workspace's relative paths when the caller has already listed them."""
        if not self.alive():
            return []  # the next ensure() starts a container with current masks
        new = sorted(set(self.sandbox.masked_files(candidates)) - self._masked)
        if new:
            self.close()
            self.sandbox.remove()
            self.ensure(progress=progress)
            names = ", ".join(str(p.relative_to(self.settings.workspace_path)) for p in new)
            self.notes.append(f"new secret files ({names}) are now hidden: restarted the sandbox, session resumed")
        return new

    def _note_loss(self) -> None:
        container = self.sandbox.find()
        if self._diskwatch is not None and self._diskwatch.exceeded_by is not None:
            self._disk_shown = self._diskwatch.trips
            what = self._disk_message()
        elif container is None:
            what = "the sandbox container was removed"
        else:
            container.reload()
            code = container.attrs.get("State", {}).get("ExitCode")
            if container.status != "running" and code == IDLE_EXIT_CODE:
                what = self._idle_message()
            elif container.status != "running" or container.id != self._container_id:
                what = f"the sandbox container stopped ({container.status}, exit code {code})"
            else:
                what = "pi exited inside the sandbox"
        self.notes.append(f"{what}; started a new one and resumed session {self.session_id}")

    def _note_idle_stop(self) -> None:
        """The sandbox ended itself for lack of an attached session: say so in the next cell."""
        container = self.sandbox.find()
        state = container.attrs.get("State", {}) if container is not None else {}
        if state.get("Status") == "exited" and state.get("ExitCode") == IDLE_EXIT_CODE:
            self.notes.append(f"{self._idle_message()}; started a new one and resumed session {self.session_id}")

    def _idle_message(self) -> str:
        return (
            f"the sandbox stopped itself, with every process in it, after {self.settings.idle_timeout:g}s "
            "with no notebook or shell attached (idle_timeout, PIMAGIC_IDLE_TIMEOUT)"
        )

    # --- workspace write limit ------------------------------------------------------

    def _watch_disk(self) -> None:
        """Keep the disk-fill poll running while this session uses a sandbox (between cells too:
        a background process the agent left can write then)."""
        limit = self.settings.write_limit_bytes
        if limit <= 0:  # no bound: no watch
            if self._diskwatch is not None:
                self._diskwatch.stop()
                self._diskwatch = None
            return
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
                self.notes.append(self._disk_message())
            self._diskwatch.reset()
        self._diskwatch.set_limit(limit)
        self._diskwatch.start()

    def _on_disk_limit(self, growth: int) -> None:
        """Over the limit (on the watcher's thread): kill the sandbox, so every writer dies now."""
        self._disk_trip_in_turn = self._in_turn
        with contextlib.suppress(Exception):
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

    def configure_pi(self) -> None:
        """Write pimagic's defaults into the host-owned settings.json (merged, never clobbered)
        and refresh the sandbox's read-only view of it."""
        s = self.settings
        values: dict[str, Any] = {}
        if s.model:
            provider, _, model_id = s.model.partition("/")
            values.update(defaultProvider=provider, defaultModel=model_id)
        if s.thinking:
            values["defaultThinkingLevel"] = s.thinking
        if values:
            piconfig.merge_settings(piconfig.config_dir(s), values)
        piconfig.refresh_view(s)

    def _relay_local_providers(self) -> None:
        """Relay providers whose baseUrl is on the host's loopback (see pimagic.relay)."""
        from .relay import relay_local_providers

        try:
            relay_local_providers(self.settings, self.sandbox.client)
        except PimagicError:
            raise
        except Exception as e:
            raise SandboxError(f"could not relay local model servers into the sandbox: {e}") from e

    def _apply_model(self, rpc: RpcClient, state: dict[str, Any]) -> None:
        s = self.settings
        if s.model:
            provider, _, model_id = s.model.partition("/")
            current = state.get("model") or {}
            if (current.get("provider"), current.get("id")) != (provider, model_id):
                rpc.set_model(provider, model_id)
        if s.thinking and state.get("thinkingLevel") != s.thinking:
            rpc.set_thinking_level(s.thinking)

    # --- conversation --------------------------------------------------------

    def prompt(self, message: str, *, timeout: float | None = None, progress: Progress | None = None,
               tick: float | None = None) -> Iterator[dict[str, Any]]:
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
        if self._diskwatch is not None:
            self._diskwatch.stop()
        if self.rpc is not None:
            self.rpc.close(timeout=5)
            self.rpc = None

    def stop(self) -> None:
        self.close()
        self.sandbox.stop()

    def restart(self, *, progress: Progress | None = None) -> RpcClient:
        self.close()
        self.sandbox.remove()
        return self.ensure(progress=progress)
