"""Agent text made safe for each place it is shown: terminal, Markdown, HTML.

The agent is hostile. Everything it controls is

* stripped of terminal control sequences (``text/plain`` is printed by terminal IPython, where
  ANSI/OSC sequences could rewrite the screen or the clipboard);
* kept inert in ``text/markdown``: code goes in fences longer than any backtick run inside, prose
  has raw-HTML openers and link/image brackets neutralised outside code;
* HTML-escaped in ``text/html`` (agent Markdown is rendered with raw HTML and images off).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

__all__ = [
    "FENCE_OPEN", "clean", "escape_name", "fence", "fence_closes", "fence_opener", "html_prose", "html_text",
    "external_href", "md_inline", "md_prose", "one_line", "prose_spans",
]

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


def one_line(text: str) -> str:
    return " ".join(clean(text).split())


def html_text(text: str, *, overwrite: bool = False) -> str:
    return html.escape(clean(text, overwrite=overwrite), quote=True)


def fence(text: str, info: str = "") -> str:
    """A fenced block that ``text`` cannot close: the fence is longer than any backtick run inside."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"{ticks}{info}\n{body}{ticks}"


_MD_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")


def md_inline(text: str) -> str:
    """Agent text shown literally in Markdown prose: every ASCII punctuation backslash-escaped."""
    return _MD_PUNCT.sub(r"\\\1", one_line(text))


FENCE_OPEN = re.compile(r"(`{3,}|~{3,})(.*)")
_RAW_HTML = re.compile(r"<(?=[A-Za-z/!?])")


def fence_opener(line: str) -> str:
    """The fence marker (```` ``` ````, ``~~~``...) if ``line`` opens a fence in column 0, else ""."""
    m = FENCE_OPEN.fullmatch(line)
    if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
        return m.group(1)
    return ""


def fence_closes(marker: str, line: str) -> bool:
    """CommonMark closer: <= 3 spaces (a tab counts as 4), the fence char at least as often."""
    return re.fullmatch(f" {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*", line) is not None


def prose_spans(text: str) -> Iterator[tuple[str, str]]:
    """Split agent Markdown into ``("code", fence_text)`` and ``("prose", line)`` pieces.

    Only fences that start in column 0 are recognised: such a fence cannot sit inside a list or
    quote, so a CommonMark renderer agrees on where it starts and ends. A fence the agent leaves
    open is closed, so it cannot swallow what we render after it.
    """
    block: list[str] | None = None
    marker = ""
    for line in text.split("\n"):
        if block is None:
            marker = fence_opener(line)
            if marker:
                block = [line]
            else:
                yield "prose", line
        else:
            block.append(line)
            if fence_closes(marker, line):
                yield "code", "\n".join(block)
                block = None
    if block is not None:
        block.append(marker)
        yield "code", "\n".join(block)


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


def md_prose(text: str) -> str:
    return "\n".join(
        piece if kind == "code" else _md_prose_line(piece) for kind, piece in prose_spans(clean(text))
    )


def markdown() -> Any:
    """CommonMark with raw HTML off (escaped) and images off: an image URL would load by itself in
    the user's browser, a channel for the agent to send data out. Links to http(s) hosts stay (a
    click is a choice) with their target shown next to them; any other link is shown, not linked
    (see `_link_open`): only the footer links the folder's files."""
    global _MD
    if _MD is None:
        from markdown_it import MarkdownIt

        _MD = MarkdownIt("commonmark", {"html": False}).disable("image").enable("table")
        _MD.add_render_rule("link_open", _link_open)
        _MD.add_render_rule("link_close", _link_close)
    return _MD


def external_href(href: str) -> bool:
    """An absolute http(s) URL with a host: the only link agent prose keeps. Paths (`/etc/x`,
    `../x`, `snake.py`), scheme-relative `//host` and every other scheme are not links there,
    so agent prose cannot pass for the footer's file links."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(href)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.hostname) and "\\" not in href


def _link_text(tokens: list[Any], idx: int) -> str:
    """The plain text between link_open at `idx` and its link_close."""
    out = []
    for tok in tokens[idx + 1:]:
        if tok.type == "link_close":
            break
        out.append(tok.content)
    return "".join(out)


def _open_of(tokens: list[Any], idx: int) -> Any:
    """The link_open that the link_close at `idx` ends (CommonMark links do not nest)."""
    return next(tok for tok in reversed(tokens[:idx]) if tok.type == "link_open")


def _link_open(renderer: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
    href = tokens[idx].attrGet("href") or ""
    if not external_href(href):
        return ""  # the text alone; link_close shows where it pointed
    return renderer.renderToken(tokens, idx, options, env)


def _link_close(renderer: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
    opening = _open_of(tokens, idx)
    href = opening.attrGet("href") or ""
    target = f' <span class="pimagic-href">({html.escape(one_line(href), quote=True)})</span>'
    shown = _link_text(tokens, tokens.index(opening)) == href  # an autolink shows its target already
    if not external_href(href):
        return "" if shown else target
    return renderer.renderToken(tokens, idx, options, env) + ("" if shown else target)


_MD: Any = None


def html_prose(text: str) -> str:
    """Agent Markdown rendered to HTML (the cell shows Markdown, not its source), safely."""
    return f'<div class="pimagic-text">{markdown().render(clean(text))}</div>'


