"""pimagic: drive the pi coding agent from Jupyter, inside a hardened Docker sandbox.

    %load_ext pimagic
    %%pi
    Create a snake game in python
"""

from __future__ import annotations

from typing import Any

from .config import PimagicSettings, load_settings
from .errors import PimagicError

__all__ = ["PimagicError", "PimagicSettings", "load_ipython_extension", "load_settings"]
__version__ = "0.1.0"

_magics: Any = None


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext pimagic`: register `%pi`/`%%pi` and the `PimagicSettings` config object."""
    global _magics
    from .magics import PiMagics, prompt_on_magic_line
    from .sandbox import reload_if_sandbox_gone

    # A bad value must not stop the extension from loading: it is named (all of them at once)
    # and only what needs a sandbox is refused until it is fixed.
    settings = load_settings(parent=ipython, defer_errors=True)
    settings = reload_if_sandbox_gone(settings, lambda: load_settings(parent=ipython, defer_errors=True))
    if settings not in ipython.configurables:
        ipython.configurables.append(settings)  # makes `%config PimagicSettings...` work
    _magics = PiMagics(ipython, settings)
    ipython.register_magics(_magics)
    cleanup = ipython.input_transformers_cleanup
    if prompt_on_magic_line not in cleanup:
        cleanup.append(prompt_on_magic_line)
    print(GREETING)
    for note in settings.env_notes:  # also repeated in the next %%pi cell
        print(f"pimagic: {note}")
    if settings.env_errors:
        from .config import InvalidSettingsError

        print(f"pimagic: {InvalidSettingsError(list(settings.env_errors.values()))}")
    # In a kernel: the sandbox and pi start now, in the background (image present only), so the
    # first cell does not wait for them; it joins a start still in flight (pimagic.warmstart).
    _magics.start_in_background()


GREETING = (
    "pimagic: `%%pi` + a prompt (in the cell, or on the line: `%%pi Create a snake game`) runs the pi "
    "agent in a Docker sandbox of this folder; `%pi help` lists the rest"
)


def unload_ipython_extension(ipython: Any) -> None:
    global _magics
    from .magics import prompt_on_magic_line

    cleanup = ipython.input_transformers_cleanup
    if prompt_on_magic_line in cleanup:
        cleanup.remove(prompt_on_magic_line)
    if _magics is not None and _magics._session is not None:
        _magics._session.close()
    _magics = None
