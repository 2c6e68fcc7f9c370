"""What to tell the user when a turn or a model choice fails: pure text, no I/O.

pi's own messages are written for its TUI ("Connection error.: connect ECONNREFUSED ...",
"Model not found: x/y"); a notebook user needs the provider, its address and the next step.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["model_choices_hint", "tidy_error", "turn_failure", "unreachable"]

# pi joins an SDK message that ends in a full stop with its cause: "Connection error.: bad port".
_DOUBLED = re.compile(r"(?<=\w)[.!?]+(?=[:;,])")
_UNREACHABLE = re.compile(
    r"ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|"
    r"connection error|fetch failed|socket hang up|bad port|other side closed",
    re.IGNORECASE,
)


def tidy_error(message: str) -> str:
    """pi's error text without doubled punctuation ("error.: x" -> "error: x")."""
    return _DOUBLED.sub("", message)


def unreachable(message: str) -> bool:
    """The error says the model server could not be reached (down, wrong port, no route)."""
    return bool(_UNREACHABLE.search(message))


def turn_failure(
    error: str, model: str | None, base_url: str | None, *, aborted: bool = False, own: bool = False
) -> tuple[str, str]:
    """``(summary, what to do)`` for a failed turn. ``summary`` is one line (the cell's error line);
    ``base_url``: the provider's address as the user configured it (None for built-in providers);
    ``own``: pimagic's side failed (pi's channel, the sandbox, the write limit), not the provider."""
    provider = model.split("/", 1)[0] if model else None
    where = f"provider {provider!r}" if provider else "the model provider"
    if base_url:
        where += f" at {base_url}"
    first = tidy_error(error).strip().splitlines()[0] if error.strip() else "unknown error"
    switch = "pick another model (`%pi models` lists them, `%pi model PROVIDER/ID` switches)"
    if aborted:
        return f"the turn was aborted: {first}", "run the cell again, or raise `--timeout` if the turn needs longer"
    if "did not finish within" in error:
        return f"the turn timed out: {first}", (
            "raise `--timeout SECONDS` (or PimagicSettings.turn_timeout), or ask for less"
        )
    if own:  # its hint is already in the cell; do not send the user after the provider
        return first, "run the cell again; `%pi logs` shows pi's side"
    if unreachable(error):
        summary = f"cannot reach {where}: {first}"
        start = "start the model server" + (f" (it must answer at {base_url})" if base_url else "")
        return summary, f"{start}, or {switch}; `%pi settings` adds or changes a local server"
    if re.search(r"\b(401|403)\b|unauthori[sz]ed|invalid (api )?key|authentication", error, re.IGNORECASE):
        return f"{where} refused the request: {first}", (
            "check the provider's API key (`pimagic run -- /login`, or the key in pi-config/models.json), "
            f"or {switch}"
        )
    return f"{where} failed the turn: {first}", f"run the cell again, or {switch}; `%pi logs` shows pi's side"


def model_choices_hint(wanted: str, available: Iterable[str], *, shown: int = 8) -> str:
    """The models closest to ``wanted`` (same provider first), and where to see them all."""
    names = sorted(set(available))
    if not names:
        return "pi has no model configured: add a provider or a local server in `%pi settings`"
    provider = wanted.split("/", 1)[0]
    close = difflib.get_close_matches(wanted, names, n=shown, cutoff=0.4)
    same = [n for n in names if n.split("/", 1)[0] == provider]
    picks = list(dict.fromkeys([*close, *same, *names]))[:shown]  # closest, same provider, the rest
    label = "closest" if close else "available"
    more = f" (of {len(names)}; `%pi models` lists them all)" if len(names) > len(picks) else " (`%pi models`)"
    return f"{label}: {', '.join(picks)}{more}; `%pi settings` adds a provider or a local server"
