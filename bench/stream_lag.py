"""Benchmark 6: lag from the model streaming a text delta to the display showing it.

The scripted model streams a turn of unique fixed-width tokens (``a1t000 a1t001 ...``), one token
per SSE event, ``chunk_delay`` apart. Send times are taken inside the scripted server right after
each SSE event is written and flushed (its ``_write_chunk`` is wrapped for the duration of the
benchmark). Everything runs in this one process, so all timestamps share ``time.perf_counter``.

pimagic: the ``%%pi`` cell's :class:`~pimagic.render.TurnRenderer` is created with a wrapped
``emit`` callback; a token's display time is the first emitted bundle whose ``text/plain``
contains it. That includes the renderer's throttle (one update per 100 ms at most), the part of
the lag a user actually sees.

Baseline: raw host pi; a token's arrival is when the ``message_update``/``text_delta`` event that
carries it comes out of ``RpcClient.prompt``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from .common import Context, Metric, log, median, patched, percentile, summary

NAME = "stream_lag"
CHUNK_DELAY = 0.025


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


def _turn(prefix: str, n: int) -> tuple[Any, list[str]]:
    from pimagic.scripted_model import Turn

    tokens = [f"{prefix}{i:03d}" for i in range(n)]
    width = len(tokens[0]) + 1
    return Turn(text="".join(t + " " for t in tokens), chunk_size=width, chunk_delay=CHUNK_DELAY), tokens


def _lags(seen: dict[str, float], sent: dict[str, float], tokens: list[str]) -> list[float]:
    missing = [t for t in tokens if t not in seen or t not in sent]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(tokens)} tokens not timed (e.g. {missing[:3]})")
    return [seen[t] - sent[t] for t in tokens]


def _note_delta(event: dict, tokens: list[str], seen: dict[str, float], now: float) -> None:
    if event.get("type") != "message_update":
        return
    ev = event.get("assistantMessageEvent") or {}
    if ev.get("type") == "text_delta":
        delta = ev.get("delta") or ""
        for t in tokens:
            if t not in seen and t in delta:
                seen[t] = now


def pimagic_turn(ctx: Context, sends: SendLog, prefix: str, n: int) -> tuple[list[float], list[float]]:
    """(display lags, event-arrival lags) of one streamed %%pi cell."""
    import pimagic.magics as magics_mod

    cells = ctx.warm_cells()
    turn, tokens = _turn(prefix, n)
    seen: dict[str, float] = {}
    arrived: dict[str, float] = {}
    original = magics_mod.TurnRenderer

    def renderer(emit: Any, **kwargs: Any) -> Any:
        def timed_emit(bundle: dict, final: bool) -> None:
            now = time.perf_counter()
            text = bundle.get("text/plain", "")
            for t in tokens:
                if t not in seen and t in text:
                    seen[t] = now
            emit(bundle, final)

        instance = original(timed_emit, **kwargs)
        feed = instance.feed

        def timed_feed(event: dict) -> None:  # the event as the magic hands it to the renderer
            _note_delta(event, tokens, arrived, time.perf_counter())
            feed(event)

        instance.feed = timed_feed
        return instance

    ctx.gateway_server.push(turn)
    with patched(magics_mod, "TurnRenderer", renderer):
        cells.run(f"stream {prefix}")
    return _lags(seen, sends.sent, tokens), _lags(arrived, sends.sent, tokens)


def raw_turn(ctx: Context, sends: SendLog, prefix: str, n: int) -> list[float]:
    host = ctx.host_pi()
    turn, tokens = _turn(prefix, n)
    seen: dict[str, float] = {}
    ctx.loopback_server.push(turn)
    for event in host.client.prompt(f"stream {prefix}", timeout=120):
        _note_delta(event, tokens, seen, time.perf_counter())
    return _lags(seen, sends.sent, tokens)


def run(ctx: Context) -> list[Metric]:
    import pimagic.scripted_model as sm

    turns, n = ctx.sizes.stream_turns, ctx.sizes.stream_tokens
    ctx.warm_cells()
    ctx.host_pi()
    sends = SendLog()
    pimagic: list[float] = []
    arrival: list[float] = []
    raw: list[float] = []
    log(f"{NAME}: {turns} streamed turns of {n} deltas, {CHUNK_DELAY * 1e3:.0f} ms apart, each way")
    with patched(sm._Handler, "_write_chunk", sends.wrap(sm._Handler._write_chunk)):
        for i in range(turns):
            display, arrived = pimagic_turn(ctx, sends, f"p{i}t", n)
            pimagic += display
            arrival += arrived
            raw += raw_turn(ctx, sends, f"r{i}t", n)
    ms = 1e3
    ratio = median(pimagic) / median(raw) if median(raw) > 0 else None
    details = {"pimagic_s": pimagic, "arrival_s": arrival, "raw_s": raw, "pimagic": summary(pimagic),
               "arrival": summary(arrival), "raw": summary(raw),
               "chunk_delay_s": CHUNK_DELAY, "tokens_per_turn": n, "turns": turns}
    return [
        Metric(NAME, "delta -> display lag, median", median(pimagic) * ms, median(raw) * ms, "ms",
               "raw host pi text_delta", ratio=ratio,
               note=f"{len(pimagic)} deltas; includes the renderer's 100 ms update throttle", details=details),
        Metric(NAME, "delta -> display lag, p95", percentile(pimagic, 95) * ms, percentile(raw, 95) * ms, "ms",
               "raw host pi text_delta"),
        Metric(NAME, "  of which event arrival, median", median(arrival) * ms, median(raw) * ms, "ms",
               "raw host pi text_delta",
               note="text_delta handed to the renderer by the %%pi cell (sandbox transport, before the throttle); "
                    f"p95 {percentile(arrival, 95) * ms:.1f} ms"),
    ]
