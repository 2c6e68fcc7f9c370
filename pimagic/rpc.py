"""Talk to pi's RPC mode (``pi --mode rpc``): JSONL commands in, responses and events out.

Layered so the hard parts are testable without pi or Docker:

1. pure framing: :class:`DockerFrameDecoder` (Docker's multiplexed exec stream; :func:`demux`
   reads a blocking socket through it),
   :class:`JsonlDecoder` (pi's strict JSONL) and :func:`encode_command`;
2. transports (:class:`SocketTransport` for a ``docker exec`` socket, :class:`ProcessTransport` for a
   host subprocess) that only move bytes;
3. :class:`RpcClient`, which correlates responses to commands by id and hands a prompt's events to
   exactly one iterator.

Facts about pi 1.5.2 this relies on: pi prints nothing at start (``get_state`` tells when it is
ready); a run ends with ``agent_settled`` (``agent_end`` repeats on each automatic retry); closing
pi's stdin ends the process and kills a run in flight, so stdin stays open for the process's life;
``abort`` is answered only after the session is idle, i.e. after ``agent_settled``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from pimagic.errors import RpcError

__all__ = [
    "STDERR",
    "STDOUT",
    "DockerFrameDecoder",
    "MAX_FRAME",
    "MAX_LINE",
    "JsonlDecoder",
    "ProcessTransport",
    "RpcClient",
    "SocketTransport",
    "Transport",
    "UndecodableLine",
    "assistant_error",
    "demux",
    "encode_command",
]

_FRESH_PI_HINT = "this pi process was ended; the next cell starts a fresh one and resumes the conversation"
TICK = "pimagic_tick"  # yielded by prompt(tick=...) while pi is quiet; never sent by pi
STDOUT = 1
"""Stream id of pi's stdout (Docker's multiplexing uses the same numbers)."""
STDERR = 2
"""Stream id of pi's stderr."""

_HEADER = struct.Struct(">BxxxL")
_READ_SIZE = 65536
MAX_FRAME = 16 * 1024 * 1024
"""Largest Docker frame accepted. Docker copies the process's pipe through 32 KiB buffers, one
frame per read, so a bigger frame header can only come from a corrupt or hostile stream."""
MAX_LINE = 256 * 1024 * 1024
"""Longest stdout line accepted from pi. pi's largest records repeat a whole run's messages
(``agent_end``, ``get_messages``), images included as base64 (pi caps each image at 4.5 MB):
256 MiB leaves room for ~50 full-size images in one run while bounding the host's memory."""

# ------------------------------------------------------------------------------------------------
# 1. Pure framing
# ------------------------------------------------------------------------------------------------


class DockerFrameDecoder:
    """Split Docker's multiplexed attach stream into ``(stream, payload)`` frames.

    Each frame is an 8-byte header ``[stream, 0, 0, 0, size(uint32 BE)]`` and ``size`` payload
    bytes. Reads from a socket cut frames anywhere (even inside the header), so bytes are buffered
    until a frame is complete. A header announcing more than ``max_frame`` bytes raises
    :class:`RpcError` before anything is buffered for it.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Buffer ``data`` now; iterate the frames that are complete."""
        self._buf += data
        return self._frames()

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        buf = self._buf
        while len(buf) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(buf)
            if size > self.max_frame:
                raise RpcError(
                    f"the sandbox sent a {size}-byte stream frame (the limit is {self.max_frame})",
                    stderr="",
                    hint="the connection to pi was corrupt and is closed; the next cell starts a fresh pi",
                )
            end = _HEADER.size + size
            if len(buf) < end:
                return
            payload = bytes(buf[_HEADER.size : end])
            del buf[:end]
            yield stream, payload

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered (non-zero at EOF means a truncated stream)."""
        return len(self._buf)


def demux(sock: Any) -> Iterator[tuple[int, bytes]]:
    """Read a blocking socket to EOF as Docker's ``(stream, payload)`` frames: short execs
    (``Sandbox.exec``, the CLI's plain streams). The socket's own timeout applies to each read."""
    decoder = DockerFrameDecoder()
    while data := sock.recv(_READ_SIZE):
        yield from decoder.feed(data)


@dataclass(frozen=True)
class UndecodableLine:
    """A stdout line that is not a JSON object; reported instead of raised so one bad line can't
    kill the reader. ``oversized``: longer than the decoder's limit (``line`` holds its start)."""

    line: bytes
    error: str
    oversized: bool = False


class JsonlDecoder:
    """Decode pi's JSONL: split only on LF, strip one CR before it, parse each line as a JSON object.

    Splitting on bytes keeps multi-byte UTF-8 characters cut across reads intact and never treats
    U+2028/U+2029 (legal inside JSON strings) as record boundaries, unlike ``str.splitlines``.

    Linear time: each byte is searched for LF once (``_scanned`` remembers how far the pending
    line was searched), so a line fed in many small reads costs no more than one read. A line
    longer than ``max_line`` is reported once as an ``oversized`` :class:`UndecodableLine` and
    its remaining bytes are dropped up to its LF, so memory stays bounded by ``max_line``.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes at the start of _buf known to hold no LF
        self._skipping = False  # inside an oversized line: drop bytes up to its LF
        self.max_line = max_line

    def feed(self, data: bytes) -> Iterator[dict[str, Any] | UndecodableLine]:
        """Buffer ``data`` now; iterate the records of every complete line."""
        self._buf += data
        return self._records()

    def finish(self) -> Iterator[dict[str, Any] | UndecodableLine]:
        """At EOF: decode a last line that had no terminating LF."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        if rest.strip() and not self._skipping:
            yield _decode_line(rest)

    def _records(self) -> Iterator[dict[str, Any] | UndecodableLine]:
        buf = self._buf
        while True:
            end = buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(buf)
                if self._skipping or len(buf) > self.max_line + 1:  # + 1: a CR before the LF
                    yield from self._overflow()
                return
            line = bytes(buf[:end])
            del buf[: end + 1]
            self._scanned = 0
            if self._skipping:  # the tail of an oversized line, already reported
                self._skipping = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                yield UndecodableLine(line[:200], f"line longer than {self.max_line} bytes", oversized=True)
                continue
            if line.strip():
                yield _decode_line(line)

    def _overflow(self) -> Iterator[UndecodableLine]:
        """The pending line passed ``max_line`` without an LF: report it once, drop what is buffered."""
        if not self._skipping:
            self._skipping = True
            yield UndecodableLine(bytes(self._buf[:200]), f"line longer than {self.max_line} bytes", oversized=True)
        self._buf.clear()
        self._scanned = 0


def _decode_line(line: bytes) -> dict[str, Any] | UndecodableLine:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return UndecodableLine(line, str(exc))
    if not isinstance(record, dict):
        return UndecodableLine(line, f"expected a JSON object, got {type(record).__name__}")
    return record


def encode_command(command: dict[str, Any]) -> bytes:
    """One JSONL record. ASCII-escaped, so no raw LF/U+2028 can end up inside the line."""
    return json.dumps(command, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def assistant_error(event: dict[str, Any]) -> str | None:
    """The error text if ``event`` is an assistant ``message_end`` that failed (pi reports provider
    failures this way, not as a command error), else None."""
    if event.get("type") != "message_end":
        return None
    message = event.get("message") or {}
    if message.get("role") != "assistant" or message.get("stopReason") != "error":
        return None
    return str(message.get("errorMessage") or "model request failed")


# ------------------------------------------------------------------------------------------------
# 2. Transports
# ------------------------------------------------------------------------------------------------


class Transport(Protocol):
    """Moves bytes to pi's stdin and from its stdout/stderr; knows nothing about JSON."""

    def write(self, data: bytes) -> None:
        """Send bytes to pi's stdin (blocking until handed to the OS)."""

    def read_chunks(self) -> Iterator[tuple[int, bytes]]:
        """Blocking iterator of ``(STDOUT|STDERR, bytes)``; ends when pi's output ends. Call once."""

    def close(self) -> None:
        """End the connection, which ends pi. Must unblock a pending ``read_chunks``."""

    def exit_status(self) -> int | None:
        """pi's exit code if known; asked once its output has ended, to enrich the error."""


class SocketTransport:
    """A ``docker exec`` attach socket (``api.exec_start(exec_id, socket=True)``).

    Reads carry Docker's multiplexed frames unless the exec has a TTY (``multiplexed=False``);
    writes go to pi's stdin unframed. docker-py wraps the socket in ``SocketIO`` (with the API
    client's timeout set), so the raw ``_sock`` is used and the timeout cleared: pi may be silent
    for minutes during a long tool call. The write side is never half-closed, since closing pi's
    stdin ends pi.
    """

    def __init__(
        self,
        sock: Any,
        multiplexed: bool = True,
        *,
        exit_status: Callable[[], int | None] | None = None,
    ) -> None:
        self._outer = sock
        self._sock = getattr(sock, "_sock", sock)
        self._multiplexed = multiplexed
        self._exit_status = exit_status
        self._closed = False
        with contextlib.suppress(AttributeError, OSError):
            self._sock.settimeout(None)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise OSError("transport is closed")
        self._sock.sendall(data)

    def read_chunks(self) -> Iterator[tuple[int, bytes]]:
        decoder = DockerFrameDecoder() if self._multiplexed else None
        while True:
            try:
                data = self._sock.recv(_READ_SIZE)
            except (OSError, ValueError):  # closed under us (ValueError: fd -1 on some platforms)
                if self._closed:
                    return
                raise
            if not data:
                return
            if decoder is None:
                yield STDOUT, data
            else:
                yield from decoder.feed(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # shutdown (not close alone) wakes a reader blocked in recv on Linux.
        with contextlib.suppress(AttributeError, OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        for s in (self._sock, self._outer):
            with contextlib.suppress(OSError):
                s.close()

    def exit_status(self) -> int | None:
        if self._exit_status is None:
            return None
        try:
            return self._exit_status()
        except Exception:  # best effort: only used to enrich an error message
            return None


class ProcessTransport:
    """pi as a host subprocess started with ``stdin=stdout=stderr=PIPE`` (used by the benchmark).

    Two pump threads read stdout and stderr so neither pipe can fill up and stall pi; their chunks
    are merged into one stream for the client's reader.
    """

    def __init__(self, popen: subprocess.Popen[bytes], *, shutdown_grace: float = 3.0) -> None:
        if popen.stdin is None or popen.stdout is None or popen.stderr is None:
            raise ValueError("ProcessTransport needs stdin, stdout and stderr as PIPEs")
        self.popen = popen
        self._grace = shutdown_grace
        self._lock = threading.Lock()
        self._closed = False

    def write(self, data: bytes) -> None:
        stdin = self.popen.stdin
        assert stdin is not None
        with self._lock:
            stdin.write(data)
            stdin.flush()

    def read_chunks(self) -> Iterator[tuple[int, bytes]]:
        chunks: queue.Queue[tuple[int, bytes] | int] = queue.Queue()

        def pump(stream_id: int, pipe: Any) -> None:
            try:
                while data := _read_some(pipe):
                    chunks.put((stream_id, data))
            except (OSError, ValueError):
                pass
            finally:
                chunks.put(stream_id)  # this pipe is done

        for stream_id, pipe in ((STDOUT, self.popen.stdout), (STDERR, self.popen.stderr)):
            threading.Thread(target=pump, args=(stream_id, pipe), name=f"pi-pipe-{stream_id}", daemon=True).start()
        open_pipes = 2
        while open_pipes:
            item = chunks.get()
            if isinstance(item, int):
                open_pipes -= 1
            else:
                yield item

    def close(self) -> None:
        """Close stdin (pi's orderly shutdown), then escalate to SIGTERM/SIGKILL if it lingers."""
        if self._closed:
            return
        self._closed = True
        p = self.popen
        with contextlib.suppress(OSError, ValueError):
            p.stdin.close()  # type: ignore[union-attr]
        for stop in (None, p.terminate, p.kill):
            if stop is not None:
                with contextlib.suppress(OSError):
                    stop()
            try:
                p.wait(self._grace)
                break
            except subprocess.TimeoutExpired:
                continue
        for pipe in (p.stdout, p.stderr):
            with contextlib.suppress(OSError, ValueError):
                pipe.close()  # type: ignore[union-attr]

    def exit_status(self) -> int | None:
        # Asked when pi's output ended: the pipes close a moment before the process is reaped.
        try:
            return self.popen.wait(1.0)
        except subprocess.TimeoutExpired:
            return None


def _read_some(pipe: Any) -> bytes:
    read1 = getattr(pipe, "read1", None)
    return read1(_READ_SIZE) if read1 is not None else pipe.read(_READ_SIZE)


# ------------------------------------------------------------------------------------------------
# 3. Client
# ------------------------------------------------------------------------------------------------


class _Turn:
    """The one subscriber of pi's events while a prompt runs."""

    def __init__(self) -> None:
        self.events: queue.Queue[dict[str, Any] | RpcError] = queue.Queue()
        self.settled = False  # pi sent agent_settled for this turn (set by the reader thread)


class RpcClient:
    """Commands with id-correlated responses plus one prompt-at-a-time event stream over a transport.

    A daemon reader thread owns the transport's output: responses resolve the waiting command,
    events go to the running prompt's iterator (or are dropped between prompts), stderr lands in a
    bounded tail that every :class:`RpcError` carries. When pi's output ends every waiter fails.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        stderr_limit: int = 16384,
        call_timeout: float = 30.0,
        abort_wait: float = 5.0,
        max_line: int = MAX_LINE,
    ) -> None:
        self.transport = transport
        self.max_line = max_line
        self.call_timeout = call_timeout
        self.abort_wait = abort_wait
        self._stderr_limit = stderr_limit
        self._stderr = bytearray()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[str, Future[dict[str, Any]]] = {}
        self._turn: _Turn | None = None
        self._idle = threading.Event()  # cleared by agent_start, set by agent_settled
        self._idle.set()
        self._closed = False
        self._eof_error: RpcError | None = None
        self._reader = threading.Thread(target=self._read_loop, name="pimagic-rpc-reader", daemon=True)
        self._reader.start()

    # -- state -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the client was closed or pi's output ended (pi exited)."""
        return self._closed or self._eof_error is not None

    @property
    def stderr_tail(self) -> str:
        """The last ``stderr_limit`` bytes pi wrote to stderr (plus notes about bad stdout lines)."""
        with self._lock:
            return self._stderr.decode("utf-8", "replace")

    @property
    def busy(self) -> bool:
        """True between pi's ``agent_start`` and ``agent_settled``."""
        return not self._idle.is_set()

    def _error(self, message: str, hint: str | None = None) -> RpcError:
        return RpcError(message, stderr=self.stderr_tail, hint=hint)

    def _check_open(self) -> None:
        if self._closed:
            raise self._error("the RPC client is closed")
        if self._eof_error is not None:
            raise self._error(self._eof_error.message, self._eof_error.hint)

    # -- reader thread ---------------------------------------------------------------------------

    def _read_loop(self) -> None:
        decoder = JsonlDecoder(self.max_line)
        reason, hint = "pi exited", None
        try:
            for stream, data in self.transport.read_chunks():
                if stream == STDERR:
                    self._note_stderr(data)
                    continue
                for item in decoder.feed(data):
                    if isinstance(item, UndecodableLine) and item.oversized:
                        raise RpcError(f"pi sent a {item.error}", stderr="")
                    self._dispatch(item)
            for item in decoder.finish():
                self._dispatch(item)
        except RpcError as exc:  # an oversized line or frame: the stream can no longer be trusted
            reason, hint = f"pi's output channel is corrupt: {exc.message}", _FRESH_PI_HINT
            with contextlib.suppress(Exception):
                self.transport.close()  # ends this pi; the session starts a fresh one
        except Exception as exc:  # a broken transport is just another way for pi to be gone
            reason = f"lost the connection to pi ({type(exc).__name__}: {exc})"
        finally:
            self._on_eof(reason, hint)

    def _note_stderr(self, data: bytes) -> None:
        with self._lock:
            self._stderr += data
            excess = len(self._stderr) - self._stderr_limit
            if excess > 0:
                del self._stderr[:excess]

    def _dispatch(self, item: dict[str, Any] | UndecodableLine) -> None:
        if isinstance(item, UndecodableLine):
            self._on_garbage(item)
            return
        kind = item.get("type")
        if kind == "response":
            with self._lock:
                future = self._pending.get(str(item.get("id")))
            if future is not None and not future.done():
                with contextlib.suppress(Exception):  # lost a race with a timeout: harmless
                    future.set_result(item)
            elif "id" not in item and item.get("success") is False:
                self._note_stderr(f"[pimagic: pi rejected a record: {item.get('error')}]\n".encode())
            return
        with self._lock:
            turn = self._turn
            if kind == "agent_settled" and turn is not None:
                # The slot frees when pi settles, not when the consumer finishes reading: an
                # iterator that was abandoned without close() can't block the next prompt.
                turn.settled = True
                self._turn = None
        if kind == "agent_start":
            self._idle.clear()
        elif kind == "agent_settled":
            self._idle.set()
        if turn is not None:
            turn.events.put(item)

    def _on_garbage(self, item: UndecodableLine) -> None:
        """pi writes only JSONL to stdout (it takes stdout over in RPC mode): a bad line is noted,
        and a turn in flight ends with an error (the prompt iterator then aborts the run)."""
        self._note_stderr(f"[pimagic: undecodable stdout line ({item.error}): {item.line[:200]!r}]\n".encode())
        with self._lock:
            turn = self._turn
        if turn is not None:
            turn.events.put(
                self._error(
                    f"pi sent an undecodable line ({item.error}); the turn was stopped",
                    hint="`%pi logs` shows the line; run the cell again",
                )
            )

    def _on_eof(self, reason: str, hint: str | None = None) -> None:
        exit_status = self.transport.exit_status()
        if exit_status is not None:
            reason += f" (exit status {exit_status})"
        if self._closed:
            hint = None
        elif hint is None:
            hint = "see the stderr tail; restart the agent session"
        error = RpcError(reason, stderr=self.stderr_tail, hint=hint)
        with self._lock:
            self._eof_error = error
            pending = list(self._pending.values())
            turn = self._turn
        self._idle.set()
        for future in pending:
            if not future.done():
                with contextlib.suppress(Exception):
                    future.set_exception(error)
        if turn is not None:
            turn.events.put(error)

    # -- commands --------------------------------------------------------------------------------

    def send(self, record: dict[str, Any]) -> None:
        """Write one record without waiting for an answer (e.g. an ``extension_ui_response``)."""
        self._check_open()
        data = encode_command(record)
        try:
            with self._write_lock:
                self.transport.write(data)
        except (OSError, ValueError) as exc:
            raise self._error(f"could not write to pi: {exc}") from exc

    def _request(self, command: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Send ``command`` with a fresh id and return pi's raw response record."""
        if "type" not in command:
            raise ValueError("an RPC command needs a 'type'")
        timeout = self.call_timeout if timeout is None else timeout
        request_id = f"pimagic-{uuid.uuid4().hex}"
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[request_id] = future
        try:
            self.send({**command, "id": request_id})
            try:
                return future.result(timeout)
            except FutureTimeout:
                raise self._error(f"pi did not answer {command['type']!r} within {timeout:g}s") from None
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def call(self, command: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Run one command and return its ``data`` (``{}`` when pi sends none).

        Raises RpcError with pi's ``error`` text when pi answers ``success: false``, when no answer
        comes within ``timeout`` (default ``call_timeout``), or when pi is gone.
        """
        response = self._request(command, timeout)
        if not response.get("success"):
            raise self._error(f"pi rejected {command['type']!r}: {response.get('error') or 'unknown error'}")
        data = response.get("data")
        return data if isinstance(data, dict) else {}

    def wait_ready(self, timeout: float = 30.0, *, interval: float = 1.0) -> dict[str, Any]:
        """Block until pi answers ``get_state`` (pi announces nothing at start); return the state.

        ``get_state`` is re-sent every ``interval`` seconds in case early input was lost; all the
        attempts share one future, so whichever answer comes first wins. Fails fast if pi exits.
        """
        deadline = time.monotonic() + timeout
        future: Future[dict[str, Any]] = Future()
        ids: list[str] = []
        try:
            while True:
                request_id = f"pimagic-ready-{uuid.uuid4().hex}"
                with self._lock:
                    self._pending[request_id] = future
                ids.append(request_id)
                self.send({"type": "get_state", "id": request_id})
                left = deadline - time.monotonic()
                try:
                    response = future.result(max(0.0, min(interval, left)))
                    break
                except FutureTimeout:
                    if time.monotonic() >= deadline:
                        raise self._error(
                            f"pi did not become ready within {timeout:g}s",
                            hint="is node >= 22.19 available and pi installed where expected?",
                        ) from None
        finally:
            with self._lock:
                for request_id in ids:
                    self._pending.pop(request_id, None)
        if not response.get("success"):
            raise self._error(f"pi rejected 'get_state': {response.get('error')}")
        return response.get("data") or {}

    def get_state(self) -> dict[str, Any]:
        """Session state: ``model`` (absent if none), ``thinkingLevel``, ``isStreaming``, ``sessionId``,
        ``messageCount``, ``pendingMessageCount``, ..."""
        return self.call({"type": "get_state"})

    def set_model(self, provider: str, model_id: str) -> dict[str, Any]:
        """Switch model; returns the full model object. pi rejects unknown models
        (``Model not found: provider/id``)."""
        return self.call({"type": "set_model", "provider": provider, "modelId": model_id})

    def set_thinking_level(self, level: str) -> None:
        """One of off, minimal, low, medium, high, xhigh, max (pi clamps to what the model supports)."""
        self.call({"type": "set_thinking_level", "level": level})

    def new_session(self) -> dict[str, Any]:
        """Start a fresh conversation; returns ``{"cancelled": bool}``."""
        return self.call({"type": "new_session"})

    def get_available_models(self) -> list[dict[str, Any]]:
        """Every configured model (full model objects)."""
        return list(self.call({"type": "get_available_models"}).get("models") or [])

    def get_messages(self) -> list[dict[str, Any]]:
        """The conversation as pi's AgentMessage objects."""
        return list(self.call({"type": "get_messages"}).get("messages") or [])

    def get_session_stats(self) -> dict[str, Any]:
        """Token counts, cost and context-window usage of the session."""
        return self.call({"type": "get_session_stats"})

    # -- prompting -------------------------------------------------------------------------------

    def prompt(
        self,
        message: str,
        *,
        images: Sequence[dict[str, Any]] | None = None,
        timeout: float | None = None,
        event_timeout: float | None = 600.0,
        settle_wait: float = 10.0,
        tick: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Send a prompt and yield each of its events, ending with ``agent_settled`` (inclusive).

        With ``tick``, a ``{"type": TICK}`` record is yielded whenever pi has been quiet for that
        long, so a consumer can flush throttled output during pauses without a second thread.

        Lazy: nothing is sent until the first ``next()``. Subscribes before sending so a fast run
        can't be missed. A ``handled`` disposition (no run started) yields nothing. Raises RpcError
        if pi rejects the prompt, if another prompt is running on this client, if no event arrives
        for ``event_timeout`` seconds, if the run doesn't settle within ``timeout`` seconds, or if pi
        exits. Provider failures are *events* (see :func:`assistant_error`), not exceptions.

        If iteration stops early the run is aborted and drained, so the client is ready for the
        next prompt. That happens when the generator is closed: a ``for`` loop over
        ``client.prompt(...)`` closes it as soon as an exception (e.g. KeyboardInterrupt) escapes
        the loop; code that keeps the iterator in a variable should call its ``close()``. Either
        way the "turn running" slot is freed once pi settles, so ``abort()`` also unblocks.
        """
        command: dict[str, Any] = {"type": "prompt", "message": message}
        if images:
            command["images"] = [dict(image) for image in images]
        with self._lock:
            if self._turn is not None:
                raise RpcError("a turn is already running on this pi session", stderr="")
            turn = self._turn = _Turn()
        settled = False
        try:
            self._check_open()
            # A previous interrupted run may still be winding down; its events must not leak in here.
            if not self._idle.wait(settle_wait):
                raise self._error(
                    f"pi is still busy with a previous run after {settle_wait:g}s",
                    hint="call abort() and try again",
                )
            deadline = None if timeout is None else time.monotonic() + timeout
            response = self._request(command, self.call_timeout if timeout is None else min(timeout, self.call_timeout))
            if not response.get("success"):
                settled = True
                raise self._error(f"pi rejected the prompt: {response.get('error') or 'unknown error'}")
            if (response.get("data") or {}).get("disposition") == "handled":
                settled = True
                return
            last_event = time.monotonic()
            while True:
                event = self._next_event(turn, deadline, timeout, event_timeout, tick, last_event)
                if event.get("type") == TICK:
                    yield event
                    continue
                last_event = time.monotonic()
                if event.get("type") == "agent_settled":
                    settled = True
                yield event
                if settled:
                    return
        finally:
            try:
                if not settled and not turn.settled and not self.closed:
                    self._abort_quietly()
            finally:
                with self._lock:
                    if self._turn is turn:
                        self._turn = None

    def _next_event(
        self, turn: _Turn, deadline: float | None, timeout: float | None, event_timeout: float | None,
        tick: float | None = None, last_event: float | None = None,
    ) -> dict[str, Any]:
        now = time.monotonic()
        idle_deadline = None if event_timeout is None else (last_event or now) + event_timeout
        ends = [t for t in (deadline, idle_deadline) if t is not None]
        wait = max(0.0, min(ends) - now) if ends else None
        if tick is not None:
            wait = tick if wait is None else min(wait, tick)
        try:
            item = turn.events.get(timeout=wait)
        except queue.Empty:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise self._error(f"the agent did not finish within {timeout:g}s") from None
            if tick is None or (idle_deadline is not None and now >= idle_deadline):
                raise self._error(
                    f"no event from pi for {event_timeout:g}s", hint="pi or the model may be stuck"
                ) from None
            return {"type": TICK}
        if isinstance(item, RpcError):
            raise item
        return item

    def _abort_quietly(self) -> None:
        """Stop an abandoned run so the next prompt starts clean; never raises RpcError."""
        with contextlib.suppress(RpcError):
            self.abort(self.abort_wait)

    def abort(self, wait: float = 5.0) -> bool:
        """Abort the current run and wait up to ``wait`` seconds for it to settle.

        Returns True if pi is idle afterwards. The run's remaining events still go to its prompt
        iterator (which then ends with ``agent_settled`` with ``aborted: true``).
        """
        deadline = time.monotonic() + wait
        try:
            self.call({"type": "abort"}, timeout=wait)  # pi answers once the session is idle
        except RpcError:
            if self.closed:
                return False
            raise
        return self._idle.wait(max(0.0, deadline - time.monotonic()))

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Close the transport (which ends pi) and fail anything still waiting."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.transport.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout)
        if self._eof_error is None:  # reader stuck: fail waiters ourselves
            self._on_eof("the RPC client was closed")

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self.busy else "idle")
        return f"<RpcClient {state} transport={type(self.transport).__name__}>"
