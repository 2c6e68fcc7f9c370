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
    from .magics import PiMagics
    from .sandbox import reload_if_sandbox_gone

    settings = load_settings(parent=ipython)
    settings = reload_if_sandbox_gone(settings, lambda: load_settings(parent=ipython))
    if settings not in ipython.configurables:
        ipython.configurables.append(settings)  # makes `%config PimagicSettings...` work
    _magics = PiMagics(ipython, settings)
    ipython.register_magics(_magics)
    for note in settings.env_notes:  # also repeated in the next %%pi cell
        print(f"pimagic: {note}")


def unload_ipython_extension(ipython: Any) -> None:
    global _magics
    if _magics is not None and _magics._session is not None:
        _magics._session.close()
    _magics = None
