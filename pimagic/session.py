"""One conversation with pi inside the workspace's sandbox.

pi runs as `pi --mode rpc --session-id ID` through a `docker exec` whose stdin
stays open for the conversation's life. The session id is kept on the host per
conversation key, so a restarted kernel or a replaced container continues the
same persisted pi session; different keys (two notebooks in one folder) get
different pi processes and sessions, so their events never interleave.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import piconfig
from .config import PimagicSettings
from .errors import PimagicError, RpcError, SandboxError
from .rpc import RpcClient, SocketTransport
from .sandbox import Sandbox

Progress = Callable[[str], None]
READY_TIMEOUT = 90.0


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return slug[:48] or "default"


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

    # --- persisted conversation identity -----------------------------------

    @property
    def _state_path(self) -> Path:
        return self.settings.pi_data_path.parent / "conversations" / f"{self.key}.json"

    def _load_session_id(self) -> str | None:
        try:
            return json.loads(self._state_path.read_text()).get("session_id")
        except (OSError, ValueError):
            return None

    def _save_session_id(self, session_id: str) -> None:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        self._state_path.write_text(json.dumps({"session_id": session_id}) + "\n")

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
        container = self.sandbox.start(progress=progress)
        self.notes.extend(f"Docker host check: {w}" for w in self.sandbox.preflight_warnings)
        self.notes.extend(self.sandbox.notes)
        self.sandbox.notes.clear()
        # The container may predate this kernel's settings (another kernel started it): the
        # policy file must say what this kernel's settings say before pi runs any gh.
        self.sandbox.apply_policy()
        self._container_id = container.id
        self.configure_pi()
        self._relay_local_providers()
        cmd = ["pi", "--mode", "rpc", "--session-id", self.session_id]
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
        if container is None:
            what = "the sandbox container was removed"
        else:
            container.reload()
            code = container.attrs.get("State", {}).get("ExitCode")
            what = (
                f"the sandbox container stopped ({container.status}, exit code {code})"
                if container.status != "running" or container.id != self._container_id
                else "pi exited inside the sandbox"
            )
        self.notes.append(f"{what}; started a new one and resumed session {self.session_id}")

    def configure_pi(self) -> None:
        """Write pimagic's defaults into pi's settings.json (merged, never clobbered)."""
        s = self.settings
        values: dict[str, Any] = {}
        if s.model:
            provider, _, model_id = s.model.partition("/")
            values.update(defaultProvider=provider, defaultModel=model_id)
        if s.thinking:
            values["defaultThinkingLevel"] = s.thinking
        if values:
            piconfig.merge_settings(s.pi_data_path, values, uid=s.uid, gid=s.gid)

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
        # No idle limit: a quiet tool (a long `sleep`, a model load) is legitimate; the turn's
        # overall timeout bounds it, and a dead pi or container ends the stream at once.
        return rpc.prompt(message, timeout=timeout, tick=tick, event_timeout=None)

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
        """End this conversation's pi process; the container keeps running for others."""
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
