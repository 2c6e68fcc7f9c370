"""`%pi settings`: an ipywidgets panel over the one :class:`PimagicSettings` object.

The widgets are linked to the settings traits (``traitlets.link``/``dlink``), so
`.env`, the settings object, the panel and ``%config PimagicSettings.x = ...``
always show the same values. Changes reach the running sandbox where pi allows
it without losing the conversation (``set_model``/``set_thinking_level`` over
RPC; paranoid mode through the settings trait that pushes the policy file);
run options (memory, CPUs) need a restart and the status line says so.

Every callback runs on the kernel's main thread (widget messages), never in a
background thread, and shows its failure in the panel instead of failing silently.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import ipywidgets as W
from traitlets import dlink, link

from . import piconfig
from .config import THINKING_LEVELS, PimagicSettings
from .errors import PimagicError

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
    for name, provider in piconfig.configured_providers(piconfig.config_dir(settings)).items():
        for model in (provider or {}).get("models") or []:
            if isinstance(model, dict) and model.get("id"):
                out.append(f"{name}/{model['id']}")
    return list(dict.fromkeys(out))


class SettingsPanel(W.VBox):
    """The settings panel: ``SettingsPanel(settings, session)``; display it in a notebook.

    ``session`` is a :class:`pimagic.session.PiSession` (or None: settings only).
    ``push_policy`` makes the panel push paranoid mode into the running sandbox
    itself; `%pi settings` turns it off because PiMagics already observes the trait.
    """

    def __init__(
        self, settings: PimagicSettings, session: Any = None, *, push_policy: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.session = session
        self._push_policy = push_policy
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
        self.paranoid_box.observe(self._setter("paranoid"), names="value")
        self.model_dropdown.observe(self._setter("model"), names="value")
        self.memory_text.observe(self._setter("memory"), names="value")
        self.cpus_text.observe(self._setter("cpus"), names="value")

        # settings -> the running sandbox and pi (also for %config while the panel is open).
        self._observe_settings(self._on_model, ["model"])
        self._observe_settings(self._on_thinking, ["thinking"])
        self._observe_settings(self._on_paranoid, ["paranoid"])
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
            if name == "paranoid":
                self._say_paranoid()

        return on_widget

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
            models = model_choices(self.session.ensure().get_available_models())
        else:
            models = configured_models(self.settings)
        self._set_model_options(models)
        return models

    # --- status ----------------------------------------------------------------------------------

    def refresh_status(self, *, stats: bool = True) -> str:
        lines: list[str] = []
        stale = False
        if self.session is not None:
            st = self.session.sandbox.status(with_stats=stats)
            stale = st.stale
            parts = [f"container <b>{html.escape(st.name)}</b>: {html.escape(st.state)}", *st.parts(escape=html.escape)]
            lines.append(" · ".join(parts))
            state = self.session.state() if st.state == "running" else None
            if state is not None:
                model = state.get("model") or {}
                current = f"{model.get('provider')}/{model.get('id')}" if model else "none"
                lines.append(
                    f"pi: model <b>{html.escape(current)}</b> · thinking {html.escape(str(state.get('thinkingLevel')))}"
                    f" · session {html.escape(str(state.get('sessionId')))} · {state.get('messageCount', 0)} messages"
                )
            else:
                want = self.settings.model or "pi's default"
                lines.append(f"pi: not running (starts with the next %%pi cell) · model {html.escape(want)}")
        else:
            lines.append("no session attached: settings only")
        if stale:
            lines.append(
                '<span class="pimagic-restart-needed" style="color:#b36b00"><b>restart needed:</b> memory/CPU or '
                "other run options changed since the container started; press Restart (the conversation is kept)"
                "</span>"
            )
        lines.append(f'<span style="color:#777">refreshed {time.strftime("%H:%M:%S")}</span>')
        self.status_html.value = "<br>".join(lines)
        return self.status_html.value

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
            self.session.configure_pi()  # pi's settings.json: defaultProvider/defaultModel
        if not value:
            self.info("model: pi's default (applies when pi starts)")
            return
        if not self._pi_running():
            self.info(f"model {value} saved; pi uses it when it starts")
            return
        provider, _, model_id = value.partition("/")
        current = (self.session.state() or {}).get("model") or {}
        if (current.get("provider"), current.get("id")) == (provider, model_id):
            return
        try:
            self.session.set_model(provider, model_id)
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
            self.session.configure_pi()
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
        container = self.session.sandbox.find()
        if container is None:
            return False
        container.reload()
        return container.status == "running"

    def _on_paranoid(self, change: dict) -> None:
        if self._push_policy and self._sandbox_running():
            self.session.sandbox.apply_policy()

    def _say_paranoid(self) -> None:
        on = self.settings.paranoid
        what = "ON: gh account/repository administration is blocked" if on else "OFF"
        running = self._guard("check the sandbox", self._sandbox_running)
        when = "from the next gh call in the sandbox" if running else "when the sandbox starts"
        self.info(f"paranoid mode {what} ({when})")

    def _on_run_option(self, change: dict) -> None:
        self.refresh_status(stats=False)
        if self.session is not None and self.session.sandbox.status().stale:
            self.info(f"{change['name']} = {change['new']}: press Restart to apply (the conversation is kept)")

    # --- actions ----------------------------------------------------------------------------------

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
        session.restart()
        self.info(f"restarted {session.sandbox.name}; session {session.session_id} resumed")
        self.refresh()

    def stop(self) -> None:
        session = self._need_session()
        session.stop()
        self.info(f"stopped {session.sandbox.name} (the next %%pi cell starts it again)")
        self.refresh_status(stats=False)

    def add_server(self, url: str | None = None) -> str:
        """Register a local OpenAI-compatible server and select its first model; returns provider/id."""
        from .relay import add_model_server, normalize_base_url

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
            session.ensure()
        self.settings.model = choice
        self._set_model_options([*self._option_values(), *(f"{provider}/{i}" for i in ids)])
        self.info(f"added {provider} with {len(ids)} model(s){relayed}; model {choice} selected")
        self.refresh_status(stats=False)
        return choice


def settings_panel(magics: Any) -> SettingsPanel:
    """`%pi settings`: the panel over the extension's settings and this notebook's session.
    The magic refreshes its status line after every `%%pi` cell."""
    panel = SettingsPanel(magics.settings, magics.session, push_policy=False)
    magics.panels.add(panel)
    return panel
