"""`%%pi` and `%pi`: parse, then act through a PiSession, then render.
No direct Docker calls here."""

from __future__ import annotations

import os
import re
import time
import uuid
import weakref
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from . import changes as changes_mod
from .config import PimagicSettings, load_settings, trust_env_file
from .errors import DockerUnavailableError, PimagicError
from .parsers import HELP_TEXT, CellArgs, LineCommand, interpolate, parse_cell_args, parse_line
from .render import PiResult, TurnRenderer, clean, escape_name
from .rpc import TICK
from .session import PiSession

RESULT_VAR = "_pi"
FLUSH_TICK = 0.25  # seconds of silence from pi after which held-back output is shown


def conversation_key(shell: Any) -> str:
    """Which conversation this kernel continues: the notebook's path when Jupyter tells us
    (so a restarted kernel resumes it), else one fresh key per process."""
    explicit = os.environ.get("PIMAGIC_CONVERSATION")
    if explicit:
        return explicit
    notebook = os.environ.get("JPY_SESSION_NAME") or (shell.user_ns.get("__session__") if shell else None)
    if notebook:
        return "nb-" + os.path.basename(str(notebook)).removesuffix(".ipynb")
    return f"kernel-{uuid.uuid4().hex[:8]}"


def _in_kernel(shell: Any) -> bool:
    return shell is not None and hasattr(shell, "kernel")


class _LiveOutput:
    """A display handle updated while a turn streams; plain prints outside a kernel."""

    def __init__(self, shell: Any, quiet: bool) -> None:
        self.live = _in_kernel(shell) and not quiet
        self.handle = None

    def emit(self, bundle: dict, final: bool) -> None:
        if not self.live:
            return
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)

    def close(self) -> None:
        # The cell's return value carries the final, static output: empty the live area.
        if self.handle is not None:
            self.handle.update({"text/plain": ""}, raw=True)


class _Progress:
    """Image-build / start-up progress in one updating line, with a bar for `Step N/M`."""

    _STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")

    def __init__(self, shell: Any) -> None:
        self.kernel = _in_kernel(shell)
        self.handle = None
        self.steps_seen = False

    @classmethod
    def format(cls, line: str) -> str:
        match = cls._STEP.match(line)
        if not match:
            return f"pimagic: {line[:200]}"
        step, total, what = int(match[1]), int(match[2]), match[3]
        filled = round(24 * step / max(total, 1))
        return f"pimagic: building the sandbox image [{'#' * filled}{'.' * (24 - filled)}] {step}/{total} {what[:120]}"

    def __call__(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        text = self.format(line)
        is_step = text.startswith("pimagic: building")
        self.steps_seen = self.steps_seen or is_step
        if self.steps_seen and not is_step:
            return  # keep the bar on screen; the build's chatter between steps adds nothing
        if not self.kernel:
            print(text, flush=True)
        elif self.handle is None:
            self.handle = display({"text/plain": text}, raw=True, display_id=True)
        else:
            self.handle.update({"text/plain": text}, raw=True)

    def done(self) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": ""}, raw=True)


@magics_class
class PiMagics(Magics):
    """`%%pi PROMPT` talks to pi in the sandbox; `%pi help` lists the line subcommands."""

    def __init__(self, shell: Any = None, settings: PimagicSettings | None = None) -> None:
        super().__init__(shell)
        self.settings = settings or load_settings(parent=shell)
        self._env_notes = list(self.settings.env_notes)  # a refused `.env`: said in the next cell
        self._session: PiSession | None = None
        self.panels: weakref.WeakSet = weakref.WeakSet()  # open settings panels, refreshed after cells
        self.settings.observe(self._on_paranoid, names=["paranoid"])

    @property
    def session(self) -> PiSession:
        if self._session is None:
            self._session = PiSession(self.settings, conversation_key(self.shell))
        return self._session

    def _on_paranoid(self, change: dict) -> None:
        # Policy lives in a root-only file in the running sandbox; the next gh call reads it.
        try:
            sandbox = self.session.sandbox
            if sandbox.find() is not None:
                sandbox.apply_policy()
        except DockerUnavailableError:
            pass  # no engine yet: PiSession.ensure() pushes the policy when the sandbox starts

    # --- entry point -----------------------------------------------------------

    @line_cell_magic
    def pi(self, line: str, cell: str | None = None) -> Any:
        """%%pi [-m PROVIDER/ID] [-t LEVEL] [--new] [--timeout S] [-i] [-o NAME] [-q]  +  prompt;
        %pi status|new|abort|model|models|thinking|stop|restart|logs|settings|help"""
        if cell is None:
            return self._line(parse_line(line))
        return self._cell(parse_cell_args(line), cell)

    # --- %%pi --------------------------------------------------------------------

    def _cell(self, args: CellArgs, cell: str) -> PiResult:
        prompt = cell.strip()
        if args.interpolate:
            prompt = interpolate(prompt, self.shell.user_ns if self.shell else {})
        if not prompt:
            raise UsageError("%%pi needs a prompt in the cell body. See `%pi help`.")
        session = self.session
        progress = _Progress(self.shell)
        live = _LiveOutput(self.shell, args.quiet)
        renderer = TurnRenderer(live.emit)
        workspace = self.settings.workspace_path
        before = changes_mod.snapshot(workspace)
        try:
            session.hide_new_secrets(progress=progress, candidates=before)
            session.ensure(progress=progress)
        finally:
            progress.done()
        for note in [*self._env_notes, *session.notes]:
            renderer.add_notice(note, warn=True)
        self._env_notes.clear()
        session.notes.clear()
        if args.new_session:
            session.new_session()
            renderer.add_notice("started a fresh pi session")
        if args.model:
            session.set_model(args.model.provider, args.model.id)
        if args.thinking:
            session.set_thinking(args.thinking)

        started = time.monotonic()
        interrupted = False
        try:
            timeout = args.timeout or self.settings.turn_timeout
            for event in session.prompt(prompt, timeout=timeout, tick=FLUSH_TICK):
                if event.get("type") == TICK:
                    renderer.flush()  # a pause: show what the throttle held back
                else:
                    renderer.feed(event)
        except KeyboardInterrupt:
            # rpc.prompt's cleanup already sent `abort` and waited for agent_settled.
            interrupted = True
            renderer.mark_aborted("interrupted (Ctrl-C); the sandbox and the session are still usable")
        except PimagicError as e:
            renderer.add_error(str(e))
        changed = changes_mod.diff(before, changes_mod.snapshot(workspace))
        if changed.host_executable:
            renderer.add_notice(
                "the agent created or changed files your machine may run: "
                + ", ".join(map(escape_name, changed.host_executable)) + " (review before running anything here)",
                warn=True,
            )
        result = renderer.finish(changed.changed, time.monotonic() - started)
        live.close()
        self._refresh_panels()
        if self.shell is not None:
            self.shell.user_ns[RESULT_VAR] = result
            if args.out:
                self.shell.user_ns[args.out] = result
        if interrupted:
            display(result)
            raise KeyboardInterrupt
        return result

    def _refresh_panels(self) -> None:
        """Keep open panels' status current (cheap: no docker stats); never fail the cell for it."""
        for panel in list(self.panels):
            try:
                panel.refresh_status(stats=False)
            except Exception:  # noqa: BLE001 - a stale status line must not break the cell
                pass

    # --- %pi SUBCOMMAND -------------------------------------------------------------

    def _line(self, cmd: LineCommand) -> Any:
        handler = getattr(self, f"_do_{cmd.name.replace('-', '_')}", None)
        if handler is None:  # parse_line already validated the name
            raise UsageError(f"%pi {cmd.name} is not implemented")
        return handler(cmd)

    def _do_help(self, cmd: LineCommand) -> None:
        print(HELP_TEXT)

    def _do_status(self, cmd: LineCommand) -> None:
        print(self.session.sandbox.status(with_stats=True))
        state = self.session.state()
        if state is None:
            print("pi: not running for this notebook (the next %%pi cell starts it)")
            return
        model = state.get("model") or {}
        print(
            f"pi: session {state.get('sessionId')}, model {model.get('provider')}/{model.get('id')}, "
            f"thinking {state.get('thinkingLevel')}, {state.get('messageCount')} messages"
        )

    def _do_new(self, cmd: LineCommand) -> None:
        print(f"new pi session {self.session.new_session()}")

    def _do_abort(self, cmd: LineCommand) -> None:
        print("aborted" if self.session.abort() else "nothing to abort")

    def _do_model(self, cmd: LineCommand) -> None:
        if cmd.model is not None:
            model = self.session.set_model(cmd.model.provider, cmd.model.id)
            self.settings.model = f"{model.get('provider', cmd.model.provider)}/{model.get('id', cmd.model.id)}"
        state = self.session.ensure().get_state()
        model = state.get("model") or {}
        print(f"{model.get('provider')}/{model.get('id')}" if model else "no model selected")

    def _do_models(self, cmd: LineCommand) -> None:
        models = self.session.ensure().get_available_models()
        if not models:
            print("no models available: configure a provider (see `%pi settings`)")
        for m in models:
            print(f"{m.get('provider')}/{m.get('id')}")

    def _do_thinking(self, cmd: LineCommand) -> None:
        if cmd.thinking:
            self.session.set_thinking(cmd.thinking)
            self.settings.thinking = cmd.thinking if cmd.thinking != "max" else self.settings.thinking
        print(self.session.ensure().get_state().get("thinkingLevel"))

    def _do_stop(self, cmd: LineCommand) -> None:
        self.session.stop()
        print(f"stopped {self.session.sandbox.name}")

    def _do_restart(self, cmd: LineCommand) -> None:
        progress = _Progress(self.shell)
        self.session.restart(progress=progress)
        progress.done()
        print(f"restarted {self.session.sandbox.name}; session {self.session.session_id}")

    def _do_logs(self, cmd: LineCommand) -> None:
        # Both come from the sandbox: escape sequences (clipboard, title, cursor) are stripped.
        lines = cmd.lines or 50
        rpc = self.session.rpc
        if rpc is not None:
            print("--- pi stderr ---")
            print(clean("\n".join(rpc.stderr_tail.splitlines()[-lines:])))
        print("--- container logs ---")
        print(clean(self.session.sandbox.logs(tail=lines)))

    def _do_settings(self, cmd: LineCommand) -> Any:
        from .widgets import settings_panel

        return settings_panel(self)

    def _do_trust_env(self, cmd: LineCommand) -> None:
        """You wrote the folder's `.env`: record its content as yours and load it now."""
        path, digest, keys, notes = trust_env_file(self.settings)
        self._env_notes.clear()
        print(f"trusted {path} (sha256 {digest[:16]}); loaded {', '.join(keys) or 'no pimagic keys'}")
        for note in notes:
            print(f"note: {note}")
        print("`%pi restart` applies changed limits and mounts to a running sandbox")
