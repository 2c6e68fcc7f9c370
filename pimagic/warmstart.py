"""Start the sandbox and pi in the background when a kernel loads the extension, so the first
`%%pi` cell, typed a few seconds later, answers about as fast as a follow-up.

Only in a Jupyter kernel (a notebook's first cell is what waits; a terminal IPython or a script
that makes a shell starts at its first cell as before), only with `warm_start` on, and only when
the image is already there: nothing is built that nobody asked for. Nothing here blocks
`%load_ext` or raises: a start that fails is simply not kept, and the first cell starts as it
always did and shows that error itself. `PiSession.open` joins a start in flight (see its lock).

Settings: the start uses them as `%load_ext` left them (after the `.env` trust check; none with an
invalid value). Any change before the first cell (`%config`, `%pi trust-env`, the panel) is
applied by that cell as a start would: pi restarted, the container replaced when its run options
changed, a new token stored in the container this start made. The sandbox's write window (see
pimagic.envtrust) opens at `%load_ext` instead of at the first cell: a `.env` edited after that is
judged as one edited while a sandbox ran, the strict side.

Inside pi, the image's preload container/pi-warm.js loads the model API's code the first prompt
would load; here, once the start succeeded, the kernel loads what its first answer needs
(markdown-it and its parser, about 35 ms on the first render).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .errors import PimagicError

log = logging.getLogger(__name__)


class WarmStart:
    """The background start of one session; `outcome` says what it did (for tests and debugging):
    "starting", "started", "skipped: ..." or "failed: ...". Never raises."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.outcome = "starting"
        self.thread = threading.Thread(target=self._run, name="pimagic-warm-start", daemon=True)

    def begin(self) -> WarmStart:
        self.thread.start()
        return self

    def wait(self, timeout: float | None = None) -> str:
        self.thread.join(timeout)
        return self.outcome

    def _run(self) -> None:
        from .image import image_exists, image_tag

        session = self.session
        report = None
        try:
            tag = image_tag(session.settings)
            if not image_exists(session.sandbox.client, tag):  # the client: no engine raises here
                self.outcome = f"skipped: image {tag} is not built (the first cell builds it)"
                return
            report = session.warm()
            self.outcome = "skipped: a cell started it first" if report is None else f"started ({report.action})"
        except (PimagicError, OSError) as e:
            self.outcome = f"failed: {e}"
            return
        except Exception as e:  # noqa: BLE001 - a background thread has nobody to raise to; the cell retries
            self.outcome = f"failed: {type(e).__name__}: {e}"
            log.debug("pimagic warm start failed", exc_info=True)
            return
        if report is not None:
            self._prepare_first_answer()

    def _prepare_first_answer(self) -> None:
        """What the first cell would otherwise do for the first time itself; best effort."""
        try:
            self.session.prompt_count()  # pi's first answer to it is slow; the first cell's greeting asks
            warm_renderer()
        except Exception:  # noqa: BLE001 - the first cell then does it, as before
            log.debug("pimagic: preparing the first answer failed", exc_info=True)


def warm_renderer() -> None:
    """Import and build what rendering the first answer needs (the Markdown parser), so the first
    cell does not pay for it. Pure computation on a constant: nothing from the sandbox."""
    from .sanitize import html_prose

    html_prose("*pimagic*")


def wanted(shell: Any, settings: Any) -> bool:
    """Warm-start for this shell? In a kernel, with the setting on and no invalid setting (the
    first cell names those and starts nothing until they are fixed)."""
    in_kernel = shell is not None and hasattr(shell, "kernel")
    return in_kernel and bool(settings.warm_start) and not getattr(settings, "env_errors", None)
