"""Magic arguments -> typed values. Executes nothing, touches no session.

``%%pi [options]`` becomes a frozen :class:`CellArgs`, ``%pi SUBCOMMAND ...`` a frozen
:class:`LineCommand`. Every mistake raises IPython's ``UsageError`` (never ``SystemExit``) with a
hint that names the valid choices. The only IPython import is ``UsageError``.
"""

from __future__ import annotations

import argparse
import difflib
import keyword
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from IPython.core.error import UsageError

__all__ = [
    "HELP_TEXT",
    "LINE_COMMANDS",
    "THINKING_LEVELS",
    "CellArgs",
    "LineCommand",
    "ModelRef",
    "interpolate",
    "parse_cell_args",
    "parse_line",
    "parse_model",
]

# pi's set_thinking_level accepts these; "xhigh" and "max" only on models that support them.
THINKING_LEVELS = ("off", "minimal", "low", "medium", "high", "xhigh", "max")

CELL_OPTIONS = """\
  -m, --model PROVIDER/ID   model for this cell (e.g. anthropic/claude-sonnet-4-5)
  -t, --thinking LEVEL      thinking level: off|minimal|low|medium|high|xhigh|max
  --new                     start a fresh pi session before this prompt
  --timeout SECONDS         abort the turn after SECONDS (a positive number)
  -i, --interpolate         substitute {name} / {name.attr} from the user namespace ({{ }} = braces)
  -o, --out NAME            bind the PiResult to variable NAME
  -q, --quiet               no live streaming; show only the final result"""

# name -> (usage, description); order is the order of `%pi help`.
LINE_COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("status", "sandbox, session, model and token usage"),
    "new": ("new", "start a fresh pi session (alias: reset)"),
    "abort": ("abort", "abort the running turn"),
    "model": ("model [PROVIDER/ID]", "show or set the model"),
    "models": ("models", "list the models pi can use"),
    "thinking": ("thinking [LEVEL]", "show or set the thinking level"),
    "stop": ("stop", "stop and remove the sandbox container"),
    "restart": ("restart", "restart the sandbox (new container, new session)"),
    "logs": ("logs [-n N]", "last N lines of pi's stderr / container logs"),
    "settings": ("settings", "show the settings panel"),
    "trust-env": ("trust-env", "load the folder's .env pimagic refused (after you checked it)"),
    "help": ("help", "this text"),
}
LINE_ALIASES = {"reset": "new"}

HELP_TEXT = (
    "%%pi [options]  --  send the cell body to the pi coding agent (in its Docker sandbox)\n"
    + CELL_OPTIONS
    + "\n\n%pi SUBCOMMAND\n"
    + "\n".join(f"  {usage:<22}{desc}" for usage, desc in LINE_COMMANDS.values())
    + "\n\nExamples:\n"
    "  %%pi -m anthropic/claude-sonnet-4-5 -t high\n"
    "  %%pi -i -o answer        (cell may use {df.shape}; result bound to `answer`)\n"
    "  %pi model openrouter/qwen/qwen3-coder\n"
    "  %pi logs -n 50\n"
)

_PROVIDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


@dataclass(frozen=True)
class ModelRef:
    """``provider/id``; the id may itself contain ``/`` (``openrouter/qwen/qwen3-coder``)."""

    provider: str
    id: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.id}"


@dataclass(frozen=True)
class CellArgs:
    """Options of one ``%%pi`` cell. ``None`` means "keep the session's current value"."""

    model: ModelRef | None = None
    thinking: str | None = None
    new_session: bool = False
    timeout: float | None = None
    interpolate: bool = False
    out: str | None = None
    quiet: bool = False


@dataclass(frozen=True)
class LineCommand:
    """One ``%pi`` subcommand. ``name`` is canonical (aliases resolved); the other fields are set
    only by the subcommands that take them: ``model``/``thinking`` (``None`` = show current),
    ``lines`` for ``logs`` (``None`` = the caller's default)."""

    name: str
    model: ModelRef | None = None
    thinking: str | None = None
    lines: int | None = None


# --------------------------------------------------------------------------- value checks


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_model(spec: str) -> ModelRef:
    """``"provider/id"`` -> :class:`ModelRef`; raises ``ValueError`` on a bad shape."""
    provider, sep, model_id = spec.partition("/")
    if (
        not sep
        or not _PROVIDER.match(provider)
        or not model_id
        or model_id.startswith("/")
        or model_id.endswith("/")
        or "//" in model_id
        or not model_id.isprintable()
        or any(c.isspace() for c in model_id)
    ):
        raise ValueError(f"invalid model {spec!r}: expected PROVIDER/ID, e.g. anthropic/claude-sonnet-4-5")
    return ModelRef(provider, model_id)


def _thinking(level: str) -> str:
    if level not in THINKING_LEVELS:
        raise ValueError(
            f"invalid thinking level {level!r}{_did_you_mean(level, THINKING_LEVELS)}; "
            f"choose from {', '.join(THINKING_LEVELS)}"
        )
    return level


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"invalid timeout {text!r}: expected a positive number of seconds")
    return value


def _identifier(name: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"invalid variable name {name!r}: expected a Python identifier")
    return name


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"invalid line count {text!r}: expected a positive integer")
    return value


def _argtype(func):
    """Adapt a ``ValueError``-raising check to argparse (which would otherwise hide the message)."""

    def convert(text: str):
        try:
            return func(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = func.__name__.lstrip("_")
    return convert


# --------------------------------------------------------------------------- argparse plumbing


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports through ``UsageError`` and never exits the kernel."""

    def __init__(self, *, prog: str, usage_hint: str) -> None:
        super().__init__(prog=prog, add_help=False, allow_abbrev=False, exit_on_error=False)
        self.usage_hint = usage_hint

    def error(self, message: str):  # type: ignore[override]
        hint = ""
        match = re.match(r"unrecognized arguments: (.*)", message)
        if match:
            bad = match.group(1).split()[0]
            if bad.startswith("-"):
                known = [s for a in self._actions for s in a.option_strings]
                hint = _did_you_mean(bad.split("=", 1)[0], known)
            else:
                hint = " (the prompt goes in the cell body, not on the magic line)"
        raise UsageError(f"{self.prog}: {message}{hint}\n{self.usage_hint}")

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        raise UsageError(message or f"{self.prog}: invalid arguments\n{self.usage_hint}")

    def parse(self, tokens: list[str]) -> argparse.Namespace:
        try:
            return self.parse_args(tokens)
        except argparse.ArgumentError as e:  # exit_on_error=False raises these for bad values
            self.error(str(e))
            raise  # unreachable: error() raises


def _split(line: str, prog: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as e:  # "No closing quotation", "No escaped character"
        raise UsageError(f"{prog}: {e} in {line!r}") from None


_CELL_USAGE = f"usage: %%pi [options]\n{CELL_OPTIONS}\nSee `%pi help`."


def _cell_parser() -> _ArgumentParser:
    p = _ArgumentParser(prog="%%pi", usage_hint=_CELL_USAGE)
    p.add_argument("-m", "--model", type=_argtype(parse_model))
    p.add_argument("-t", "--thinking", type=_argtype(_thinking))
    p.add_argument("--new", dest="new_session", action="store_true")
    p.add_argument("--timeout", type=_argtype(_timeout))
    p.add_argument("-i", "--interpolate", action="store_true")
    p.add_argument("-o", "--out", type=_argtype(_identifier))
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def parse_cell_args(line: str) -> CellArgs:
    """Parse the ``%%pi`` line (everything after ``%%pi``)."""
    tokens = _split(line, "%%pi")
    if any(t in ("-h", "--help") for t in tokens):
        raise UsageError(_CELL_USAGE)
    ns = _cell_parser().parse(tokens)
    return CellArgs(**vars(ns))


# --------------------------------------------------------------------------- %pi line magic

_LINE_USAGE = "usage: %pi SUBCOMMAND\n" + "\n".join(
    f"  {usage:<22}{desc}" for usage, desc in LINE_COMMANDS.values()
)


def _optional_value(name: str, args: list[str], convert) -> object | None:
    if len(args) > 1:
        raise UsageError(f"%pi {name}: expected at most one argument, got {len(args)}\n{_LINE_USAGE}")
    if not args:
        return None
    try:
        return convert(args[0])
    except ValueError as e:
        raise UsageError(f"%pi {name}: {e}") from None


def parse_line(line: str) -> LineCommand:
    """Parse the ``%pi`` line. An empty line means ``help``."""
    tokens = _split(line, "%pi")
    if not tokens or tokens[0] in ("-h", "--help"):
        return LineCommand("help")
    word, args = tokens[0], tokens[1:]
    name = LINE_ALIASES.get(word, word)
    if name not in LINE_COMMANDS:
        names = [*LINE_COMMANDS, *LINE_ALIASES]
        raise UsageError(
            f"%pi: unknown subcommand {word!r}{_did_you_mean(word, names)}\n"
            f"subcommands: {', '.join(names)}\nSee `%pi help`."
        )
    if name == "model":
        return LineCommand(name, model=_optional_value(name, args, parse_model))  # type: ignore[arg-type]
    if name == "thinking":
        return LineCommand(name, thinking=_optional_value(name, args, _thinking))  # type: ignore[arg-type]
    if name == "logs":
        p = _ArgumentParser(prog="%pi logs", usage_hint="usage: %pi logs [-n N]")
        p.add_argument("-n", "--lines", type=_argtype(_positive_int))
        return LineCommand(name, lines=p.parse(args).lines)
    if args:
        raise UsageError(f"%pi {name}: takes no arguments, got {' '.join(args)!r}\n{_LINE_USAGE}")
    return LineCommand(name)


# --------------------------------------------------------------------------- interpolation

# "{{" | "}}" | "{...}" | a lone brace
_BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _lookup(path: str, namespace: Mapping) -> object:
    parts = path.split(".")
    if not all(p.isidentifier() for p in parts):
        raise UsageError(
            f"interpolation: unsupported placeholder {{{path}}}: only {{name}} and {{name.attr}} "
            "are allowed; write {{ and }} for literal braces"
        )
    head, *attrs = parts
    try:
        value = namespace[head]
    except KeyError:
        raise UsageError(f"interpolation: name {head!r} is not defined (in {{{path}}})") from None
    for i, attr in enumerate(attrs, start=1):
        if attr.startswith("_"):
            raise UsageError(f"interpolation: private attribute {attr!r} is not allowed (in {{{path}}})")
        try:
            value = getattr(value, attr)
        except AttributeError:
            owner = ".".join(parts[:i])
            raise UsageError(f"interpolation: {owner!r} has no attribute {attr!r} (in {{{path}}})") from None
    return value


def interpolate(template: str, namespace: Mapping) -> str:
    """Replace ``{name}`` and ``{name.attr.attr}`` with ``str()`` of the value from ``namespace``.

    ``{{`` and ``}}`` are literal braces. Anything else inside braces (indexing, calls, format specs,
    expressions) and unmatched braces raise ``UsageError``: nothing is evaluated.
    """

    def replace(m: re.Match) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        if m.group(1) is None:
            raise UsageError(
                f"interpolation: single {token!r} at offset {m.start()}; "
                f"write {token * 2} for a literal brace"
            )
        return str(_lookup(m.group(1).strip(), namespace))

    return _BRACES.sub(replace, template)
