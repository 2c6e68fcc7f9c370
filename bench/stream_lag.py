"""Benchmark 6: a streamed turn on screen: delta -> display lag, and bytes sent to the front end.

The scripted model streams turns of unique fixed-width tokens (``s200x000 s200x001 ...``), one
token per SSE event, ``CHUNK_DELAY`` apart, at several lengths (50, 200, 800 deltas). Send times
are taken inside the scripted server right after each SSE event is written and flushed (its
``_write_chunk`` is wrapped for the duration). Everything runs in this one process, so all
timestamps share ``time.perf_counter``.

pimagic: a ``%%pi`` cell with its live view on, as in a kernel. The shell's display publisher is
replaced by one that builds and signs each message as ipykernel would (``jupyter_client``'s
``Session``: header, parent header, content) and counts its bytes. A token is on screen when the
first message whose ``text/plain`` holds it is ready to go out; the final ``execute_result``
(the static :class:`~pimagic.turn.PiResult`) counts as well. The time a ``text_delta`` reaches
the renderer (``feed``) is kept too: the lag split into transport and rendering.

Baseline: raw pi on the host, the same turns from a scripted server on 127.0.0.1; a token's
arrival is when the ``message_update``/``text_delta`` carrying it comes out of
``RpcClient.prompt``, and the bytes are pi's own event lines for the turn.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .common import Context, Metric, log, median, patched, percentile, summary

NAME = "stream_lag"
CHUNK_DELAY = 0.025
LENGTHS = (50, 200, 800)
QUICK_LENGTHS = (100, 400)  # --quick: no 800-delta turn (the growth is judged on the last pair)
FIRST_TARGET_MS = 33.0
P95_TARGET_MS = 50.0
GROWTH_TARGET = 5.0  # bytes ratio for 4x the deltas: 4 is linear, 16 quadratic


class SendLog:
    """Per-token send times recorded by the wrapped scripted-server writer."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.lock = threading.Lock()

    def wrap(self, original: Any) -> Any:
        log_ = self

        def _write_chunk(handler: Any, data: bytes) -> None:
            original(handler, data)
            now = time.perf_counter()
            if not data.startswith(b"data: {"):
                return
            try:
                chunk = json.loads(data[len(b"data: "):])
                text = (chunk["choices"][0]["delta"] or {}).get("content") or ""
            except (ValueError, KeyError, IndexError, TypeError):
                return
            token = text.strip()
            if token:
                with log_.lock:
                    log_.sent.setdefault(token, now)

        return _write_chunk


@dataclass
class TurnTimes:
    """One streamed turn: per-token lags (seconds, in token order) and the bytes it cost."""

    lags: list[float]
    bytes: int
    arrival: list[float] = field(default_factory=list)  # pimagic only: send -> renderer feed
    messages: int = 0


def _turn(prefix: str, n: int) -> tuple[Any, list[str], re.Pattern[str]]:
    from pimagic.scripted_model import Turn

    tokens = [f"{prefix}{i:03d}" for i in range(n)]
    width = len(tokens[0]) + 1
    turn = Turn(text="".join(t + " " for t in tokens), chunk_size=width, chunk_delay=CHUNK_DELAY)
    return turn, tokens, re.compile(re.escape(prefix) + r"\d{3}")


def _lags(seen: dict[str, float], sent: dict[str, float], tokens: list[str]) -> list[float]:
    missing = [t for t in tokens if t not in seen or t not in sent]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(tokens)} tokens not timed (e.g. {missing[:3]})")
    return [seen[t] - sent[t] for t in tokens]


def _note_delta(event: dict, pattern: re.Pattern[str], seen: dict[str, float], now: float) -> None:
    if event.get("type") != "message_update":
        return
    ev = event.get("assistantMessageEvent") or {}
    if ev.get("type") == "text_delta":
        for t in pattern.findall(ev.get("delta") or ""):
            seen.setdefault(t, now)


class FrontEnd:
    """The display publisher of a kernel, minus the socket: each message is built, signed and
    serialized as ipykernel sends it on iopub; its size and the tokens it shows are recorded."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        from IPython.core.displaypub import DisplayPublisher
        from jupyter_client.session import Session

        self.session = Session(key=b"pimagic-bench", username="bench")
        self.parent = self.session.msg("execute_request", {"code": "%%pi ..."})["header"]
        self.pattern = pattern
        self.seen: dict[str, float] = {}
        self.bytes = 0
        self.messages = 0
        front = self

        class Publisher(DisplayPublisher):
            def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
                content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
                front.send("update_display_data" if update else "display_data", content)

            def clear_output(self, wait=False):
                front.send("clear_output", {"wait": wait})

        self.publisher = Publisher()

    def send(self, msg_type: str, content: dict) -> None:
        frames = self.session.serialize(self.session.msg(msg_type, content, parent=self.parent))
        now = time.perf_counter()
        self.bytes += sum(len(f) for f in frames)
        self.messages += 1
        for t in self.pattern.findall(content.get("data", {}).get("text/plain", "")):
            self.seen.setdefault(t, now)


def pimagic_turn(ctx: Context, sends: SendLog, prefix: str, n: int) -> TurnTimes:
    """One streamed %%pi cell with the live view of a kernel."""
    import pimagic.magics as magics_mod

    cells = ctx.warm_cells()
    turn, tokens, pattern = _turn(prefix, n)
    front = FrontEnd(pattern)
    arrived: dict[str, float] = {}

    class TimedRenderer(magics_mod.TurnRenderer):
        def feed(self, event: dict) -> None:  # the event as the magic hands it to the renderer
            _note_delta(event, pattern, arrived, time.perf_counter())
            super().feed(event)

    shell = cells.shell
    ctx.gateway_server.push(turn)
    saved = shell.display_pub
    shell.display_pub = front.publisher
    try:
        with patched(magics_mod, "TurnRenderer", TimedRenderer), \
                patched(magics_mod, "_in_kernel", lambda _shell: True):
            result = cells.run(f"stream {prefix}")
    finally:
        shell.display_pub = saved
    data, metadata = shell.display_formatter.format(result)
    front.send("execute_result", {"data": data, "metadata": metadata, "execution_count": 1})
    return TurnTimes(_lags(front.seen, sends.sent, tokens), front.bytes, _lags(arrived, sends.sent, tokens),
                     front.messages)


def raw_turn(ctx: Context, sends: SendLog, prefix: str, n: int) -> TurnTimes:
    host = ctx.host_pi()
    turn, tokens, pattern = _turn(prefix, n)
    seen: dict[str, float] = {}
    size = 0
    ctx.loopback_server.push(turn)
    for event in host.client.prompt(f"stream {prefix}", timeout=120):
        _note_delta(event, pattern, seen, time.perf_counter())
        size += len(json.dumps(event, ensure_ascii=False).encode()) + 1  # pi's JSON line
    return TurnTimes(_lags(seen, sends.sent, tokens), size)


def _growth(by_length: dict[int, list[int]], small: int, large: int) -> float:
    return median(by_length[large]) / median(by_length[small])


def run(ctx: Context) -> list[Metric]:
    import pimagic.scripted_model as sm

    lengths = QUICK_LENGTHS if ctx.sizes.stream_turns < 2 else LENGTHS
    reps = max(1, ctx.sizes.stream_turns // 2)
    ctx.warm_cells()
    ctx.host_pi()
    sends = SendLog()
    ours: dict[int, list[TurnTimes]] = {n: [] for n in lengths}
    raw: dict[int, list[TurnTimes]] = {n: [] for n in lengths}
    log(f"{NAME}: turns of {', '.join(map(str, lengths))} deltas ({CHUNK_DELAY * 1e3:.0f} ms apart), "
        f"{reps} of each, pimagic and raw pi interleaved")
    with patched(sm._Handler, "_write_chunk", sends.wrap(sm._Handler._write_chunk)):
        for rep in range(reps):
            for n in lengths:
                ours[n].append(pimagic_turn(ctx, sends, f"s{n}r{rep}x", n))
                raw[n].append(raw_turn(ctx, sends, f"h{n}r{rep}x", n))

    def flat(turns: dict[int, list[TurnTimes]], attr: str = "lags") -> list[float]:
        return [lag for ts in turns.values() for t in ts for lag in getattr(t, attr)]

    ms = 1e3
    lags, raw_lags, arrival = flat(ours), flat(raw), flat(ours, "arrival")
    after_arrival = [lag - a for t in (t for ts in ours.values() for t in ts) for lag, a in zip(t.lags, t.arrival,
                                                                                               strict=True)]
    first = [t.lags[0] for ts in ours.values() for t in ts]
    raw_first = [t.lags[0] for ts in raw.values() for t in ts]
    bytes_ours = {n: [t.bytes for t in ts] for n, ts in ours.items()}
    bytes_raw = {n: [t.bytes for t in ts] for n, ts in raw.items()}
    details = {
        "chunk_delay_s": CHUNK_DELAY, "lengths": list(lengths), "reps": reps,
        "pimagic": summary(lags), "raw": summary(raw_lags), "arrival": summary(arrival),
        "after_arrival": summary(after_arrival), "first_s": first, "raw_first_s": raw_first,
        "bytes": {str(n): v for n, v in bytes_ours.items()}, "raw_bytes": {str(n): v for n, v in bytes_raw.items()},
        "messages": {str(n): [t.messages for t in ts] for n, ts in ours.items()},
        "pimagic_s": lags, "raw_s": raw_lags, "arrival_s": arrival,
    }
    p95 = percentile(lags, 95) * ms
    metrics = [
        Metric(NAME, "first delta of a turn -> display, max", max(first) * ms, max(raw_first) * ms, "ms",
               "raw host pi text_delta", target=f"<= {FIRST_TARGET_MS:.0f} ms",
               passed=max(first) * ms <= FIRST_TARGET_MS,
               note=f"{len(first)} turns; median {median(first) * ms:.1f} ms; from the model server's send",
               details=details),
        Metric(NAME, "delta -> display, p95", p95, percentile(raw_lags, 95) * ms, "ms", "raw host pi text_delta",
               target=f"<= {P95_TARGET_MS:.0f} ms", passed=p95 <= P95_TARGET_MS,
               note=f"{len(lags)} deltas; median {median(lags) * ms:.1f} ms (raw {median(raw_lags) * ms:.1f} ms); "
                    f"from the text_delta's arrival on the host: median {median(after_arrival) * ms:.1f} ms, "
                    f"p95 {percentile(after_arrival, 95) * ms:.1f} ms"),
        Metric(NAME, "  of which event arrival, p95", percentile(arrival, 95) * ms, percentile(raw_lags, 95) * ms,
               "ms", "raw host pi text_delta",
               note="text_delta handed to the renderer by the %%pi cell (sandbox transport, before rendering); "
                    f"median {median(arrival) * ms:.1f} ms"),
    ]
    for n in lengths:
        metrics.append(Metric(NAME, f"bytes to the front end, {n}-delta turn", median(bytes_ours[n]) / 1024,
                              median(bytes_raw[n]) / 1024, "KiB", "raw pi's event lines",
                              note=f"{median([t.messages for t in ours[n]]):.0f} iopub messages (live + result)"))
    for small, large in zip(lengths, lengths[1:], strict=False):
        growth, raw_growth = _growth(bytes_ours, small, large), _growth(bytes_raw, small, large)
        k = large / small
        judged = k == 4 and large == lengths[-1]  # below ~150 deltas the growing piece is still filling up
        metrics.append(Metric(
            NAME, f"bytes growth {small} -> {large} deltas", round(growth, 2), round(raw_growth, 2), "x",
            "raw pi's event lines", target=f"<= {GROWTH_TARGET:g}x (linear {k:g}x)" if judged else "",
            ratio=growth / raw_growth, passed=growth <= GROWTH_TARGET if judged else None,
            note=f"exponent {math.log(growth) / math.log(k):.2f} (1 linear, 2 quadratic); "
                 f"raw pi {math.log(raw_growth) / math.log(k):.2f}"))
    return metrics
