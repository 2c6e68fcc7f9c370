"""Magic arguments -> typed values. Executes nothing, touches no session.

``%%pi [options]`` becomes a frozen :class:`CellArgs`, ``%pi SUBCOMMAND ...`` a frozen
:class:`LineCommand`. Every mistake raises IPython's ``UsageError`` (never ``SystemExit``) with a
hint that names the valid choices. The only IPython import is ``UsageError``.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import keyword
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from IPython.core.error import UsageError

from . import config
from .config import THINKING_LEVELS, ModelRef

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

CELL_OPTIONS = """\
  -m, --model PROVIDER/ID   model for this cell only (e.g. anthropic/claude-sonnet-4-5); `%pi model` switches
  -t, --thinking LEVEL      thinking level for this cell only: LEVELS
  --new                     start a fresh pi session before this prompt
  --timeout SECONDS         abort the turn after SECONDS (a positive number)
  -i, --interpolate         substitute {name} / {name.attr} from the user namespace ({{ }} = braces)
  -o, --out NAME            bind the PiResult to variable NAME
  -q, --quiet               no live streaming; show only the final result
  --keep-going              a failed turn does not fail the cell (default: PIMAGIC_FAIL_ON_ERROR)"""
CELL_OPTIONS = CELL_OPTIONS.replace("LEVELS", "|".join(THINKING_LEVELS))  # the one list, from config

# name -> (usage, description); order is the order of `%pi help`.
LINE_COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("status", "sandbox, session, model and the session's token usage"),
    "new": ("new", "start a fresh pi session (alias: reset)"),
    "abort": ("abort", "abort the running turn"),
    "model": ("model [PROVIDER/ID]", "show or set the model"),
    "models": ("models", "list the models pi can use"),
    "thinking": ("thinking [LEVEL]", "show or set the thinking level"),
    "stop": ("stop", "stop the sandbox container (kept, stopped; the next cell starts it)"),
    "restart": ("restart", "replace the sandbox container; the conversation continues"),
    "logs": ("logs [-n N]", "last N lines of pi's stderr / container logs"),
    "settings": ("settings", "show the settings panel"),
    "paranoid": ("paranoid [on|off]", "show paranoid mode, or choose it for this folder (kept across kernels)"),
    "trust-env": ("trust-env", "load the folder's .env pimagic refused (after you checked it)"),
    "help": ("help", "this text"),
}
LINE_ALIASES = {"reset": "new"}

PROMPT_FORMS = (
    "%%pi [options] + prompt in the cell body, or on the line: `%%pi Create a snake game`;\n"
    "  `%pi Create a snake game` works too (a line that is not a subcommand is a prompt;\n"
    "  `--` ends the options: `%%pi -q -- -m is the flag I mean`)"
)

HELP_TEXT = (
    "Send a prompt to the pi coding agent (in its Docker sandbox):\n  "
    + PROMPT_FORMS
    + "\n"
    + CELL_OPTIONS
    + "\nA failed turn (model server down, model error, timeout) fails the cell, so Run All stops\n"
    "(`--keep-going`, or `%config PimagicSettings.fail_on_error = False`, goes on); the turn is in `_pi`.\n"
    "Ctrl-C / Interrupt kernel aborts the turn (one line, no traceback) and keeps the sandbox and the session.\n"
    + "\n%pi SUBCOMMAND\n"
    + "\n".join(f"  {usage:<22}{desc}" for usage, desc in LINE_COMMANDS.values())
    + "\n\nExamples:\n"
    "  %%pi -m anthropic/claude-sonnet-4-5 -t high\n"
    "  %%pi -i -o answer        (cell may use {df.shape}; result bound to `answer`)\n"
    "  %pi Explain what main.py does\n"
    "  %pi model openrouter/qwen/qwen3-coder\n"
    "  %pi logs -n 50\n"
)

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
    keep_going: bool = False
    prompt: str = ""  # text on the magic line after the options (goes before the cell body)


@dataclass(frozen=True)
class LineCommand:
    """One ``%pi`` subcommand. ``name`` is canonical (aliases resolved); the other fields are set
    only by the subcommands that take them: ``model``/``thinking`` (``None`` = show current),
    ``lines`` for ``logs`` (``None`` = the caller's default). ``name == "prompt"``: the line is a
    prompt, ``cell`` holds its options and text (see :func:`parse_line`)."""

    name: str
    model: ModelRef | None = None
    thinking: str | None = None
    lines: int | None = None
    cell: CellArgs | None = None
    on: bool | None = None  # `paranoid on|off`; None = show


# --------------------------------------------------------------------------- value checks


def _did_you_mean(word: str, choices, cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_model(spec: str) -> ModelRef:
    """``"provider/id"`` -> :class:`ModelRef` (config's parser); a bad shape is a ``UsageError``."""
    try:
        return config.parse_model(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"invalid timeout {text!r}: expected a positive number of seconds")
    return value


def _on_off(text: str) -> bool:
    low = text.lower()
    if low not in ("on", "off"):
        raise ValueError(f"expected on or off, got {text!r}")
    return low == "on"


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
                hint += " (a prompt that starts with '-' goes after `--`)"
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


@functools.lru_cache(maxsize=1)  # built once: argparse set-up cost about 0.6 ms per cell
def _cell_parser() -> _ArgumentParser:
    p = _ArgumentParser(prog="%%pi", usage_hint=_CELL_USAGE)
    p.add_argument("-m", "--model", type=_argtype(config.parse_model))
    p.add_argument("-t", "--thinking", type=_argtype(config.check_thinking))
    p.add_argument("--new", dest="new_session", action="store_true")
    p.add_argument("--timeout", type=_argtype(_timeout))
    p.add_argument("-i", "--interpolate", action="store_true")
    p.add_argument("-o", "--out", type=_argtype(_identifier))
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--keep-going", action="store_true")
    return p


def _valued_options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.option_strings and a.nargs != 0 for s in a.option_strings}


def split_options(line: str, parser: argparse.ArgumentParser | None = None) -> tuple[list[str], str]:
    """``(option tokens, prompt)`` of a magic line: the options are the leading words that start
    with ``-`` (with the value of those that take one, which may be quoted); the prompt is the rest
    of the line, verbatim (quotes and apostrophes kept). ``--`` ends the options, so a prompt may
    then start with ``-``."""
    valued = _valued_options(parser or _cell_parser())
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    tokens: list[str] = []
    expect_value = False
    while True:
        pos = lexer.instream.tell()
        start = pos + len(line[pos:]) - len(line[pos:].lstrip())
        if start >= len(line):
            return tokens, ""
        raw = line[start:].split(None, 1)[0]
        if not expect_value and (not raw.startswith("-") or raw == "-"):
            return tokens, line[start:].strip()
        try:
            token = lexer.get_token()
        except ValueError as e:  # "No closing quotation" in an option's value
            raise UsageError(f"%%pi: {e} in {line!r}") from None
        if token is None:
            return tokens, ""
        if token == "--" and not expect_value:
            return tokens, line[lexer.instream.tell():].strip()
        tokens.append(token)
        expect_value = not expect_value and token in valued


def parse_cell_args(line: str) -> CellArgs:
    """Parse the ``%%pi`` line (everything after ``%%pi``): options, then an optional prompt."""
    parser = _cell_parser()
    tokens, prompt = split_options(line, parser)
    if any(t in ("-h", "--help") for t in tokens):
        raise UsageError(_CELL_USAGE)
    ns = parser.parse(tokens)
    return CellArgs(**vars(ns), prompt=prompt)


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


SUBCOMMAND_TYPO_CUTOFF = 0.75  # "stauts" -> status, "modle" -> model; "hello", "test" are prompts


def parse_line(line: str) -> LineCommand:
    """Parse the ``%pi`` line. An empty line means ``help``.

    A line whose first word is a subcommand is that subcommand. A first word close to a
    subcommand (a typo: ``stauts``, ``modle a/b``) on a line of at most two words is a
    ``UsageError`` with "did you mean". Anything else is a prompt, with the options of ``%%pi``
    before it: ``LineCommand("prompt", cell=CellArgs(..., prompt=...))``.
    """
    words = line.split()
    if not words or words[0] in ("-h", "--help"):
        return LineCommand("help")
    first = words[0]
    name = LINE_ALIASES.get(first, first)
    if name not in LINE_COMMANDS:
        names = [*LINE_COMMANDS, *LINE_ALIASES]
        guess = _did_you_mean(first, names, SUBCOMMAND_TYPO_CUTOFF)
        if len(words) <= 2 and guess:
            raise UsageError(
                f"%pi: unknown subcommand {first!r}{guess}\n"
                f"subcommands: {', '.join(names)}; to send it as a prompt: %pi -- {line.strip()}\n"
                "See `%pi help`."
            )
        cell = parse_cell_args(line)
        if not cell.prompt:
            raise UsageError(f"%pi: options but no prompt in {line!r}\n{PROMPT_FORMS}\nSee `%pi help`.")
        return LineCommand("prompt", cell=cell)
    tokens = _split(line, "%pi")
    word, args = tokens[0], tokens[1:]
    if name == "model":
        return LineCommand(name, model=_optional_value(name, args, config.parse_model))  # type: ignore[arg-type]
    if name == "thinking":
        return LineCommand(name, thinking=_optional_value(name, args, config.check_thinking))  # type: ignore[arg-type]
    if name == "paranoid":
        return LineCommand(name, on=_optional_value(name, args, _on_off))  # type: ignore[arg-type]
    if name == "logs":
        p = _ArgumentParser(prog="%pi logs", usage_hint="usage: %pi logs [-n N]")
        p.add_argument("-n", "--lines", type=_argtype(_positive_int))
        return LineCommand(name, lines=p.parse(args).lines)
    if args:
        raise UsageError(
            f"%pi {name}: takes no arguments, got {' '.join(args)!r}\n{_LINE_USAGE}\n"
            f"(to send a prompt that starts with {word!r}: %pi -- {line.strip()})"
        )
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
