"""A turn -> display bundles: sanitised Markdown, HTML and plain text, tool views, and the live view.

Pure: no Docker, no sockets, no widgets. Two outputs:

* :func:`render_bundle` / :func:`result_bundle`: the whole turn as one static mimebundle
  (``text/plain``, ``text/markdown``, ``text/html``), what a :class:`~pimagic.turn.PiResult` shows
  and what a saved notebook keeps.
* :class:`TurnRenderer`: the turn while it streams, as a column of small display outputs. A piece
  that is finished (a tool call that ended, a paragraph of text that is followed by the next one)
  is sent once; only the piece still growing and the footer are updated, each update replacing one
  small output. So the bytes sent for a turn grow linearly with its length, not quadratically as
  they would if every update re-sent the whole turn.

Every string from the agent goes through :mod:`pimagic.sanitize` for the channel it lands in.
"""

from __future__ import annotations

import difflib
import html
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .sanitize import (
    clean,
    escape_name,
    fence,
    fence_closes,
    fence_opener,
    html_prose,
    html_text,
    md_inline,
    md_prose,
    one_line,
)
from .turn import (
    Block,
    ErrorBlock,
    Footer,
    NoticeBlock,
    PiResult,
    TextBlock,
    ThinkingBlock,
    ToolRun,
    Turn,
    format_tokens,
)

__all__ = [
    "RESULT_LINES", "LiveView", "TurnRenderer", "render_bundle", "result_bundle", "seal_point", "session_usage",
]

RESULT_LINES = 20  # tool output lines shown before the rest goes into a collapsed <details>
_ARG_CHARS = 300  # JSON args of unknown tools, shortened to this many characters


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""

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


NO_LINE_NUMBERS = "@@ line numbers not known @@"


def edit_diff(path: str, pairs: list[tuple[str, str]], patch: str = "") -> str:
    """Unified diff of an edit. ``patch``: pi's own (the edit tool's result details), whose hunk
    headers carry the file's real line numbers. Without it (still running, or failed) the diff
    is built from the replacements, which say nothing of where they are: the hunk headers say so."""
    lines = [f"--- a/{path}", f"+++ b/{path}"]
    hunks = patch.split("\n")
    start = next((i for i, line in enumerate(hunks) if line.startswith("@@")), None)
    if start is not None:
        lines.extend(hunks[start:])
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)
    for old, new in pairs:
        hunk = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=3))
        lines.extend(NO_LINE_NUMBERS if line.startswith("@@") else line for line in hunk[2:])
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


def _tool_view(tool: ToolRun) -> _ToolView:
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
        return _ToolView(name, path, code=edit_diff(path, pairs, tool.patch), lang="diff")
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


def _status(tool: ToolRun) -> str:
    if not tool.done:
        return "running…"
    if tool.is_error:
        return "failed"
    return f"{tool.duration_ms / 1000:.1f}s" if tool.duration_ms is not None else "done"


# =========================================================================== footer


def _footer_parts(footer: Footer, *, live: bool = False) -> list[str]:
    """The footer's pieces. ``live``: whole seconds, so a footer refreshed while the model is
    silent changes (and is re-sent) once a second, not at every tick."""
    parts = [footer.status]
    if footer.model:
        parts.append(one_line(footer.model))
    usage = footer.usage
    if usage.get("input") or usage.get("output"):
        tokens = f"{format_tokens(usage.get('input', 0))} in / {format_tokens(usage.get('output', 0))} out"
        if usage.get("cacheRead"):
            tokens += f" ({format_tokens(usage['cacheRead'])} cached)"
        parts.append(tokens)
    if usage.get("cost"):
        parts.append(f"${usage['cost']:.4f}")
    parts.append(f"{int(footer.duration)}s" if live else f"{footer.duration:.1f}s")
    files = footer.changed_files
    if files:
        names = ", ".join(escape_name(f) for f in files[:8]) + (", …" if len(files) > 8 else "")
        parts.append(f"{len(files)} file{'s' if len(files) != 1 else ''} changed: {names}")
    return parts


def session_usage(stats: dict) -> str:
    """pi's ``get_session_stats`` as one line: the whole session's tokens, cost and context use."""
    tokens = stats.get("tokens") if isinstance(stats.get("tokens"), dict) else {}
    line = (f"tokens (this session): {format_tokens(tokens.get('input', 0))} in / "
            f"{format_tokens(tokens.get('output', 0))} out")
    if tokens.get("cacheRead"):
        line += f" ({format_tokens(tokens['cacheRead'])} cached)"
    cost = stats.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and cost:
        line += f", ${cost:.4f}"
    context = stats.get("contextUsage") if isinstance(stats.get("contextUsage"), dict) else {}
    if isinstance(context.get("percent"), int | float) and context.get("contextWindow"):
        line += f"; context {context['percent']:.0f}% of {format_tokens(context['contextWindow'])}"
    return line


_LINKABLE = re.compile(r"[\w./@+ -]+", re.ASCII)


def _file_link(name: str) -> str:
    """A changed file as a link relative to the notebook's folder (JupyterLab opens it); a name
    with anything but ASCII letters, digits, spaces and `._/@+-` (escapes, quotes, a colon) is
    shown, not linked."""
    shown = html.escape(escape_name(name))
    if not _LINKABLE.fullmatch(name) or name.startswith(("/", "..")) or "/../" in name:
        return shown
    return f'<a href="{html.escape(urllib.parse.quote(name), quote=True)}" style="color:inherit">{shown}</a>'


def _footer_html(footer: Footer) -> str:
    parts = _footer_parts(footer)
    files = footer.changed_files
    if not files:
        return html.escape(" · ".join(parts))
    links = ", ".join(_file_link(f) for f in files[:8]) + (", …" if len(files) > 8 else "")
    label = f"{len(files)} file{'s' if len(files) != 1 else ''} changed: "
    return html.escape(" · ".join(parts[:-1]) + " · " + label) + links


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
        f'<pre style="{_S_PRE}">{html_text(text)}</pre></details>'
    )


def _html_tool(tool: ToolRun, limit: int, *, partial: bool = False) -> str:
    """``partial``: a running tool's live view, whose output (a snapshot pi re-sends as it grows)
    is shown as its preview only, so each update stays small; the whole output comes once, at the end."""
    view = _tool_view(tool)
    head = f'<b style="{_S_MONO}">{html_text(view.title)}</b>'
    if view.detail:
        head += f' <code style="{_S_CODE}">{html_text(one_line(view.detail))}</code>'
    head += f' <span style="{_S_MUTED}">{_status(tool)}</span>'
    parts = [f"<div>{head}</div>"]
    if view.code:
        parts.append(
            _html_diff(view.code) if view.lang == "diff" else f'<pre style="{_S_PRE}">{html_text(view.code)}</pre>'
        )
    if view.collapsed:
        parts.append(_html_details(*view.collapsed))
    result = clean(tool.result, overwrite=True).rstrip("\n")
    if result:
        n = _count_lines(result)
        if view.fold_result and not tool.is_error:
            if partial:
                parts.append(f'<div style="{_S_MUTED}">output: {n} lines so far</div>')
            else:
                parts.append(_html_details(f"output ({n} lines)", result))
        else:
            shown, hidden = _preview(result, limit, view.tail)
            color = ";color:#d33" if tool.is_error else ""
            parts.append(f'<pre style="{_S_PRE}{color}">{html_text(shown)}</pre>')
            if hidden and partial:
                parts.append(f'<div style="{_S_MUTED}">{hidden} more lines so far</div>')
            elif hidden:
                parts.append(_html_details(f"{hidden} more lines (show all {n})", result))
    style = _S_TOOL_ERR if tool.is_error else _S_TOOL
    return f'<div style="{style}">' + "".join(parts) + "</div>"


def _html_block(block: Block, limit: int) -> str:
    if isinstance(block, TextBlock):
        return html_prose(block.text) if block.text.strip() else ""
    if isinstance(block, ThinkingBlock):
        summary = "Thinking (redacted)" if block.redacted and not block.text else "Thinking"
        return (
            f'<details style="margin:4px 0"><summary style="{_S_MUTED};cursor:pointer">{summary}'
            f'</summary><div style="white-space:pre-wrap;color:#777;font-style:italic">{html_text(block.text)}'
            "</div></details>"
        )
    if isinstance(block, ToolRun):
        return _html_tool(block, limit)
    if isinstance(block, ErrorBlock):
        note = f' <span style="{_S_MUTED}">({html_text(block.note)})</span>' if block.note else ""
        if block.retried:
            return f'<div style="{_S_WARN}"><b>Error</b>{note}: {html_text(block.message)}</div>'
        return (
            f'<div style="{_S_ERROR}"><b style="color:#d33">Error</b>{note}'
            f'<pre style="{_S_PRE};background:none;padding:0">{html_text(block.message)}</pre></div>'
        )
    if isinstance(block, NoticeBlock):
        return f'<div style="{_S_WARN if block.warn else _S_INFO}">{html_text(block.message)}</div>'
    return ""


def _md_tool(tool: ToolRun, limit: int) -> str:
    view = _tool_view(tool)
    head = f"**{md_inline(view.title)}**"
    if view.detail:
        head += " " + md_inline(view.detail)
    parts = [f"{head} *{_status(tool)}*"]
    if view.code:
        parts.append(fence(clean(view.code), view.lang))
    if view.collapsed:
        parts.append(_md_details(*view.collapsed))
    result = clean(tool.result, overwrite=True).rstrip("\n")
    if result:
        n = _count_lines(result)
        if view.fold_result and not tool.is_error:
            parts.append(_md_details(f"output ({n} lines)", result))
        else:
            shown, hidden = _preview(result, limit, view.tail)
            parts.append(fence(shown, "text"))
            if hidden:
                parts.append(_md_details(f"{hidden} more lines (show all {n})", result))
    return "\n\n".join(parts)


def _md_details(summary: str, text: str) -> str:
    # HTML block / blank line / fence / blank line / HTML block: the GitHub idiom, content stays inert.
    return (
        f"<details><summary>{html.escape(summary)}</summary>\n\n{fence(clean(text), 'text')}\n\n</details>"
    )


def _md_block(block: Block, limit: int) -> str:
    if isinstance(block, TextBlock):
        return md_prose(block.text) if block.text.strip() else ""
    if isinstance(block, ThinkingBlock):
        return _md_details("Thinking" + (" (redacted)" if block.redacted else ""), block.text)
    if isinstance(block, ToolRun):
        return _md_tool(block, limit)
    if isinstance(block, ErrorBlock):
        note = f" ({md_inline(block.note)})" if block.note else ""
        label = "Error (retried)" if block.retried else "**Error**"
        return f"{label}{note}\n\n{fence(clean(block.message), 'text')}"
    if isinstance(block, NoticeBlock):
        return f"*{md_inline(block.message)}*"
    return ""


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.split("\n"))


def _plain_tool(tool: ToolRun, limit: int) -> str:
    view = _tool_view(tool)
    lines = [f"[{one_line(view.title)}] {one_line(view.detail)}".rstrip() + f"  ({_status(tool)})"]
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
    if isinstance(block, TextBlock):
        return clean(block.text).strip("\n")
    if isinstance(block, ThinkingBlock):
        return f"[thinking: {len(block.text)} chars]" if block.text else "[thinking]"
    if isinstance(block, ToolRun):
        return _plain_tool(block, limit)
    if isinstance(block, ErrorBlock):
        note = f" ({clean(block.note)})" if block.note else ""
        return f"[error{note}] {clean(block.message)}"
    if isinstance(block, NoticeBlock):  # one line by design: no text inside can fake another
        return f"[{'!' if block.warn else 'i'}] {one_line(block.message)}"
    return ""


def render_bundle(blocks: Iterable[Block], footer: Footer, *, result_lines: int = RESULT_LINES) -> dict:
    """``{"text/plain", "text/markdown", "text/html"}`` for the blocks of a turn plus its footer."""
    blocks = list(blocks)
    footer_text = " · ".join(_footer_parts(footer))
    plain = [p for p in (_plain_block(b, result_lines) for b in blocks) if p]
    md = [p for p in (_md_block(b, result_lines) for b in blocks) if p]
    htm = [p for p in (_html_block(b, result_lines) for b in blocks) if p]
    return {
        "text/plain": "\n\n".join([*plain, f"── {footer_text}"]),
        "text/markdown": "\n\n".join([*md, f"*{md_inline(footer_text)}*"]) + "\n",
        "text/html": (
            f'<div class="pimagic-turn" style="{_S_ROOT}">'
            + "".join(htm)
            + f'<div style="{_S_FOOTER}">{_footer_html(footer)}</div></div>'
        ),
    }


def result_bundle(result: PiResult) -> dict:
    """The static bundle of a finished turn (what ``PiResult._repr_mimebundle_`` returns)."""
    blocks: list[Block] = result.blocks or ([TextBlock(result.text)] if result.text else [])
    if not result.blocks and result.error:
        blocks = [*blocks, ErrorBlock(result.error)]
    limit = RESULT_LINES if result.result_lines is None else result.result_lines
    return render_bundle(blocks, result.footer(), result_lines=limit)


# =========================================================================== the live view

SEGMENT_CHARS = 1024  # a growing paragraph longer than this is cut (at a line, else a space)
LIVE_INTERVAL = 1 / 60  # seconds between two live updates at most (a 60 Hz screen shows no more)

LiveEmit = Callable[[int, dict, bool], None]
_EMPTY: dict = {"text/plain": ""}


def seal_point(doc: str, floor: int = 0, cap: int = SEGMENT_CHARS) -> tuple[int, str] | None:
    """Where growing agent Markdown may be cut: ``doc[:cut]`` renders now as it always will, the
    rest keeps growing in its own output. Returns ``(cut, opener)`` (``opener``: the fence line
    the rest is rendered after, when the cut falls inside a fenced code block), or None.

    The last blank line outside code, before a line that starts a new block, is always a cut: a
    paragraph, a list or a finished code block renders alone as it does in the whole text. Past
    ``cap`` characters without one, the cut is the last line start (inside a fence, re-opened
    after the cut), else the last space, else ``cap``. Cuts lie after ``floor``. Only what is
    shown live is cut so; the static result renders the whole text.
    Fences are tracked as :func:`~pimagic.sanitize.prose_spans` does (column 0 only).
    """
    para = soft = None
    marker, opener, opened_at = "", "", -1
    pos = 0
    lines = doc.split("\n")
    for i, line in enumerate(lines):
        if i > 0 and pos > floor and line:
            prev = lines[i - 1]
            if not marker:
                if not line[0].isspace():
                    if not prev.strip():
                        para = (pos, "")
                    else:
                        soft = (pos, "")
            elif i - 1 != opened_at and not fence_closes(marker, line):
                soft = (pos, opener)
        if i < len(lines) - 1:  # a complete line: it may open or close a fence
            if not marker:
                marker = fence_opener(line)
                opener, opened_at = line, i
            elif fence_closes(marker, line):
                marker = ""
        pos += len(line) + 1
    if para is not None:
        return para
    if len(doc) - floor <= cap:
        return None
    if soft is not None:
        return soft
    space = doc.rfind(" ", floor + 1)
    cut = space + 1 if space > floor else floor + cap
    return cut, (opener if marker else "")


def _piece_html(inner: str) -> str:
    return f'<div class="pimagic-turn" style="{_S_ROOT}">{inner}</div>' if inner else ""


@dataclass
class _Segments:
    """How far a growing text block has been cut into finished pieces."""

    prefix: str = ""  # the text already cut off (a rewrite that changes it starts over)
    reopen: str = ""  # fence line the growing rest is rendered after
    sealed: list[dict] = field(default_factory=list)  # bundles of the finished pieces


class LiveView:
    """A turn shown as a column of display outputs ("slots"), updated in place.

    ``emit(slot, bundle, new)`` either shows a new output below the others (``new``) or replaces
    the content of an earlier one. Each block has its slots (a text block one per finished piece
    plus its growing rest); the footer is always the last slot: a new piece takes over the
    footer's slot and the footer is shown again below it. :meth:`show` re-renders only the blocks
    the turn reports as changed, and sends only the slots whose content changed. Live bundles
    carry ``text/html`` and ``text/plain`` (front ends show the richest; the static result that
    replaces them also has ``text/markdown``). A block gets a slot when it first shows something;
    one that stays empty while a later block appears shows below it once filled (live view only).
    """

    def __init__(self, emit: LiveEmit, result_lines: int = RESULT_LINES) -> None:
        self._emit = emit
        self._limit = result_lines
        self._sent: list[dict] = []  # slot -> the bundle it shows
        self._slots: dict[int, list[int]] = {}  # id(block) -> its slots
        self._texts: dict[int, _Segments] = {}
        self._footer_slot: int | None = None
        self.bytes_sent = 0  # characters of bundle content emitted (a proxy for what the front end gets)

    def appears(self, turn: Turn) -> bool:
        """A changed block has no output yet: showing it now puts something new on screen."""
        return any(not self._slots.get(id(block)) for block in turn.touched())

    def show(self, turn: Turn, footer: Footer) -> None:
        for block in turn.take_touched():
            self._show_block(block, self._pieces(block, turn.streaming(block)))
        self.show_footer(footer)

    def show_footer(self, footer: Footer) -> None:
        """The footer alone (the last slot); sent only when its text changed."""
        text = " · ".join(_footer_parts(footer, live=True))
        bundle = {"text/plain": f"── {text}",
                  "text/html": _piece_html(f'<div style="{_S_FOOTER}">{html.escape(text)}</div>')}
        if self._footer_slot is None:
            self._footer_slot = self._new(bundle)
        else:
            self._set(self._footer_slot, bundle)

    # ------------------------------------------------------------------ pieces of one block

    def _pieces(self, block: Block, streaming: bool) -> list[dict]:
        if isinstance(block, TextBlock):
            pieces = self._text_pieces(block)
        elif isinstance(block, ThinkingBlock) and streaming:
            # Folded anyway: while it grows, its length is all that changes on screen.
            n = len(block.text)
            pieces = [{"text/plain": f"[thinking: {n} chars]",
                       "text/html": _piece_html(f'<div style="{_S_MUTED}">Thinking… ({n} chars)</div>')}]
        elif isinstance(block, ToolRun):
            pieces = [{"text/plain": _plain_block(block, self._limit),
                       "text/html": _piece_html(_html_tool(block, self._limit, partial=not block.done))}]
        else:
            pieces = [{"text/plain": _plain_block(block, self._limit),
                       "text/html": _piece_html(_html_block(block, self._limit))}]
        return [p for p in pieces if p["text/plain"].strip() or p.get("text/html")]

    def _text_pieces(self, block: TextBlock) -> list[dict]:
        state = self._texts.setdefault(id(block), _Segments())
        text = block.text
        if not text.startswith(state.prefix):  # pi's final text differs from the deltas: start over
            state = self._texts[id(block)] = _Segments()
        while True:
            head = state.reopen + "\n" if state.reopen else ""
            doc = head + text[len(state.prefix):]
            cut = seal_point(doc, len(head))
            if cut is None:
                break
            at, state.reopen = cut
            state.sealed.append(self._text_bundle(doc[:at], len(head)))
            state.prefix = text[: len(state.prefix) + at - len(head)]
        return [*state.sealed, self._text_bundle(doc, len(head))]

    @staticmethod
    def _text_bundle(doc: str, head: int) -> dict:
        """``doc[:head]`` is the re-opened fence line: it shapes the HTML, plain text shows the agent's text only."""
        if not doc[head:].strip():
            return _EMPTY
        return {"text/plain": clean(doc[head:]).strip("\n"), "text/html": _piece_html(html_prose(doc))}

    # ------------------------------------------------------------------ slots

    def _show_block(self, block: Block, pieces: list[dict]) -> None:
        slots = self._slots.setdefault(id(block), [])
        for i, bundle in enumerate(pieces):
            if i < len(slots):
                self._set(slots[i], bundle)
            else:
                slots.append(self._new(bundle))
        for slot in slots[len(pieces):]:  # a block that shrank (pi's final text was shorter)
            self._set(slot, _EMPTY)

    def _new(self, bundle: dict) -> int:
        """A slot below the others; a piece takes over the footer's (the footer moves down)."""
        if self._footer_slot is not None:
            slot, self._footer_slot = self._footer_slot, None
            self._set(slot, bundle)
            return slot
        self._sent.append(bundle)
        self._send(len(self._sent) - 1, bundle, True)
        return len(self._sent) - 1

    def _set(self, slot: int, bundle: dict) -> None:
        if self._sent[slot] != bundle:
            self._sent[slot] = bundle
            self._send(slot, bundle, False)

    def _send(self, slot: int, bundle: dict, new: bool) -> None:
        self.bytes_sent += sum(len(v) for v in bundle.values())
        self._emit(slot, bundle, new)


class TurnRenderer:
    """One prompt's run: pi events folded into a :class:`~pimagic.turn.Turn`, shown live.

    ``emit(slot, bundle, new)`` (see :class:`LiveView`) sends what changed. The wait is measured
    from each change's arrival, not from the last update: a change that comes after ``throttle``
    seconds of calm, or that starts a new block (the first words of an answer, a tool call), is
    shown at once; one that is part of a burst is held until the burst pauses
    (:meth:`flush`, which the magic calls from its idle loop once pi is quiet for a tick) or until
    it has waited ``throttle`` (the next event after that sends it). So a steady stream is shown
    delta by delta, and a burst costs one update per ``throttle``. :meth:`finish` sends nothing:
    the :class:`PiResult` it returns is the cell's value and replaces the live view.
    """

    def __init__(
        self,
        emit: LiveEmit,
        *,
        throttle: float = LIVE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        result_lines: int = RESULT_LINES,
        model: str | None = None,
    ) -> None:
        self.turn = Turn(model)
        self._view = LiveView(emit, result_lines)
        self._throttle = throttle
        self._clock = clock
        self._result_lines = result_lines
        self._start = clock()
        self._last_event: float | None = None
        self._pending_since = 0.0  # arrival of the oldest change not shown yet
        self._dirty = False
        self._result: PiResult | None = None

    # ------------------------------------------------------------------ the turn

    @property
    def text(self) -> str:
        return self.turn.text

    @property
    def error(self) -> str | None:
        return self.turn.error

    @property
    def aborted(self) -> bool:
        return self.turn.aborted

    @property
    def settled(self) -> bool:
        return self.turn.settled

    @property
    def tool_calls(self) -> list[ToolRun]:
        return self.turn.tool_calls

    @property
    def bytes_sent(self) -> int:
        return self._view.bytes_sent

    def feed(self, event: dict) -> None:
        """Apply one pi event (unknown or malformed events are ignored) and maybe emit."""
        now = self._clock()
        calm = self._last_event is None or now - self._last_event >= self._throttle - 1e-9
        self._last_event = now
        if self.turn.feed(event):
            self._changed(now)
        due = now - self._pending_since >= self._throttle - 1e-9
        if self._dirty and (calm or due or self._view.appears(self.turn)):
            self.flush()

    def _changed(self, now: float) -> None:
        if not self._dirty:
            self._dirty, self._pending_since = True, now

    def add_error(self, message: str) -> None:
        self.turn.add_error(message)
        self._changed(self._clock())

    def add_notice(self, message: str, *, warn: bool = False) -> None:
        self.turn.add_notice(message, warn=warn)
        self._changed(self._clock())

    def mark_aborted(self, message: str = "") -> None:
        """The caller stopped the turn (Ctrl-C, timeout) before pi's own abort events arrived."""
        self.turn.mark_aborted(message)
        self._changed(self._clock())

    # ------------------------------------------------------------------ output

    def start_clock(self) -> None:
        """The prompt is sent now: the footer counts from here (not from the sandbox's start)."""
        self._start = self._clock()

    def tick(self) -> None:
        """pi is quiet (the magic calls this every tick): show what the throttle held back, and
        keep the footer's clock going while the model thinks or a tool runs silently."""
        if self._result is not None:
            return
        if self._dirty:
            self.flush()
        else:
            self._view.show_footer(self.turn.footer(self._clock() - self._start))

    def flush(self) -> None:
        """Send what changed (pi is quiet, or a held change is due)."""
        if not self._dirty or self._result is not None:
            return
        self._dirty = False
        self._view.show(self.turn, self.turn.footer(self._clock() - self._start))

    def bundle(self) -> dict:
        """The whole turn so far as one static bundle (after :meth:`finish`, the result's)."""
        if self._result is not None:
            return result_bundle(self._result)
        footer = self.turn.footer(self._clock() - self._start)
        return render_bundle(self.turn.blocks, footer, result_lines=self._result_lines)

    def finish(self, changed_files: Iterable[str] = (), duration: float | None = None) -> PiResult:
        """Close the turn and return its :class:`PiResult` (no more live updates)."""
        took = self._clock() - self._start if duration is None else duration
        self._result = self.turn.result(changed_files, took, self._result_lines)
        return self._result
