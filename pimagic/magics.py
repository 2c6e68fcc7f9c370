"""`%%pi` and `%pi`: parse, then act through a PiSession, then render.
No direct Docker calls here."""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import clear_output, display

from . import conversations, providers, statedir, workspace
from .advice import model_choices_hint, turn_failure
from .config import PimagicSettings, load_settings, trust_env_file
from .errors import ModelNotFoundError, PimagicError, RpcError, TurnFailed, TurnInterrupted
from .parsers import HELP_TEXT, CellArgs, LineCommand, interpolate, parse_cell_args, parse_line
from .render import TurnRenderer, session_usage
from .rpc import TICK
from .sanitize import clean, escape_name
from .session import PiSession
from .turn import PiResult
from .warmstart import WarmStart, wanted

RESULT_VAR = "_pi"
KERNEL_KEY = "kernel-"  # a conversation of this process only (no notebook known)
FLUSH_TICK = 0.01  # seconds of silence from pi after which held-back live output is shown


def conversation_key(shell: Any) -> str | conversations.Notebook:
    """Which conversation this kernel continues: its notebook's file as it is now, when Jupyter
    (JPY_SESSION_NAME) or VS Code names it, so a restarted kernel resumes it even after a rename
    (pimagic.conversations); else a named one (PIMAGIC_CONVERSATION); else one per process.
    Called once, when the extension loads: the file's identity is taken before anything renames it."""
    explicit = os.environ.get("PIMAGIC_CONVERSATION")
    if explicit:
        return explicit
    ns = shell.user_ns if shell is not None else {}
    notebook = os.environ.get("JPY_SESSION_NAME") or ns.get("__session__") or ns.get("__vsc_ipynb_file__")
    if notebook:
        return conversations.notebook_at(str(notebook))
    return f"{KERNEL_KEY}{uuid.uuid4().hex[:8]}"


_PI_CELL = re.compile(r"%%pi(\s|$)")


def prompt_on_magic_line(lines: list[str]) -> list[str]:
    """An IPython input transformer: a cell that is only `%%pi Create a snake game` gets an empty
    body line, so IPython calls the cell magic (which takes the prompt from the line) instead of
    answering "the cell body is empty, did you mean %pi"."""
    if len(lines) == 1 and _PI_CELL.match(lines[0]):
        return [lines[0] if lines[0].endswith("\n") else lines[0] + "\n", "\n"]
    return lines


def _in_kernel(shell: Any) -> bool:
    return shell is not None and hasattr(shell, "kernel")


class _LiveOutput:
    """The turn's live view in a kernel: one display output per slot of render.LiveView (a
    finished piece is sent once, the growing one and the footer are updated in place)."""

    def __init__(self, shell: Any, quiet: bool) -> None:
        self.live = _in_kernel(shell) and not quiet
        self.handles: dict[int, Any] = {}

    def emit(self, slot: int, bundle: dict, new: bool) -> None:
        if not self.live:
            return
        if new:
            self.handles[slot] = display(bundle, raw=True, display_id=True)
        else:
            self.handles[slot].update(bundle, raw=True)

    def close(self, other_outputs: bool = False) -> None:
        # The cell's value (or the display of it after Ctrl-C or a failure) is the final, static
        # output: the front end clears the live outputs (and the start-up progress line,
        # `other_outputs`) when it arrives, so a saved notebook keeps only it, not an empty leftover.
        if self.handles or other_outputs:
            clear_output(wait=True)


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
        # pi's current model, for the footer from a turn's start; None: ask pi (once) at the next cell
        self._last_model: str | None = None
        self.settings.observe(self._forget_model, names=["model"])
        self._session: PiSession | None = None
        self.panels: weakref.WeakSet = weakref.WeakSet()  # open settings panels, refreshed after cells
        # Which conversation: decided now, as the kernel starts, and kept for its life.
        self.conversation = conversation_key(shell)
        self._start_action: str | None = None  # what the kernel's first start did to the sandbox
        self._greeted = False  # the first %%pi output says it and whether the conversation continues
        self.warm: WarmStart | None = None  # the start begun by `%load_ext` (pimagic.warmstart)

    @property
    def session(self) -> PiSession:
        if self._session is None:
            self._session = PiSession(self.settings, self.conversation)
        return self._session

    def start_in_background(self) -> WarmStart | None:
        """`%load_ext` in a kernel: start the sandbox and pi now, in a background thread, so the
        first cell finds them ready (it joins a start still in flight); None when not wanted."""
        if self.warm is None and wanted(self.shell, self.settings):
            self.warm = WarmStart(self.session).begin()
        return self.warm

    def _open(self, progress: Any = None) -> None:
        """Start pi for a line command when needed; what the start did is printed."""
        report = self.session.open(progress=progress)
        self._saw_start(report.action)
        for note in report.notes:
            print(f"pimagic: {clean(note)}")

    def _saw_start(self, action: str) -> None:
        if action != "running" and self._start_action is None:
            self._start_action = action

    def _greeting(self, action: str, fresh: bool) -> str:
        """For the kernel's first %%pi output: "sandbox started" / "joined the running sandbox",
        and whether this notebook's conversation continues (how many prompts) or starts."""
        self._saw_start(action)
        if self._greeted:
            return ""
        self._greeted = True
        session = self.session
        claim = None if fresh else session.claim  # `--new`: the cell says it starts fresh itself
        if isinstance(self.conversation, conversations.Notebook):
            kind = "notebook"
        else:
            kind = "kernel" if self.conversation.startswith(KERNEL_KEY) else "named"
        prompts = session.prompt_count() if claim is not None else None
        return conversations.greeting(self._start_action, claim, prompts, kind=kind)

    # --- entry point -----------------------------------------------------------

    @line_cell_magic
    def pi(self, line: str, cell: str | None = None) -> Any:
        """%%pi [-m PROVIDER/ID] [-t LEVEL] [--new] [--timeout S] [-i] [-o NAME] [-q] [--keep-going]
        + a prompt in the cell body or on the line (`%%pi Create a snake game`); `%pi PROMPT` too;
        %pi status|new|abort|model|models|thinking|stop|restart|logs|settings|trust-env|help"""
        if cell is None:
            return self._line(parse_line(line))
        return self._cell(parse_cell_args(line), cell)

    # --- %%pi --------------------------------------------------------------------

    def _cell(self, args: CellArgs, cell: str) -> PiResult:
        # The words on the magic line (`%%pi Create a snake game`), then the cell body.
        prompt = "\n\n".join(part for part in (args.prompt.strip(), cell.strip()) if part)
        if args.interpolate:
            prompt = interpolate(prompt, self.shell.user_ns if self.shell else {})
        if not prompt:
            raise UsageError(
                "%%pi needs a prompt: in the cell body, or on the line (`%%pi Create a snake game`). "
                "See `%pi help`."
            )
        session = self.session
        progress = _Progress(self.shell)
        live = _LiveOutput(self.shell, args.quiet)
        renderer = TurnRenderer(live.emit)
        folder = self.settings.workspace_path
        self.settings.check_workspace_pin()  # a folder replaced by a link is not even walked
        before = workspace.snapshot(folder)
        try:
            # A snapshot cut at its bound is not the folder: the secret check then walks it all.
            files = before if workspace.complete(before) else None
            report = session.open(progress=progress, workspace_files=files)
        except RpcError as e:  # PIMAGIC_MODEL names a model pi does not have
            raise self._model_error(e, self.settings.model, "PimagicSettings.model / PIMAGIC_MODEL") from None
        finally:
            progress.done()
        if report.action != "running":
            self._forget_model()  # a new pi: its model is read again
        greeting = self._greeting(report.action, args.new_session)
        if greeting:
            renderer.add_notice(greeting)
        for note in [*self._env_notes, *report.notes]:
            renderer.add_notice(note, warn=True)
        self._env_notes.clear()
        if args.new_session:
            session.new_session()
            renderer.add_notice("started a fresh pi session")
        restore = self._cell_overrides(args, renderer)

        started = time.monotonic()
        renderer.start_clock()
        interrupted = False
        broke: PimagicError | None = None
        try:
            timeout = args.timeout or self.settings.turn_timeout
            for event in session.prompt(prompt, timeout=timeout, tick=FLUSH_TICK):
                if event.get("type") == TICK:
                    renderer.tick()  # a pause: show what the throttle held back, keep the clock going
                else:
                    renderer.feed(event)
        except KeyboardInterrupt:
            # rpc.prompt's cleanup already sent `abort` and waited for agent_settled. Ctrl-C and
            # the toolbar's button are the same SIGINT: say "interrupted", not which.
            interrupted = True
            renderer.mark_aborted("interrupted; the sandbox and the session are kept")
        except PimagicError as e:
            renderer.add_error(str(e))
            broke = e  # pimagic's side (channel, sandbox, disk limit): not the provider's fault
        finally:
            restore()
        after = workspace.snapshot(folder)
        changed = workspace.diff(before, after, folder)
        bound = workspace.bound_note(before, after)  # a flood hides ordinary changes, never host-run ones
        if bound:
            renderer.add_notice(bound, warn=True)
        if changed.host_executable:
            renderer.add_notice(
                "the agent created or changed files your machine may run: "
                + ", ".join(map(escape_name, changed.host_executable)) + " (review before running anything here)",
                warn=True,
            )
        fails = self.settings.fail_on_error and not args.keep_going
        failure = None if interrupted or renderer.error is None else self._failure(renderer, fails, broke)
        result = renderer.finish(changed.changed, time.monotonic() - started)
        live.close(progress.handle is not None)
        self._refresh_panels()
        if self.shell is not None:
            self.shell.user_ns[RESULT_VAR] = result
            if args.out:
                self.shell.user_ns[args.out] = result
        if interrupted:
            display(result)  # the cell's only output; then one line instead of a traceback
            raise TurnInterrupted(result)
        if failure is not None and fails:
            display(result)
            raise TurnFailed(failure, result=result)  # Run All stops here
        return result

    def _forget_model(self, change: object = None) -> None:
        self._last_model = None

    def _cell_overrides(self, args: CellArgs, renderer: TurnRenderer) -> Callable[[], None]:
        """`-m` / `-t` hold for this cell only: set them now and return what puts the session's
        own back after the turn. Tells the renderer the model, so the footer names it at once."""
        session = self.session
        if not (args.model or args.thinking):  # nothing to set or restore: no round trip to pi
            if self._last_model is None:
                model = (session.state() or {}).get("model") or {}
                self._last_model = f"{model.get('provider')}/{model.get('id')}" if model.get("id") else ""
            if self._last_model:
                renderer.turn.model = self._last_model
            return lambda: None
        state = session.state() or {}
        before = state.get("model") or {}
        thinking = state.get("thinkingLevel")
        model = before

        def restore() -> None:
            with contextlib.suppress(PimagicError):  # pi gone: the next cell starts it with the settings
                if args.model and before and (before.get("provider"), before.get("id")) != (
                    args.model.provider, args.model.id
                ):
                    session.set_model(str(before.get("provider")), str(before.get("id")))
                if (args.model or args.thinking) and thinking:
                    session.set_thinking(thinking)  # a model switch may have clamped it too

        try:
            if args.model:
                model = self._set_model(args.model.provider, args.model.id, "-m")
            if args.thinking:
                session.set_thinking(args.thinking)
        except BaseException:
            restore()
            raise
        if model.get("id"):
            renderer.turn.model = f"{model.get('provider')}/{model.get('id')}"
        self._last_model = None  # the session's own model may differ after the restore: ask again
        return restore

    def _set_model(self, provider: str, model_id: str, where: str) -> dict:
        try:
            return self.session.set_model(provider, model_id)
        except RpcError as e:
            raise self._model_error(e, f"{provider}/{model_id}", where) from None

    def _model_error(self, error: RpcError, spec: str, where: str) -> PimagicError:
        """pi's "Model not found" as what is available instead; other RPC errors as they are."""
        if "model not found" not in error.message.lower():
            return error
        try:
            models = self.session.ensure().get_available_models()
        except PimagicError:
            models = []
        names = [f"{m.get('provider')}/{m.get('id')}" for m in models]
        return ModelNotFoundError(f"pi has no model {spec!r} (from {where})", hint=model_choices_hint(spec, names))

    def _failure(self, renderer: TurnRenderer, fails: bool, broke: PimagicError | None = None) -> str:
        """A failed turn: add what to do to the cell's output; return the cell's one-line error.
        `broke`: pimagic's own error (its hint is already shown), else pi reported the model's."""
        error, model = renderer.error or "", renderer.turn.model
        summary, todo = turn_failure(
            error, model, self._provider_url(model), aborted=renderer.aborted, own=broke is not None
        )
        if fails:
            todo += (" (this cell fails, so Run All stops here; `%%pi --keep-going` or "
                     "PIMAGIC_FAIL_ON_ERROR=false go on)")
        renderer.add_notice(f"what to do: {todo}", warn=True)
        return summary

    def _provider_url(self, model: str | None) -> str | None:
        """The provider's address as the user configured it (host-owned models.json, never the
        sandbox's copy), or None (a built-in provider, or none configured)."""
        if not model or "/" not in model:
            return None
        try:
            entry = providers.configured_providers(statedir.config_dir(self.settings)).get(model.split("/", 1)[0])
        except (OSError, PimagicError):
            return None
        url = entry.get("baseUrl") if isinstance(entry, dict) else None
        return url if isinstance(url, str) and url else None

    def _refresh_panels(self) -> None:
        """Keep open panels' status current (cheap: no docker stats); never fail the cell for it."""
        for panel in list(self.panels):
            try:
                panel.refresh_status(stats=False)
            except Exception:  # noqa: BLE001 - a stale status line must not break the cell
                pass

    # --- %pi SUBCOMMAND -------------------------------------------------------------

    def _line(self, cmd: LineCommand) -> Any:
        self._forget_model()  # a line command may switch or restart pi
        handler = getattr(self, f"_do_{cmd.name.replace('-', '_')}", None)
        if handler is None:  # parse_line already validated the name
            raise UsageError(f"%pi {cmd.name} is not implemented")
        return handler(cmd)

    def _do_prompt(self, cmd: LineCommand) -> PiResult:
        """`%pi Create a snake game`: a line that is not a subcommand is a prompt."""
        assert cmd.cell is not None  # parse_line sets it for "prompt"
        return self._cell(cmd.cell, "")

    def _do_help(self, cmd: LineCommand) -> None:
        print(HELP_TEXT)

    def _do_status(self, cmd: LineCommand) -> None:
        st = self.session.sandbox.status(with_stats=True)
        if st.state == "missing":  # before the first run: not an error
            print(f"{st.name}: not started yet (the first %%pi cell starts it)")
        else:
            print(st)
        print(self.session.policy_status())
        state = self.session.state()
        if state is None:
            print("pi: not running for this notebook (the next %%pi cell starts it)")
            return
        model = state.get("model") or {}
        print(
            f"pi: session {state.get('sessionId')}, model {model.get('provider')}/{model.get('id')}, "
            f"thinking {state.get('thinkingLevel')}, {conversations.prompts_text(self.session.prompt_count())}"
        )
        print(self._usage_line())

    def _usage_line(self) -> str:
        """The session's token usage and cost for `%pi status` (pi's get_session_stats)."""
        rpc = self.session.rpc
        try:
            return f"pi: {session_usage(rpc.get_session_stats())}" if rpc is not None else ""
        except PimagicError as e:
            return f"pi: token usage not available ({e.message})"

    def _do_new(self, cmd: LineCommand) -> None:
        self._open()
        print(f"new pi session {self.session.new_session()}")

    def _do_abort(self, cmd: LineCommand) -> None:
        print("aborted" if self.session.abort() else "nothing to abort")

    def _do_model(self, cmd: LineCommand) -> None:
        self._open()
        if cmd.model is not None:
            model = self._set_model(cmd.model.provider, cmd.model.id, "%pi model")
            self.settings.model = f"{model.get('provider', cmd.model.provider)}/{model.get('id', cmd.model.id)}"
        state = self.session.ensure().get_state()
        model = state.get("model") or {}
        print(f"{model.get('provider')}/{model.get('id')}" if model else "no model selected")

    def _do_models(self, cmd: LineCommand) -> None:
        self._open()
        models = self.session.ensure().get_available_models()
        if not models:
            print("no models available: configure a provider (see `%pi settings`)")
        for m in models:
            print(f"{m.get('provider')}/{m.get('id')}")

    def _do_thinking(self, cmd: LineCommand) -> None:
        self._open()
        if cmd.thinking:
            self.session.set_thinking(cmd.thinking)
            self.settings.thinking = cmd.thinking
        print(self.session.ensure().get_state().get("thinkingLevel"))

    def _do_stop(self, cmd: LineCommand) -> None:
        state = self.session.sandbox.state()
        self.session.stop()
        name = self.session.sandbox.name
        if state is None or not state.running:
            print(f"nothing to stop: {name} is not running")
        else:
            print(f"stopped {name} (kept, stopped: the next %%pi cell starts it again; `pimagic clean` removes it)")

    def _do_paranoid(self, cmd: LineCommand) -> None:
        """Show paranoid mode, or make the user's deliberate choice for the folder (kept across kernels)."""
        if cmd.on is not None:
            try:
                notes = self.session.set_paranoid(cmd.on, f"`%pi paranoid {'on' if cmd.on else 'off'}`")
            except PimagicError as e:
                if self.settings.paranoid != cmd.on:  # refused (a pin): nothing was recorded
                    raise
                notes = [f"recorded for the folder, but the running sandbox did not take it now ({e.message}); "
                         "the next %%pi cell applies it"]
            for note in notes:
                print(f"pimagic: {clean(note)}")
        print(self.session.policy_status())

    def _do_restart(self, cmd: LineCommand) -> None:
        progress = _Progress(self.shell)
        try:
            notes = self.session.restart(progress=progress).notes
        finally:
            progress.done()
        for note in notes:
            print(f"pimagic: {clean(note)}")
        print(f"restarted {self.session.sandbox.name} (a new container); session {self.session.session_id} continues")

    def _do_logs(self, cmd: LineCommand) -> None:
        # Both come from the sandbox: escape sequences (clipboard, title, cursor) are stripped.
        lines = cmd.lines or 50
        rpc = self.session.rpc
        stderr = clean("\n".join(rpc.stderr_tail.splitlines()[-lines:])).strip() if rpc is not None else ""
        logs = clean(self.session.sandbox.logs(tail=lines)).strip()
        if not stderr and not logs:
            print("no output yet from pi or the sandbox (none since it last started)")
            return
        if stderr:
            print("--- pi stderr ---")
            print(stderr)
        if logs:
            print("--- container logs ---")
            print(logs)

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
