"""`%pi settings`: an ipywidgets panel over the one :class:`PimagicSettings` object.

The widgets are linked to the settings traits (``traitlets.link``/``dlink``), so
`.env`, the settings object, the panel and ``%config PimagicSettings.x = ...``
always show the same values. Changes reach the running sandbox where pi allows
it without losing the conversation (``set_model``/``set_thinking_level`` over
RPC; paranoid mode as the user's deliberate choice for the folder, recorded host-only so it
outlives the kernel (pimagic.policy), then pushed to the running sandbox); run options (memory,
CPUs) need a restart and the status line says so.

A saved notebook reopened without a kernel, or exported by nbconvert, cannot show the live
panel: its text/plain and text/html are a snapshot of the values at display time, marked as one.

Every callback runs on the kernel's main thread (widget messages), never in a
background thread, and shows its failure in the panel instead of failing silently.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import ipywidgets as W
from traitlets import dlink, link

from . import conversations, policy, providers, statedir
from .config import THINKING_LEVELS, PimagicSettings, parse_model
from .errors import PimagicError
from .session import configure_pi

__all__ = ["SettingsPanel", "model_choices", "settings_panel"]

DEFAULT_CHOICE = ("(pi default)", "")
_RESTART_TRAITS = ["memory", "cpus", "pids_limit", "tmpfs_size", "image"]


def model_choices(models: Iterable[dict[str, Any]]) -> list[str]:
    """``provider/id`` of pi model objects (``get_available_models``), in order, without duplicates."""
    out = [f"{m.get('provider')}/{m.get('id')}" for m in models if m.get("provider") and m.get("id")]
    return list(dict.fromkeys(out))


def configured_models(settings: PimagicSettings) -> list[str]:
    """``provider/id`` of the models in the folder's host-owned models.json (no pi needed)."""
    out: list[str] = []
    for name, provider in providers.configured_providers(statedir.config_dir(settings)).items():
        for model in (provider or {}).get("models") or []:
            if isinstance(model, dict) and model.get("id"):
                out.append(f"{name}/{model['id']}")
    return list(dict.fromkeys(out))


class SettingsPanel(W.VBox):
    """The settings panel: ``SettingsPanel(settings, session)``; display it in a notebook.

    ``session`` is a :class:`pimagic.session.PiSession` (or None: settings only); it pushes
    paranoid mode into the running sandbox itself when the setting changes.
    """

    def __init__(
        self, settings: PimagicSettings, session: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.session = session
        self._quiet = False  # set while the panel itself changes widget options
        self._reverting = False
        self._links: list[Any] = []
        self._observers: list[tuple[Callable, list[str]]] = []
        self.messages: list[str] = []  # every message shown, newest last (for tests and debugging)

        full = W.Layout(width="auto")
        style = {"description_width": "110px"}
        self.title_html = W.HTML("<b>pimagic settings</b>")
        self.paranoid_box = W.Checkbox(
            description="Paranoid mode: block gh auth/repo/secret/ssh-key/gpg-key/config",
            indent=False, layout=full,
        )
        self.model_dropdown = W.Dropdown(description="Model", options=[DEFAULT_CHOICE], style=style, layout=full)
        self.thinking_dropdown = W.Dropdown(
            description="Thinking", options=[DEFAULT_CHOICE, *[(lvl, lvl) for lvl in THINKING_LEVELS]],
            style=style,
        )
        self.memory_text = W.Text(description="Memory", continuous_update=False, style=style)
        self.cpus_text = W.BoundedFloatText(description="CPUs", min=0.1, max=512, step=0.5, style=style)
        self.server_url = W.Text(
            placeholder="http://127.0.0.1:8080/v1  (llama.cpp, Ollama, LM Studio, vLLM)",
            description="Model server", continuous_update=False, style=style, layout=W.Layout(width="60%"),
        )
        self.add_server_button = W.Button(description="Add server", icon="plus", tooltip="list its models, register")
        self.status_html = W.HTML()
        self.message_html = W.HTML()
        self.refresh_button = W.Button(description="Refresh", icon="refresh", tooltip="status and model list")
        self.new_button = W.Button(description="New session", icon="file")
        self.restart_button = W.Button(description="Restart", icon="repeat", tooltip="new container, same session")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="warning")

        for widget, css in [
            (self, "pimagic-settings"), (self.paranoid_box, "pimagic-paranoid"),
            (self.model_dropdown, "pimagic-model"), (self.thinking_dropdown, "pimagic-thinking"),
            (self.memory_text, "pimagic-memory"), (self.cpus_text, "pimagic-cpus"),
            (self.server_url, "pimagic-server-url"), (self.add_server_button, "pimagic-add-server"),
            (self.status_html, "pimagic-status"), (self.message_html, "pimagic-message"),
            (self.refresh_button, "pimagic-refresh"), (self.new_button, "pimagic-new"),
            (self.restart_button, "pimagic-restart"), (self.stop_button, "pimagic-stop"),
        ]:
            widget.add_class(css)

        self.children = [
            self.title_html,
            self.paranoid_box,
            self.model_dropdown,
            self.thinking_dropdown,
            W.HBox([self.memory_text, self.cpus_text]),
            W.HBox([self.server_url, self.add_server_button]),
            W.HBox([self.refresh_button, self.new_button, self.restart_button, self.stop_button]),
            self.status_html,
            self.message_html,
        ]

        # settings -> widgets: links. widgets -> settings: guarded setters (a bad value is
        # shown in the panel and the widget snaps back, instead of an error in the kernel log).
        self._links.append(dlink((settings, "paranoid"), (self.paranoid_box, "value")))
        self._links.append(link((settings, "thinking"), (self.thinking_dropdown, "value")))
        self._links.append(dlink((settings, "model"), (self.model_dropdown, "value"), self._model_option))
        self._links.append(dlink((settings, "memory"), (self.memory_text, "value")))
        self._links.append(dlink((settings, "cpus"), (self.cpus_text, "value")))
        self.paranoid_box.observe(self._on_paranoid_box, names="value")
        self.model_dropdown.observe(self._setter("model"), names="value")
        self.memory_text.observe(self._setter("memory"), names="value")
        self.cpus_text.observe(self._setter("cpus"), names="value")

        # settings -> the running sandbox and pi (also for %config while the panel is open).
        self._observe_settings(self._on_model, ["model"])
        self._observe_settings(self._on_thinking, ["thinking"])
        self._observe_settings(self._on_run_option, _RESTART_TRAITS)

        self.refresh_button.on_click(lambda _: self._guard("refresh", self.refresh))
        self.new_button.on_click(lambda _: self._guard("new session", self.new_session))
        self.restart_button.on_click(lambda _: self._guard("restart", self.restart))
        self.stop_button.on_click(lambda _: self._guard("stop", self.stop))
        self.add_server_button.on_click(lambda _: self._guard("add server", self.add_server))

        self._guard("refresh", self.refresh, stats=False)

    # --- plumbing -----------------------------------------------------------------------------

    def _observe_settings(self, handler: Callable, names: list[str]) -> None:
        def guarded(change: dict) -> None:
            self._guard(f"apply {change['name']}", handler, change)

        self.settings.observe(guarded, names=names)
        self._observers.append((guarded, names))

    def close(self) -> None:
        """Detach from the settings object (no more updates to pi from this panel), then close."""
        for handler, names in self._observers:
            try:
                self.settings.unobserve(handler, names=names)
            except ValueError:
                pass
        self._observers.clear()
        for lnk in self._links:
            try:
                lnk.unlink()
            except Exception:
                pass
        self._links.clear()
        super().close()

    @contextmanager
    def _quietly(self):
        old, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = old

    def _guard(self, action: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run a callback; any failure is shown in the panel (never only in the kernel log)."""
        try:
            return fn(*args, **kwargs)
        except PimagicError as e:
            self.error(f"{action} failed: {e}")
        except Exception as e:  # a bug or a library error: still visible
            self.error(f"{action} failed: {type(e).__name__}: {e}")
        return None

    def _setter(self, name: str) -> Callable[[dict], None]:
        def on_widget(change: dict) -> None:
            if self._quiet:
                return
            try:
                setattr(self.settings, name, change["new"])
            except Exception as e:
                text = str(e) if isinstance(e, PimagicError) else f"{type(e).__name__}: {e}"
                current = getattr(self.settings, name)
                if current == change["new"]:  # set, but an observer (e.g. pushing the policy) failed
                    self.error(f"{name} = {current!r} saved, but applying it failed: {text}")
                    return
                with self._quietly():  # snap the widget back to the settings' value; say why
                    widget = change["owner"]
                    widget.value = self._model_option(current) if name == "model" else current
                self.error(f"{name} not changed: {text}")
                return

        return on_widget

    def _on_paranoid_box(self, change: dict) -> None:
        """Ticking or unticking is the user's deliberate choice for the folder: recorded on the
        host (it outlives this kernel), then pushed, even when that lowers another notebook's."""
        if self._quiet:
            return
        on = change["new"]
        try:
            if self.session is not None:
                notes = self.session.set_paranoid(on, "the settings panel")
            else:
                policy.choose(self.settings, on, "the settings panel")
                notes = []
        except Exception as e:
            text = str(e) if isinstance(e, PimagicError) else f"{type(e).__name__}: {e}"
            with self._quietly():
                self.paranoid_box.value = self.settings.paranoid
            if self.settings.paranoid == on:  # recorded, but pushing it into the sandbox failed
                self.error(f"paranoid = {on!r} saved, but applying it failed: {text}")
            else:
                self.error(f"paranoid not changed: {text}")
            self._guard("refresh", self.refresh_status, stats=False)
            return
        self._say_paranoid()
        for note in notes:
            self.info(f"note: {note}")
        self._guard("refresh", self.refresh_status, stats=False)

    def info(self, text: str) -> None:
        self.messages.append(text)
        self.message_html.value = f'<span class="pimagic-info">{html.escape(text)}</span>'

    def error(self, text: str) -> None:
        self.messages.append(text)
        self.message_html.value = (
            f'<pre class="pimagic-error" style="color:#b00020;white-space:pre-wrap;margin:0">'
            f"{html.escape(text)}</pre>"
        )

    # --- model list ----------------------------------------------------------------------------

    def _model_option(self, value: str) -> str:
        """dlink transform: make sure the settings' model is one of the dropdown's options."""
        if value not in [v for _, v in self._option_pairs()]:
            self._set_model_options([*self._option_values(), value], keep=value)
        return value

    def _option_pairs(self) -> list[tuple[str, str]]:
        opts = self.model_dropdown.options
        return [o if isinstance(o, tuple) else (o, o) for o in opts]

    def _option_values(self) -> list[str]:
        return [v for _, v in self._option_pairs() if v]

    def _set_model_options(self, values: Iterable[str], *, keep: str | None = None) -> None:
        keep = self.settings.model if keep is None else keep
        values = list(dict.fromkeys(v for v in [*values, keep] if v))
        with self._quietly():
            self.model_dropdown.options = [DEFAULT_CHOICE, *[(v, v) for v in values]]
            self.model_dropdown.value = keep

    def _pi_running(self) -> bool:
        s = self.session
        return s is not None and getattr(s, "rpc", None) is not None and s.alive()

    def load_models(self, *, start: bool = False) -> list[str]:
        """Fill the model dropdown from pi (running, or started when ``start``), else from models.json."""
        if self.session is not None and (start or self._pi_running()):
            self._open()
            models = model_choices(self.session.ensure().get_available_models())
        else:
            models = configured_models(self.settings)
        self._set_model_options(models)
        return models

    # --- status ----------------------------------------------------------------------------------

    def refresh_status(self, *, stats: bool = True) -> str:
        """The status line: the sandbox, paranoid mode (as the host recorded it), pi. The Stop
        button is enabled only while the sandbox runs."""
        lines: list[str] = []
        stale = running = False
        self.stop_button.disabled = True  # until the engine says it runs (an error leaves it off)
        if self.session is not None:
            st = self.session.sandbox.status(with_stats=stats)
            stale, running = st.stale, st.state == "running"
            if st.state == "missing":  # before the first run: nothing is wrong
                lines.append(f"sandbox <b>{html.escape(st.name)}</b>: not started yet (the first %%pi cell starts it)")
            else:
                parts = st.parts(escape=html.escape)
                lines.append(" · ".join([f"sandbox <b>{html.escape(st.name)}</b>: {html.escape(st.state)}", *parts]))
            lines.append(_paranoid_html(self.session.policy_status(), self.settings.paranoid))
            state = self.session.state() if running else None
            if state is not None:
                model = state.get("model") or {}
                current = f"{model.get('provider')}/{model.get('id')}" if model else "none"
                lines.append(
                    f"pi: model <b>{html.escape(current)}</b> · thinking {html.escape(str(state.get('thinkingLevel')))}"
                    f" · session {html.escape(str(state.get('sessionId')))} · {self._prompts()}"
                )
            else:
                want = self.settings.model or "pi's default"
                lines.append(f"pi: not running (starts with the next %%pi cell) · model {html.escape(want)}")
        else:
            lines.append("no session attached: settings only")
            lines.append(_paranoid_html(policy.status(self.settings, None), self.settings.paranoid))
        if stale:
            lines.append(
                '<span class="pimagic-restart-needed" style="color:#b36b00"><b>restart needed:</b> memory/CPU or '
                "other run options changed since the container started; press Restart (the conversation is kept)"
                "</span>"
            )
        lines.append(f'<span style="color:#777">refreshed {time.strftime("%H:%M:%S")}</span>')
        self.status_html.value = "<br>".join(lines)
        self.stop_button.disabled = not running
        return self.status_html.value

    def _prompts(self) -> str:
        """How many prompts the conversation holds (not pi's message count); starts nothing."""
        rpc = getattr(self.session, "rpc", None)
        try:
            count = rpc.get_session_stats().get("userMessages") if rpc is not None else None
        except PimagicError:
            count = None
        return conversations.prompts_text(count if isinstance(count, int) and count >= 0 else None)

    def refresh(self, *, stats: bool = True) -> None:
        """Status and model list, without starting anything."""
        try:
            self.load_models()
        finally:
            self.refresh_status(stats=stats)

    # --- settings -> sandbox -------------------------------------------------------------------

    def _on_model(self, change: dict) -> None:
        if self._reverting:
            return
        value = change["new"]
        if self.session is not None:
            configure_pi(self.settings)  # pi's settings.json: defaultProvider/defaultModel
        if not value:
            self.info("model: pi's default (applies when pi starts)")
            return
        if not self._pi_running():
            self.info(f"model {value} saved; pi uses it when it starts")
            return
        model = parse_model(value)
        current = (self.session.state() or {}).get("model") or {}
        if (current.get("provider"), current.get("id")) == (model.provider, model.id):
            return
        try:
            self.session.set_model(model.provider, model.id)
        except PimagicError:
            self._revert("model", change["old"])
            raise
        self.info(f"model switched to {value}; the conversation is kept")
        self.refresh_status(stats=False)

    def _on_thinking(self, change: dict) -> None:
        if self._reverting:
            return
        value = change["new"]
        if self.session is not None:
            configure_pi(self.settings)
        if not value or not self._pi_running():
            self.info(f"thinking level {value or 'default'} saved; pi uses it when it starts")
            return
        try:
            self.session.set_thinking(value)
        except PimagicError:
            self._revert("thinking", change["old"])
            raise
        self.info(f"thinking level set to {value}; the conversation is kept")
        self.refresh_status(stats=False)

    def _revert(self, name: str, old: Any) -> None:
        self._reverting = True
        try:
            setattr(self.settings, name, old)
        finally:
            self._reverting = False

    def _sandbox_running(self) -> bool:
        if self.session is None:
            return False
        state = self.session.sandbox.state()
        return state is not None and state.running

    def _say_paranoid(self) -> None:
        on = self.settings.paranoid
        what = "ON: gh account/repository administration is blocked" if on else "OFF"
        running = self._guard("check the sandbox", self._sandbox_running)
        when = "from the next gh call in the sandbox" if running else "when the sandbox starts"
        self.info(f"paranoid mode {what} ({when}); kept for this folder: later kernels start with it")

    def _on_run_option(self, change: dict) -> None:
        self.refresh_status(stats=False)
        if self.session is not None and self.session.sandbox.status().stale:
            self.info(f"{change['name']} = {change['new']}: press Restart to apply (the conversation is kept)")

    # --- actions ----------------------------------------------------------------------------------

    def _open(self) -> None:
        """Start pi when needed; what the start did is shown in the panel."""
        self._say(self._need_session().open().notes)

    def _say(self, notes) -> None:
        for note in notes:
            self.info(f"note: {note}")

    def _need_session(self) -> Any:
        if self.session is None:
            raise PimagicError("no session attached to this panel", hint="use `%pi settings`")
        return self.session

    def new_session(self) -> str:
        sid = self._need_session().new_session()
        self.info(f"new pi session {sid}")
        self.refresh_status(stats=False)
        return sid

    def restart(self) -> None:
        session = self._need_session()
        self.info("restarting the sandbox…")
        self._say(session.restart().notes)
        self.info(f"restarted {session.sandbox.name}; session {session.session_id} resumed")
        self.refresh()

    def stop(self) -> None:
        session = self._need_session()
        if not self._sandbox_running():
            self.info(f"nothing to stop: {session.sandbox.name} is not running")
        else:
            session.stop()
            self.info(f"stopped {session.sandbox.name} (kept, stopped: the next %%pi cell starts it again)")
        self.refresh_status(stats=False)

    # --- what a saved notebook shows ----------------------------------------------------------

    def snapshot(self) -> dict[str, str]:
        """text/plain and text/html of the panel's values now, marked as a snapshot: what a saved
        notebook reopened without a kernel (or an nbconvert export) shows instead of the live panel."""
        s = self.settings
        paranoid = f"ON ({policy.describe(s)})" if s.paranoid else "off"
        rows = [
            ("Paranoid mode", paranoid),
            ("Model", s.model or "pi's default"),
            ("Thinking", s.thinking or "pi's default"),
            ("Memory", s.memory),
            ("CPUs", f"{s.cpus:g}"),
        ]
        status = [line for line in _html_text(self.status_html.value).splitlines() if line.strip()]
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        head = f"pimagic settings: a snapshot taken {when}, not live (run `%pi settings` in a kernel to change them)"
        text = "\n".join([head, *(f"  {k}: {v}" for k, v in rows), *(f"  {line}" for line in status)])
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                        for k, v in rows)
        status_html = "".join(f"<div>{html.escape(line)}</div>" for line in status)
        page = (f'<div class="pimagic-settings-snapshot"><p><b>pimagic settings</b>: a snapshot taken '
                f"{html.escape(when)}, not live (run <code>%pi settings</code> in a kernel to change them)</p>"
                f"<table>{cells}</table>{status_html}</div>")
        return {"text/plain": text, "text/html": page}

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """The widget view (first, for a live front end) plus the snapshot in place of ipywidgets'
        Python repr (whose checkbox value could be stale or wrong)."""
        data = super()._repr_mimebundle_(**kwargs)
        if data is None:
            return None
        data.update(self.snapshot())
        return data

    def add_server(self, url: str | None = None) -> str:
        """Register a local OpenAI-compatible server and select its first model; returns provider/id."""
        from .providers import add_model_server, normalize_base_url

        url = (url if url is not None else self.server_url.value).strip()
        if not url:
            raise PimagicError("enter the server's URL first, e.g. http://127.0.0.1:8080/v1")
        session = self._need_session()
        self.info(f"asking {url} for its models…")
        provider, ids, sandbox_url = add_model_server(self.settings, session.sandbox.client, url)
        relayed = f" (relayed: the sandbox uses {sandbox_url})" if sandbox_url != normalize_base_url(url) else ""
        choice = f"{provider}/{ids[0]}"
        if self._pi_running():
            # pi reads models.json when it starts: restart the pi process, not the container;
            # --session-id resumes the same conversation.
            session.close()
            self._open()
        self.settings.model = choice
        self._set_model_options([*self._option_values(), *(f"{provider}/{i}" for i in ids)])
        self.info(f"added {provider} with {len(ids)} model(s){relayed}; model {choice} selected")
        self.refresh_status(stats=False)
        return choice


def _html_text(fragment: str) -> str:
    """Our own status HTML as plain text (line breaks kept)."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment.replace("<br>", "\n")))


def _paranoid_html(line: str, on: bool) -> str:
    color = "#b00020" if on else "#555"
    return f'<span class="pimagic-paranoid-status" style="color:{color}">{html.escape(line)}</span>'


def settings_panel(magics: Any) -> SettingsPanel:
    """`%pi settings`: the panel over the extension's settings and this notebook's session.
    The magic refreshes its status line after every `%%pi` cell."""
    panel = SettingsPanel(magics.settings, magics.session)
    magics.panels.add(panel)
    return panel
