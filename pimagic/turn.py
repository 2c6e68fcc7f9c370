"""pi's RPC events folded into one turn (its blocks, usage, final text) and the :class:`PiResult`.

Pure: no display, no I/O. :class:`Turn` consumes the raw event dicts pi writes in RPC mode (see
pi's docs/json.md) one at a time; what it keeps is agent data, still unescaped (``render`` and
``sanitize`` make it safe to show). It also records which blocks changed since the live view last
looked, so a growing turn can be shown by re-sending only what changed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .advice import tidy_error

__all__ = [
    "Block", "ErrorBlock", "Footer", "NoticeBlock", "PiResult", "TextBlock", "ThinkingBlock", "ToolRun", "Turn",
    "format_tokens",
]


# =========================================================================== the blocks of a turn


@dataclass
class ToolRun:
    """One tool call of the turn: what the agent asked for and what came back."""

    name: str
    args: dict = field(default_factory=dict)
    result: str = ""
    is_error: bool = False
    id: str = ""
    done: bool = False
    duration_ms: float | None = None
    patch: str = ""  # the edit tool's unified diff with the file's real line numbers (its result details)


@dataclass(eq=False)
class TextBlock:
    text: str = ""


@dataclass(eq=False)
class ThinkingBlock:
    text: str = ""
    redacted: bool = False


@dataclass(eq=False)
class ErrorBlock:
    message: str
    note: str = ""  # e.g. "retrying 1/3 in 2s", "gave up after 3 attempts"
    retried: bool = False  # superseded by an automatic retry: shown as a warning, not a failure


@dataclass(eq=False)
class NoticeBlock:
    message: str
    warn: bool = False


Block = TextBlock | ThinkingBlock | ToolRun | ErrorBlock | NoticeBlock


@dataclass
class Footer:
    model: str | None
    usage: dict
    duration: float
    changed_files: list[str]
    status: str  # running | done | error | aborted


@dataclass
class PiResult:
    """What ``%%pi`` returns (and binds with ``-o NAME``). ``str(result)`` is the final answer."""

    text: str
    tool_calls: list[ToolRun] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    usage: dict = field(default_factory=dict)
    model: str | None = None
    error: str | None = None
    duration: float = 0.0
    aborted: bool = False
    blocks: list = field(default_factory=list, repr=False, compare=False)
    result_lines: int | None = field(default=None, repr=False, compare=False)  # None: render's default

    @property
    def ok(self) -> bool:
        return self.error is None and not self.aborted

    def __str__(self) -> str:
        return self.text

    def footer(self) -> Footer:
        status = "aborted" if self.aborted else "error" if self.error else "done"
        return Footer(self.model, self.usage, self.duration, self.changed_files, status)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        from .render import result_bundle  # render imports this module: import on use

        bundle = result_bundle(self)
        if include:
            bundle = {k: v for k, v in bundle.items() if k in include}
        if exclude:
            bundle = {k: v for k, v in bundle.items() if k not in exclude}
        return bundle


# =========================================================================== event fields


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


def add_usage(total: dict, usage: Any) -> dict:
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


def format_tokens(n: Any) -> str:
    if not isinstance(n, int | float):
        return "?"
    if n < 1000:
        return str(int(n))
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.2f}M"


# =========================================================================== the fold


class Turn:
    """One prompt's run, built from pi events. Unknown or malformed events are ignored."""

    def __init__(self, model: str | None = None) -> None:
        self.blocks: list[Block] = []
        self._content: dict[Any, Block] = {}  # contentIndex -> block, for the streaming message
        self._tools: dict[str, ToolRun] = {}
        self._compaction: NoticeBlock | None = None
        self._touched: dict[int, Block] = {}  # id -> block changed since take_touched()
        self._order: dict[int, int] = {}  # id -> position in blocks
        self.model = model  # the session's model until pi names the one answering
        self._usage: dict = {}
        self._live_usage: dict = {}  # cumulative usage of the assistant message still streaming
        self.text = ""  # text of the latest assistant message
        self.error: str | None = None
        self.aborted = False
        self.settled = False

    # ------------------------------------------------------------------ public API

    @property
    def usage(self) -> dict:
        return add_usage(self._usage, self._live_usage)

    @property
    def tool_calls(self) -> list[ToolRun]:
        return [b for b in self.blocks if isinstance(b, ToolRun)]

    def feed(self, event: dict) -> bool:
        """Apply one pi event; True if it was one this fold knows."""
        handler = getattr(self, "_on_" + _str(_dict(event).get("type")), None)
        if handler is None:
            return False
        handler(event)
        return True

    def streaming(self, block: Block) -> bool:
        """The block belongs to the assistant message still streaming (it may grow)."""
        return any(b is block for b in self._content.values())

    def touched(self) -> list[Block]:
        """The blocks added or changed since the last :meth:`take_touched` (unordered, kept)."""
        return list(self._touched.values())

    def take_touched(self) -> list[Block]:
        """The blocks added or changed since the last call, in turn order."""
        touched = sorted(self._touched.values(), key=lambda b: self._order[id(b)])
        self._touched.clear()
        return touched

    def add_error(self, message: str) -> None:
        """A failure seen by the caller, not by pi (timeout, pi exited, RPC broke)."""
        self._append(ErrorBlock(message))
        self.error = self.error or message

    def add_notice(self, message: str, *, warn: bool = False) -> None:
        self._append(NoticeBlock(message, warn))

    def mark_aborted(self, message: str = "") -> None:
        """The turn was stopped (Ctrl-C, timeout, or pi's own abort)."""
        if not self.aborted:
            self.aborted = True
            self._append(NoticeBlock(f"Aborted: {message}" if message else "Aborted", warn=True))
        self.error = self.error or message or "aborted"

    def footer(self, duration: float, changed_files: Iterable[str] = (), status: str = "running") -> Footer:
        return Footer(self.model, self.usage, duration, list(changed_files), status)

    def result(self, changed_files: Iterable[str], duration: float, result_lines: int | None = None) -> PiResult:
        """The turn as a :class:`PiResult`, independent of this object (blocks are copied)."""
        blocks = copy.deepcopy(self.blocks)
        return PiResult(
            text=self.text,
            tool_calls=[b for b in blocks if isinstance(b, ToolRun)],
            changed_files=list(changed_files),
            usage=self.usage,
            model=self.model,
            error=self.error,
            duration=duration,
            aborted=self.aborted,
            blocks=blocks,
            result_lines=result_lines,
        )

    # ------------------------------------------------------------------ helpers

    def _append(self, block: Block) -> Block:
        self._order[id(block)] = len(self.blocks)
        self.blocks.append(block)
        return self._touch(block)

    def _touch(self, block: Any) -> Any:
        self._touched[id(block)] = block
        return block

    def _tool(self, call_id: str, name: str) -> ToolRun:
        tool = self._tools.get(call_id) if call_id else None
        if tool is None:
            tool = ToolRun(name=name or "?", id=call_id)
            self._append(tool)
            if call_id:
                self._tools[call_id] = tool
        elif name:
            tool.name = name
        return self._touch(tool)

    def _content_block(self, index: Any, kind: type) -> Any:
        block = self._content.get(index)
        if not isinstance(block, kind):
            block = kind()
            self._content[index] = block
            self._append(block)
        return self._touch(block)

    def _take_model(self, message: dict) -> None:
        provider, model = _str(message.get("provider")), _str(message.get("model"))
        if model:
            self.model = f"{provider}/{model}" if provider else model

    # ------------------------------------------------------------------ event handlers

    def _on_message_start(self, event: dict) -> None:
        message = _dict(event.get("message"))
        if message.get("role") == "assistant":
            self._content = {}
            self._live_usage = {}
            self._take_model(message)

    def _on_message_update(self, event: dict) -> None:
        if isinstance(event.get("usage"), dict):
            self._live_usage = add_usage({}, event["usage"])
        ev = _dict(event.get("assistantMessageEvent"))
        kind, index = _str(ev.get("type")), ev.get("contentIndex")
        if kind in ("text_start", "text_delta", "text_end"):
            block = self._content_block(index, TextBlock)
            if kind == "text_delta":
                block.text += _str(ev.get("delta"))
            elif kind == "text_end" and isinstance(ev.get("content"), str):
                block.text = ev["content"]
        elif kind in ("thinking_start", "thinking_delta", "thinking_end"):
            block = self._content_block(index, ThinkingBlock)
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
                    block = self._content_block(index, TextBlock)
                    block.text = text
            elif kind == "thinking":
                text, redacted = _str(item.get("thinking")), bool(item.get("redacted"))
                if text or redacted or index in self._content:
                    block = self._content_block(index, ThinkingBlock)
                    block.text, block.redacted = text, redacted
            elif kind == "toolCall":
                tool = self._tool(_str(item.get("id")), _str(item.get("name")))
                if isinstance(item.get("arguments"), dict):
                    tool.args = item["arguments"]
        for block in self._content.values():  # no longer streaming: its final form is shown
            self._touch(block)
        self.text = "\n\n".join(t for t in texts if t)
        self._usage = add_usage(self._usage, message.get("usage"))
        self._live_usage = {}
        self._content = {}
        stop, err = message.get("stopReason"), tidy_error(_str(message.get("errorMessage")))
        if stop == "error":
            self._append(ErrorBlock(err or "the model request failed (no error message)"))
            self.error = err or "model error"
        elif stop == "aborted":
            self.mark_aborted(err)
        elif stop == "length":
            self._append(NoticeBlock("Stopped: the model reached its output token limit.", warn=True))

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
        patch = _dict(_dict(event.get("result")).get("details")).get("patch")
        if isinstance(patch, str):
            tool.patch = patch
        if isinstance(event.get("durationMs"), int | float):
            tool.duration_ms = event["durationMs"]

    def _on_auto_retry_start(self, event: dict) -> None:
        note = f"retrying {event.get('attempt', '?')}/{event.get('maxAttempts', '?')}"  # shown in parentheses
        if isinstance(event.get("delayMs"), int | float):
            note += f" in {event['delayMs'] / 1000:g}s"
        last = next((b for b in reversed(self.blocks) if isinstance(b, ErrorBlock)), None)
        if last is not None and not last.retried:
            last.retried, last.note = True, note
            self._touch(last)
        else:
            self._append(ErrorBlock(tidy_error(_str(event.get("errorMessage"))) or "error", note=note, retried=True))
        self.error = None  # superseded; a final failure comes back as message_end / auto_retry_end

    def _on_auto_retry_end(self, event: dict) -> None:
        if event.get("success"):
            return
        final = tidy_error(_str(event.get("finalError"))) or "unknown error"
        note = f"gave up after {event.get('attempt', '?')} attempts"
        last = self.blocks[-1] if self.blocks else None
        if isinstance(last, ErrorBlock) and not last.retried and last.message == final:
            last.note = note
            self._touch(last)
        else:
            self._append(ErrorBlock(final, note=note))
        self.error = final

    def _on_compaction_start(self, event: dict) -> None:
        reason = _str(event.get("reason"))
        self._compaction = NoticeBlock(f"Compacting context ({reason})…" if reason else "Compacting context…")
        self._append(self._compaction)

    def _on_compaction_end(self, event: dict) -> None:
        notice = self._compaction or NoticeBlock("")
        if notice is not self._compaction:
            self._append(notice)
        self._touch(notice)
        self._compaction = None
        result = _dict(event.get("result"))
        if event.get("aborted"):
            notice.message, notice.warn = "Context compaction aborted", True
        elif result:
            before, after = result.get("tokensBefore"), result.get("estimatedTokensAfter")
            counts = f": {format_tokens(before)} → {format_tokens(after)} tokens" if before and after else ""
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
            self.mark_aborted("")
