"""pi's RPC events -> one live display of a turn, and the :class:`PiResult` the magic returns.

Pure: no Docker, no sockets, no widgets. :class:`TurnRenderer` consumes the raw event dicts pi
writes in RPC mode (see pi's docs/json.md) one at a time and pushes a mimebundle through an
injected ``emit(bundle, final)`` callback, at most once per ``throttle`` seconds while streaming.

The agent is hostile. Everything it controls (text, tool names, arguments, results, error
messages, model names, paths) is

* HTML-escaped in ``text/html`` (no scripts, no attributes built from agent data, inline styles);
* kept inert in ``text/markdown``: code goes in fences longer than any backtick run inside, prose
  has raw-HTML openers and link/image brackets neutralised outside code;
* stripped of terminal control sequences in every representation (``text/plain`` is printed by
  terminal IPython, where ANSI/OSC sequences could rewrite the screen or the clipboard).
"""

from __future__ import annotations

import copy
import difflib
import html
import json
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RESULT_LINES", "PiResult", "ToolCall", "TurnRenderer", "clean", "escape_name"]

RESULT_LINES = 20  # tool output lines shown before the rest goes into a collapsed <details>
_ARG_CHARS = 300  # JSON args of unknown tools, shortened to this many characters

Emit = Callable[[dict, bool], None]


# =========================================================================== the turn model


@dataclass
class ToolCall:
    """One tool call of the turn: what the agent asked for and what came back."""

    name: str
    args: dict = field(default_factory=dict)
    result: str = ""
    is_error: bool = False
    id: str = ""
    done: bool = False
    duration_ms: float | None = None


@dataclass
class _Text:
    text: str = ""


@dataclass
class _Thinking:
    text: str = ""
    redacted: bool = False


@dataclass
class _Error:
    message: str
    note: str = ""  # e.g. "retrying 1/3 in 2s", "gave up after 3 attempts"
    retried: bool = False  # superseded by an automatic retry: shown as a warning, not a failure


@dataclass
class _Notice:
    message: str
    warn: bool = False


Block = _Text | _Thinking | ToolCall | _Error | _Notice


@dataclass
class _Footer:
    model: str | None
    usage: dict
    duration: float
    changed_files: list[str]
    status: str  # running | done | error | aborted


@dataclass
class PiResult:
    """What ``%%pi`` returns (and binds with ``-o NAME``). ``str(result)`` is the final answer."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    usage: dict = field(default_factory=dict)
    model: str | None = None
    error: str | None = None
    duration: float = 0.0
    aborted: bool = False
    blocks: list = field(default_factory=list, repr=False, compare=False)
    result_lines: int = field(default=RESULT_LINES, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.aborted

    def __str__(self) -> str:
        return self.text

    def _footer(self) -> _Footer:
        status = "aborted" if self.aborted else "error" if self.error else "done"
        return _Footer(self.model, self.usage, self.duration, self.changed_files, status)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        blocks = self.blocks or ([_Text(self.text)] if self.text else [])
        if not self.blocks and self.error:
            blocks = [*blocks, _Error(self.error)]
        bundle = render_bundle(blocks, self._footer(), result_lines=self.result_lines)
        if include:
            bundle = {k: v for k, v in bundle.items() if k in include}
        if exclude:
            bundle = {k: v for k, v in bundle.items() if k not in exclude}
        return bundle


# =========================================================================== event consumer


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _result_text(result: Any) -> str:
    """Text of a tool result ``{"content": [{"type": "text", "text": ...}, ...], "details": ...}``."""
    if isinstance(result, str):
        return result
    parts = []
    for item in _dict(result).get("content") or []:
        item = _dict(item)
        if item.get("type") == "text":
            parts.append(_str(item.get("text")))
        elif item.get("type") == "image":
            parts.append(f"[image {_str(item.get('mimeType'))}]")
    return "\n".join(parts)


_USAGE_KEYS = ("input", "output", "cacheRead", "cacheWrite", "totalTokens")


def _add_usage(total: dict, usage: Any) -> dict:
    usage = _dict(usage)
    out = dict(total)
    for key in _USAGE_KEYS:
        value = usage.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = out.get(key, 0) + value
    cost = _dict(usage.get("cost")).get("total")
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        out["cost"] = out.get("cost", 0.0) + cost
    return out


class TurnRenderer:
    """Build a live view of one prompt's run from pi events.

    ``emit(bundle, final)`` is called on the first event, then at most every ``throttle`` seconds
    while events arrive (``flush()`` pushes a pending update from an idle loop), and exactly once
    with ``final=True`` from :meth:`finish`. The magic wires it to ``DisplayHandle.update``.
    """

    def __init__(
        self,
        emit: Emit,
        *,
        throttle: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        result_lines: int = RESULT_LINES,
    ) -> None:
        self._emit = emit
        self._throttle = throttle
        self._clock = clock
        self._result_lines = result_lines
        self._start = clock()
        self._last_emit: float | None = None
        self._dirty = False
        self._finished = False
        self._result: PiResult | None = None

        self._blocks: list[Block] = []
        self._content: dict[Any, Block] = {}  # contentIndex -> block, for the streaming message
        self._tools: dict[str, ToolCall] = {}
        self._compaction: _Notice | None = None
        self._model: str | None = None
        self._usage: dict = {}
        self._live_usage: dict = {}  # cumulative usage of the assistant message still streaming
        self._text = ""  # text of the latest assistant message
        self._error: str | None = None
        self._aborted = False
        self.settled = False

    # ------------------------------------------------------------------ public API

    @property
    def text(self) -> str:
        return self._text

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def aborted(self) -> bool:
        return self._aborted

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [b for b in self._blocks if isinstance(b, ToolCall)]

    def feed(self, event: dict) -> None:
        """Apply one pi event (unknown or malformed events are ignored) and maybe emit."""
        handler = getattr(self, "_on_" + _str(_dict(event).get("type")), None)
        if handler is not None:
            handler(event)
            self._dirty = True
        self.flush()

    def add_error(self, message: str) -> None:
        """A failure seen by the caller, not by pi (timeout, pi exited, RPC broke)."""
        self._blocks.append(_Error(message))
        self._error = self._error or message
        self._dirty = True

    def add_notice(self, message: str, *, warn: bool = False) -> None:
        self._blocks.append(_Notice(message, warn))
        self._dirty = True

    def flush(self, *, force: bool = False) -> None:
        """Emit a pending update if ``throttle`` seconds passed since the last one (or ``force``)."""
        if not self._dirty or self._finished:
            return
        now = self._clock()
        if force or self._last_emit is None or now - self._last_emit >= self._throttle - 1e-9:
            self._last_emit = now
            self._dirty = False
            self._emit(self.bundle(), False)

    def bundle(self) -> dict:
        """The current mimebundle (after :meth:`finish`, the final one)."""
        if self._result is not None:
            return self._result._repr_mimebundle_()
        footer = _Footer(
            self._model,
            _add_usage(self._usage, self._live_usage),
            self._clock() - self._start,
            [],
            "running",
        )
        return render_bundle(self._blocks, footer, result_lines=self._result_lines)

    def finish(self, changed_files: Iterable[str] = (), duration: float | None = None) -> PiResult:
        """Close the turn: emit the final bundle (``final=True``) and return the :class:`PiResult`."""
        self._finished = True
        blocks = copy.deepcopy(self._blocks)
        result = PiResult(
            text=self._text,
            tool_calls=[b for b in blocks if isinstance(b, ToolCall)],
            changed_files=list(changed_files),
            usage=_add_usage(self._usage, self._live_usage),
            model=self._model,
            error=self._error,
            duration=self._clock() - self._start if duration is None else duration,
            aborted=self._aborted,
            blocks=blocks,
            result_lines=self._result_lines,
        )
        self._dirty = False
        self._result = result
        self._emit(result._repr_mimebundle_(), True)
        return result

    # ------------------------------------------------------------------ helpers

    def _tool(self, call_id: str, name: str) -> ToolCall:
        tool = self._tools.get(call_id) if call_id else None
        if tool is None:
            tool = ToolCall(name=name or "?", id=call_id)
            self._blocks.append(tool)
            if call_id:
                self._tools[call_id] = tool
        elif name:
            tool.name = name
        return tool

    def _content_block(self, index: Any, kind: type) -> Any:
        block = self._content.get(index)
        if not isinstance(block, kind):
            block = kind()
            self._content[index] = block
            self._blocks.append(block)
        return block

    def mark_aborted(self, message: str = "") -> None:
        """The caller stopped the turn (Ctrl-C, timeout) before pi's own abort events arrived."""
        self._mark_aborted(message)

    def _mark_aborted(self, message: str) -> None:
        if not self._aborted:
            self._aborted = True
            self._blocks.append(_Notice(f"Aborted: {message}" if message else "Aborted", warn=True))
        self._error = self._error or message or "aborted"

    def _take_model(self, message: dict) -> None:
        provider, model = _str(message.get("provider")), _str(message.get("model"))
        if model:
            self._model = f"{provider}/{model}" if provider else model

    # ------------------------------------------------------------------ event handlers

    def _on_message_start(self, event: dict) -> None:
        message = _dict(event.get("message"))
        if message.get("role") == "assistant":
            self._content = {}
            self._live_usage = {}
            self._take_model(message)

    def _on_message_update(self, event: dict) -> None:
        if isinstance(event.get("usage"), dict):
            self._live_usage = _add_usage({}, event["usage"])
        ev = _dict(event.get("assistantMessageEvent"))
        kind, index = _str(ev.get("type")), ev.get("contentIndex")
        if kind in ("text_start", "text_delta", "text_end"):
            block = self._content_block(index, _Text)
            if kind == "text_delta":
                block.text += _str(ev.get("delta"))
            elif kind == "text_end" and isinstance(ev.get("content"), str):
                block.text = ev["content"]
        elif kind in ("thinking_start", "thinking_delta", "thinking_end"):
            block = self._content_block(index, _Thinking)
            if kind == "thinking_delta":
                block.text += _str(ev.get("delta"))
            elif kind == "thinking_end" and isinstance(ev.get("content"), str):
                block.text = ev["content"]
        elif kind == "toolcall_start":
            self._content[index] = self._tool(_str(ev.get("id")), _str(ev.get("toolName")))
        elif kind == "toolcall_end":
            call = _dict(ev.get("toolCall"))
            tool = self._tool(_str(call.get("id")), _str(call.get("name")))
            self._content[index] = tool
            if isinstance(call.get("arguments"), dict):
                tool.args = call["arguments"]

    def _on_message_end(self, event: dict) -> None:
        message = _dict(event.get("message"))
        if message.get("role") != "assistant":
            return
        self._take_model(message)
        texts = []
        content = message.get("content")
        for index, item in enumerate(content if isinstance(content, list) else []):
            item = _dict(item)
            kind = item.get("type")
            if kind == "text":
                text = _str(item.get("text"))
                texts.append(text)
                if text or index in self._content:
                    self._content_block(index, _Text).text = text
            elif kind == "thinking":
                text, redacted = _str(item.get("thinking")), bool(item.get("redacted"))
                if text or redacted or index in self._content:
                    block = self._content_block(index, _Thinking)
                    block.text, block.redacted = text, redacted
            elif kind == "toolCall":
                tool = self._tool(_str(item.get("id")), _str(item.get("name")))
                if isinstance(item.get("arguments"), dict):
                    tool.args = item["arguments"]
        self._text = "\n\n".join(t for t in texts if t)
        self._usage = _add_usage(self._usage, message.get("usage"))
        self._live_usage = {}
        self._content = {}
        stop, err = message.get("stopReason"), _str(message.get("errorMessage"))
        if stop == "error":
            self._blocks.append(_Error(err or "the model request failed (no error message)"))
            self._error = err or "model error"
        elif stop == "aborted":
            self._mark_aborted(err)
        elif stop == "length":
            self._blocks.append(_Notice("Stopped: the model reached its output token limit.", warn=True))

    def _on_tool_execution_start(self, event: dict) -> None:
        tool = self._tool(_str(event.get("toolCallId")), _str(event.get("toolName")))
        if isinstance(event.get("args"), dict):
            tool.args = event["args"]

    def _on_tool_execution_update(self, event: dict) -> None:
        tool = self._tool(_str(event.get("toolCallId")), _str(event.get("toolName")))
        tool.result = _result_text(event.get("partialResult"))  # built-in tools send snapshots

    def _on_tool_execution_end(self, event: dict) -> None:
        tool = self._tool(_str(event.get("toolCallId")), _str(event.get("toolName")))
        tool.result = _result_text(event.get("result"))
        tool.is_error = bool(event.get("isError"))
        tool.done = True
        if isinstance(event.get("durationMs"), int | float):
            tool.duration_ms = event["durationMs"]

    def _on_auto_retry_start(self, event: dict) -> None:
        note = f"retrying ({event.get('attempt', '?')}/{event.get('maxAttempts', '?')})"
        if isinstance(event.get("delayMs"), int | float):
            note += f" in {event['delayMs'] / 1000:g}s"
        last = next((b for b in reversed(self._blocks) if isinstance(b, _Error)), None)
        if last is not None and not last.retried:
            last.retried, last.note = True, note
        else:
            self._blocks.append(_Error(_str(event.get("errorMessage")) or "error", note=note, retried=True))
        self._error = None  # superseded; a final failure comes back as message_end / auto_retry_end

    def _on_auto_retry_end(self, event: dict) -> None:
        if event.get("success"):
            return
        final = _str(event.get("finalError")) or "unknown error"
        note = f"gave up after {event.get('attempt', '?')} attempts"
        last = self._blocks[-1] if self._blocks else None
        if isinstance(last, _Error) and not last.retried and last.message == final:
            last.note = note
        else:
            self._blocks.append(_Error(final, note=note))
        self._error = final

    def _on_compaction_start(self, event: dict) -> None:
        reason = _str(event.get("reason"))
        self._compaction = _Notice(f"Compacting context ({reason})…" if reason else "Compacting context…")
        self._blocks.append(self._compaction)

    def _on_compaction_end(self, event: dict) -> None:
        notice = self._compaction or _Notice("")
        if notice is not self._compaction:
            self._blocks.append(notice)
        self._compaction = None
        result = _dict(event.get("result"))
        if event.get("aborted"):
            notice.message, notice.warn = "Context compaction aborted", True
        elif result:
            before, after = result.get("tokensBefore"), result.get("estimatedTokensAfter")
            counts = f": {_tokens(before)} → {_tokens(after)} tokens" if before and after else ""
            notice.message = "Context compacted" + counts
        else:
            err = _str(event.get("errorMessage")) or "unknown error"
            notice.message, notice.warn = f"Context compaction failed: {err}", True

    def _on_summarization_retry_scheduled(self, event: dict) -> None:
        self.add_notice(
            f"Summarization failed ({_str(event.get('errorMessage'))}); "
            f"retrying ({event.get('attempt', '?')}/{event.get('maxAttempts', '?')})",
            warn=True,
        )

    def _on_extension_error(self, event: dict) -> None:
        self.add_notice(
            f"Extension error in {_str(event.get('extensionPath'))} ({_str(event.get('event'))}): "
            f"{_str(event.get('error'))}",
            warn=True,
        )

    def _on_agent_settled(self, event: dict) -> None:
        self.settled = True
        if event.get("aborted"):
            self._mark_aborted("")


# =========================================================================== sanitising

_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC (titles, hyperlinks, clipboard)
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS / SOS / PM / APC
    r"|\x1b[ -/]*[0-~]"  # other escapes
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")  # "Trojan Source" reordering


def clean(text: str, *, overwrite: bool = False) -> str:
    """Strip terminal escapes and control characters (tabs and newlines stay).

    A lone carriage return is shown as ``\\r``: folded, it would let agent text erase what
    pimagic put before it on the same line (a file name ending a warning). Only tool output
    (``overwrite``) resolves it the way a terminal does, so progress bars read well; there the
    text on both sides of the CR comes from the same tool.
    """
    text = _ANSI.sub("", text).replace("\r\n", "\n")
    if "\r" in text:
        if overwrite:
            text = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
        else:
            text = text.replace("\r", "\\r")
    return _BIDI.sub("\ufffd", _CONTROL.sub("", text))


_NAME_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    if c in _NAME_ESCAPES:
        return _NAME_ESCAPES[c]
    if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp"):
        return c
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        n -= 0xDC00
    return f"\\x{n:02x}" if n <= 0xFF else f"\\u{n:04x}"


def escape_name(name: str) -> str:
    """A file name from the sandbox as one visible line, repr-style: backslash, CR, LF, tab, other
    control and format characters (ESC, C1, bidi overrides, zero-width), line separators and
    undecodable bytes become escapes, so a name can neither hide text nor start a new line. A name
    with anything but letters, digits and `._/@+-` is quoted, so it cannot pass for the text around
    it (`x.txt · 0 host-executable files changed`)."""
    escaped = "".join(_escape_char(c) for c in name)
    if _PLAIN_NAME.fullmatch(name):
        return escaped
    return "'" + escaped.replace("'", "\\'") + "'"


_PLAIN_NAME = re.compile(r"[\w./@+-]+", re.ASCII)


def _one_line(text: str) -> str:
    return " ".join(clean(text).split())


def _h(text: str, *, overwrite: bool = False) -> str:
    return html.escape(clean(text, overwrite=overwrite), quote=True)


def _fence(text: str, info: str = "") -> str:
    """A fenced block that ``text`` cannot close: the fence is longer than any backtick run inside."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"{ticks}{info}\n{body}{ticks}"


_MD_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")


def _md_inline(text: str) -> str:
    """Agent text shown literally in Markdown prose: every ASCII punctuation backslash-escaped."""
    return _MD_PUNCT.sub(r"\\\1", _one_line(text))


_FENCE_OPEN = re.compile(r"(`{3,}|~{3,})(.*)")
_RAW_HTML = re.compile(r"<(?=[A-Za-z/!?])")


def _prose_spans(text: str):
    """Split agent Markdown into ``("code", fence_text)`` and ``("prose", line)`` pieces.

    Only fences that start in column 0 are recognised: such a fence cannot sit inside a list or
    quote, so a CommonMark renderer agrees on where it starts and ends. A fence the agent leaves
    open is closed, so it cannot swallow what we render after it.
    """
    fence: list[str] | None = None
    marker = ""
    for line in text.split("\n"):
        if fence is None:
            m = _FENCE_OPEN.fullmatch(line)
            if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
                fence, marker = [line], m.group(1)
            else:
                yield "prose", line
        else:
            fence.append(line)
            # CommonMark closer: <= 3 spaces (a tab counts as 4), the fence char at least as often.
            if re.fullmatch(f" {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*", line):
                yield "code", "\n".join(fence)
                fence = None
    if fence is not None:
        fence.append(marker)
        yield "code", "\n".join(fence)


def _code_span_end(line: str, start: int) -> int | None:
    """If a backtick run at ``start`` opens a code span on this line, the index after its closer."""
    run = len(line) - start - len(line[start:].lstrip("`"))
    i = start + run
    while True:
        j = line.find("`" * run, i)
        if j < 0:
            return None
        k = j + run
        while k < len(line) and line[k] == "`":
            k += 1
        if k - j == run:
            return k
        i = k


def _md_prose_line(line: str) -> str:
    """Neutralise raw HTML (``<tag``) and links/images (``[``) outside inline code spans.

    Code spans are kept verbatim only on lines without ``|`` (GFM table cells split through them)
    or ``$`` (Jupyter's math pre-pass can consume a backtick); elsewhere everything is escaped.
    """
    keep_code = "|" not in line and "$" not in line
    out, i = [], 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line) and _MD_PUNCT.match(line[i + 1]):
            out.append(line[i : i + 2])
            i += 2
        elif c == "`":
            end = _code_span_end(line, i) if keep_code else None
            if end is None:
                run = len(line) - i - len(line[i:].lstrip("`"))
                out.append("`" * run)
                i += run
            else:
                out.append(line[i:end])
                i = end
        elif c == "<" and _RAW_HTML.match(line, i):
            out.append("&lt;")
            i += 1
        elif c in "[]":
            out.append("\\" + c)
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _md_prose(text: str) -> str:
    return "\n".join(
        piece if kind == "code" else _md_prose_line(piece) for kind, piece in _prose_spans(clean(text))
    )


_INLINE_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")


def _markdown() -> Any:
    """CommonMark with raw HTML off (escaped) and images off: an image URL would load by itself in
    the user's browser, a channel for the agent to send data out. Links stay (a click is a choice);
    markdown-it refuses javascript:/vbscript:/file:/data: targets."""
    global _MD
    if _MD is None:
        from markdown_it import MarkdownIt

        _MD = MarkdownIt("commonmark", {"html": False}).disable("image").enable("table")
    return _MD


_MD: Any = None


def _html_prose(text: str) -> str:
    """Agent Markdown rendered to HTML (the cell shows Markdown, not its source), safely."""
    return f'<div class="pimagic-text">{_markdown().render(clean(text))}</div>'


# =========================================================================== tool views


def _count_lines(text: str) -> int:
    return len(text.splitlines())


def _edit_pairs(args: dict) -> list[tuple[str, str]]:
    """(oldText, newText) pairs, accepting the shapes pi's edit tool accepts."""
    edits = args.get("edits")
    if isinstance(edits, str):
        try:
            edits = json.loads(edits)
        except ValueError:
            edits = None
    if isinstance(edits, dict):
        edits = [edits]
    pairs = []
    for e in edits if isinstance(edits, list) else []:
        if isinstance(e, dict) and isinstance(e.get("oldText"), str) and isinstance(e.get("newText"), str):
            pairs.append((e["oldText"], e["newText"]))
    if isinstance(args.get("oldText"), str) and isinstance(args.get("newText"), str):
        pairs.append((args["oldText"], args["newText"]))
    return pairs


def edit_diff(path: str, pairs: list[tuple[str, str]]) -> str:
    """Unified diff of the replacements (hunk line numbers are relative to each snippet)."""
    lines = [f"--- a/{path}", f"+++ b/{path}"]
    for old, new in pairs:
        hunk = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=3))
        lines.extend(hunk[2:])
    return "\n".join(lines) if len(lines) > 2 else ""


@dataclass
class _ToolView:
    title: str  # tool name
    detail: str = ""  # one line of plain text: path, pattern…
    code: str = ""  # command / diff shown in a code block
    lang: str = ""
    collapsed: tuple[str, str] | None = None  # (summary, text) kept reachable but folded
    tail: bool = False  # preview the end of the result (shell output) rather than the start
    fold_result: bool = False  # successful result only inside <details> (file contents)


def _tool_view(tool: ToolCall) -> _ToolView:
    args, name = tool.args if isinstance(tool.args, dict) else {}, tool.name
    path = _str(args.get("path"))
    if name == "bash":
        return _ToolView(name, code=_str(args.get("command")), lang="bash", tail=True)
    if name == "write":
        content = _str(args.get("content"))
        n = _count_lines(content)
        return _ToolView(
            name,
            f"{path} ({n} line{'s' if n != 1 else ''})",
            collapsed=(f"content ({n} lines)", content) if content else None,
        )
    if name == "edit":
        pairs = _edit_pairs(args)
        return _ToolView(name, path, code=edit_diff(path, pairs), lang="diff")
    if name == "read":
        extra = [f"{k} {args[k]}" for k in ("offset", "limit") if isinstance(args.get(k), int | float)]
        return _ToolView(name, path + (f" ({', '.join(extra)})" if extra else ""), fold_result=True)
    if name in ("grep", "find"):
        where = _str(args.get("path"))
        return _ToolView(name, _str(args.get("pattern")) + (f" in {where}" if where else ""))
    if name == "ls":
        return _ToolView(name, path or ".")
    if not args:
        return _ToolView(name)
    text = json.dumps(args, ensure_ascii=False, default=str)
    return _ToolView(name, text if len(text) <= _ARG_CHARS else text[: _ARG_CHARS - 1] + "…")


def _preview(text: str, limit: int, tail: bool) -> tuple[str, int]:
    """(shown text, number of hidden lines)."""
    lines = text.splitlines()
    if len(lines) <= limit:
        return text, 0
    shown = lines[-limit:] if tail else lines[:limit]
    return "\n".join(shown), len(lines) - limit


def _status(tool: ToolCall) -> str:
    if not tool.done:
        return "running…"
    if tool.is_error:
        return "failed"
    return f"{tool.duration_ms / 1000:.1f}s" if tool.duration_ms is not None else "done"


# =========================================================================== footer


def _tokens(n: Any) -> str:
    if not isinstance(n, int | float):
        return "?"
    if n < 1000:
        return str(int(n))
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.2f}M"


def _footer_parts(footer: _Footer) -> list[str]:
    parts = [footer.status]
    if footer.model:
        parts.append(_one_line(footer.model))
    usage = footer.usage
    if usage.get("input") or usage.get("output"):
        tokens = f"{_tokens(usage.get('input', 0))} in / {_tokens(usage.get('output', 0))} out"
        if usage.get("cacheRead"):
            tokens += f" ({_tokens(usage['cacheRead'])} cached)"
        parts.append(tokens)
    if usage.get("cost"):
        parts.append(f"${usage['cost']:.4f}")
    parts.append(f"{footer.duration:.1f}s")
    files = footer.changed_files
    if files:
        names = ", ".join(escape_name(f) for f in files[:8]) + (", …" if len(files) > 8 else "")
        parts.append(f"{len(files)} file{'s' if len(files) != 1 else ''} changed: {names}")
    return parts


# =========================================================================== the three renderings

_S_ROOT = "font-family:var(--jp-content-font-family,system-ui,sans-serif);font-size:13px;line-height:1.45"
_S_MONO = "font-family:var(--jp-code-font-family,ui-monospace,monospace);font-size:12px"
_S_CODE = f"{_S_MONO};background:rgba(127,127,127,0.12);padding:0 3px;border-radius:3px"
_S_PRE = (
    f"{_S_MONO};margin:4px 0;padding:6px 8px;background:rgba(127,127,127,0.08);"
    "border-radius:3px;white-space:pre-wrap;word-break:break-word;overflow-x:auto"
)
_S_TOOL = "margin:6px 0;padding:2px 0 2px 8px;border-left:3px solid #6b8afd"
_S_TOOL_ERR = "margin:6px 0;padding:2px 0 2px 8px;border-left:3px solid #d33"
_S_MUTED = "color:#777;font-size:11px"
_S_ERROR = (
    "margin:6px 0;padding:6px 10px;border:1px solid #d33;border-left-width:4px;"
    "border-radius:3px;background:rgba(221,51,51,0.07)"
)
_S_WARN = "margin:6px 0;padding:4px 8px;border-left:3px solid #e0a000;background:rgba(224,160,0,0.08)"
_S_INFO = "margin:6px 0;padding:2px 8px;color:#777"
_S_FOOTER = (
    "margin-top:8px;padding-top:4px;border-top:1px solid rgba(127,127,127,0.3);color:#777;font-size:11px"
)
_S_ADD = "color:#1a7f37;background:rgba(46,160,67,0.12)"
_S_DEL = "color:#cf222e;background:rgba(248,81,73,0.12)"
_S_HUNK = "color:#8250df"


def _html_diff(diff: str) -> str:
    out = []
    for line in clean(diff).split("\n"):
        style = ""
        if line.startswith(("+++", "---")):
            style = "font-weight:bold"
        elif line.startswith("+"):
            style = _S_ADD
        elif line.startswith("-"):
            style = _S_DEL
        elif line.startswith("@@"):
            style = _S_HUNK
        escaped = html.escape(line, quote=True)
        out.append(f'<span style="{style}">{escaped}</span>' if style else escaped)
    return f'<pre style="{_S_PRE}">' + "\n".join(out) + "</pre>"


def _html_details(summary: str, text: str) -> str:
    return (
        f'<details><summary style="{_S_MUTED};cursor:pointer">{html.escape(summary)}</summary>'
        f'<pre style="{_S_PRE}">{_h(text)}</pre></details>'
    )


def _html_tool(tool: ToolCall, limit: int) -> str:
    view = _tool_view(tool)
    head = f'<b style="{_S_MONO}">{_h(view.title)}</b>'
    if view.detail:
        head += f' <code style="{_S_CODE}">{_h(_one_line(view.detail))}</code>'
    head += f' <span style="{_S_MUTED}">{_status(tool)}</span>'
    parts = [f"<div>{head}</div>"]
    if view.code:
        parts.append(
            _html_diff(view.code) if view.lang == "diff" else f'<pre style="{_S_PRE}">{_h(view.code)}</pre>'
        )
    if view.collapsed:
        parts.append(_html_details(*view.collapsed))
    result = clean(tool.result, overwrite=True).rstrip("\n")
    if result:
        n = _count_lines(result)
        if view.fold_result and not tool.is_error:
            parts.append(_html_details(f"output ({n} lines)", result))
        else:
            shown, hidden = _preview(result, limit, view.tail)
            color = ";color:#d33" if tool.is_error else ""
            parts.append(f'<pre style="{_S_PRE}{color}">{_h(shown)}</pre>')
            if hidden:
                parts.append(_html_details(f"{hidden} more lines (show all {n})", result))
    style = _S_TOOL_ERR if tool.is_error else _S_TOOL
    return f'<div style="{style}">' + "".join(parts) + "</div>"


def _html_block(block: Block, limit: int) -> str:
    if isinstance(block, _Text):
        return _html_prose(block.text) if block.text.strip() else ""
    if isinstance(block, _Thinking):
        summary = "Thinking (redacted)" if block.redacted and not block.text else "Thinking"
        return (
            f'<details style="margin:4px 0"><summary style="{_S_MUTED};cursor:pointer">{summary}'
            f'</summary><div style="white-space:pre-wrap;color:#777;font-style:italic">{_h(block.text)}'
            "</div></details>"
        )
    if isinstance(block, ToolCall):
        return _html_tool(block, limit)
    if isinstance(block, _Error):
        note = f' <span style="{_S_MUTED}">({_h(block.note)})</span>' if block.note else ""
        if block.retried:
            return f'<div style="{_S_WARN}"><b>Error</b>{note}: {_h(block.message)}</div>'
        return (
            f'<div style="{_S_ERROR}"><b style="color:#d33">Error</b>{note}'
            f'<pre style="{_S_PRE};background:none;padding:0">{_h(block.message)}</pre></div>'
        )
    if isinstance(block, _Notice):
        return f'<div style="{_S_WARN if block.warn else _S_INFO}">{_h(block.message)}</div>'
    return ""


def _md_tool(tool: ToolCall, limit: int) -> str:
    view = _tool_view(tool)
    head = f"**{_md_inline(view.title)}**"
    if view.detail:
        head += " " + _md_inline(view.detail)
    parts = [f"{head} *{_status(tool)}*"]
    if view.code:
        parts.append(_fence(clean(view.code), view.lang))
    if view.collapsed:
        parts.append(_md_details(*view.collapsed))
    result = clean(tool.result, overwrite=True).rstrip("\n")
    if result:
        n = _count_lines(result)
        if view.fold_result and not tool.is_error:
            parts.append(_md_details(f"output ({n} lines)", result))
        else:
            shown, hidden = _preview(result, limit, view.tail)
            parts.append(_fence(shown, "text"))
            if hidden:
                parts.append(_md_details(f"{hidden} more lines (show all {n})", result))
    return "\n\n".join(parts)


def _md_details(summary: str, text: str) -> str:
    # HTML block / blank line / fence / blank line / HTML block: the GitHub idiom, content stays inert.
    return (
        f"<details><summary>{html.escape(summary)}</summary>\n\n{_fence(clean(text), 'text')}\n\n</details>"
    )


def _md_block(block: Block, limit: int) -> str:
    if isinstance(block, _Text):
        return _md_prose(block.text) if block.text.strip() else ""
    if isinstance(block, _Thinking):
        return _md_details("Thinking" + (" (redacted)" if block.redacted else ""), block.text)
    if isinstance(block, ToolCall):
        return _md_tool(block, limit)
    if isinstance(block, _Error):
        note = f" ({_md_inline(block.note)})" if block.note else ""
        label = "Error (retried)" if block.retried else "**Error**"
        return f"{label}{note}\n\n{_fence(clean(block.message), 'text')}"
    if isinstance(block, _Notice):
        return f"*{_md_inline(block.message)}*"
    return ""


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.split("\n"))


def _plain_tool(tool: ToolCall, limit: int) -> str:
    view = _tool_view(tool)
    lines = [f"[{_one_line(view.title)}] {_one_line(view.detail)}".rstrip() + f"  ({_status(tool)})"]
    if view.code:
        code = clean(view.code)
        lines.append(_indent(("$ " + code) if view.lang == "bash" else code))
    result = clean(tool.result, overwrite=True).rstrip("\n")
    if result:
        n = _count_lines(result)
        if view.fold_result and not tool.is_error:
            lines.append(f"    ({n} lines)")
        else:
            shown, hidden = _preview(result, limit, view.tail)
            if hidden and view.tail:
                lines.append(f"    … {hidden} earlier lines")
            lines.append(_indent(shown))
            if hidden and not view.tail:
                lines.append(f"    … {hidden} more lines")
    return "\n".join(lines)


def _plain_block(block: Block, limit: int) -> str:
    if isinstance(block, _Text):
        return clean(block.text).strip("\n")
    if isinstance(block, _Thinking):
        return f"[thinking: {len(block.text)} chars]" if block.text else "[thinking]"
    if isinstance(block, ToolCall):
        return _plain_tool(block, limit)
    if isinstance(block, _Error):
        note = f" ({clean(block.note)})" if block.note else ""
        return f"[error{note}] {clean(block.message)}"
    if isinstance(block, _Notice):  # one line by design: no text inside can fake another
        return f"[{'!' if block.warn else 'i'}] {_one_line(block.message)}"
    return ""


def render_bundle(blocks: Iterable[Block], footer: _Footer, *, result_lines: int = RESULT_LINES) -> dict:
    """``{"text/plain", "text/markdown", "text/html"}`` for the blocks of a turn plus its footer."""
    blocks = list(blocks)
    footer_text = " · ".join(_footer_parts(footer))
    plain = [p for p in (_plain_block(b, result_lines) for b in blocks) if p]
    md = [p for p in (_md_block(b, result_lines) for b in blocks) if p]
    htm = [p for p in (_html_block(b, result_lines) for b in blocks) if p]
    return {
        "text/plain": "\n\n".join([*plain, f"── {footer_text}"]),
        "text/markdown": "\n\n".join([*md, f"*{_md_inline(footer_text)}*"]) + "\n",
        "text/html": (
            f'<div class="pimagic-turn" style="{_S_ROOT}">'
            + "".join(htm)
            + f'<div style="{_S_FOOTER}">{html.escape(footer_text)}</div></div>'
        ),
    }
