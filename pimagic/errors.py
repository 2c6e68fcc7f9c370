"""One exception tree, so callers (the magic, the CLI) can turn any failure
into one short, actionable message."""

from __future__ import annotations


class PimagicError(Exception):
    """Base of every error pimagic raises on purpose. ``hint`` says what to do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: one short, actionable message. It may quote
        # the sandbox (logs, pi's stderr), so terminal escape sequences are stripped.
        from .sanitize import clean

        return [clean(f"pimagic {type(self).__name__}: {self}")]


class ConfigError(PimagicError):
    """A setting (from `.env`, the environment, `%config` or a widget) is invalid."""

    _SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")

    def __init__(self, key: str, value: object, reason: str, *, hint: str | None = None) -> None:
        # Never echo what may be a credential into a notebook or a log.
        if value is None:
            shown = key
        elif any(w in key.upper() for w in self._SECRET_WORDS):
            shown = f"{key}=<redacted>"
        else:
            shown = f"{key}={value!r}"
        super().__init__(f"invalid setting {shown}: {reason}", hint=hint)
        self.key = key
        self.value = value


class HostFileError(PimagicError):
    """A host-side file pimagic reads or writes is not what it must be (a symlink, a FIFO, too big)."""


class DockerUnavailableError(PimagicError):
    """No Docker engine answers (not installed, not running, or no permission)."""


class ImageBuildError(PimagicError):
    """`docker build` failed; ``build_log`` holds the tail of its output."""

    def __init__(self, reason: str, build_log: str = "", *, hint: str | None = None) -> None:
        super().__init__(f"image build failed: {reason}", hint=hint)
        self.build_log = build_log


class ImageNotFoundError(PimagicError):
    """The sandbox image is missing and building it was not allowed."""


class SandboxError(PimagicError):
    """The container could not start, died, or an exec in it failed."""

    def __init__(
        self, message: str, *, container: str | None = None, logs: str = "", hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.container = container
        self.logs = logs

    def __str__(self) -> str:
        text = super().__str__()
        tail = [line for line in self.logs.strip().splitlines() if line.strip()][-12:]
        if tail:  # the last words of the container or of pi: usually the actual cause
            text += "\n  last output:\n" + "\n".join(f"    {line[:300]}" for line in tail)
        return text


class WorkspaceReplacedError(SandboxError):
    """The workspace folder is no longer the directory pinned when this kernel loaded (moved, or a
    link put in its place, e.g. by the sandbox of a folder that contains it): nothing is mounted."""


class RpcError(PimagicError):
    """pi's RPC channel failed: a command was rejected, timed out, or pi exited."""

    def __init__(self, message: str, *, stderr: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.stderr = stderr


class RelayError(PimagicError):
    """A local model server could not be relayed into the sandbox, or listed."""


class ModelNotFoundError(PimagicError):
    """pi does not know the model asked for (``-m``, ``%pi model``, ``PIMAGIC_MODEL``)."""


class TurnFailed(PimagicError):
    """The agent's turn failed (model server down, model error, timeout). Raised after the cell
    showed the turn and bound it to ``_pi``, so Run All stops here; ``result`` is that turn."""

    def __init__(self, message: str, *, result: object = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result

    def _render_traceback_(self) -> list[str]:
        # The cell already shows the error block with its hint: one line says the cell failed.
        from .sanitize import one_line

        return [f"pimagic: {one_line(self.message)}"]


class TurnInterrupted(PimagicError, KeyboardInterrupt):
    """The kernel was interrupted during a turn (Ctrl-C or the toolbar's button: the two cannot be
    told apart). The turn was aborted; the sandbox and the session are kept. A KeyboardInterrupt,
    so code that stops on one still does; its one-line render replaces IPython's traceback."""

    def __init__(self, result: object = None) -> None:
        super().__init__("interrupted; the turn was aborted, the sandbox and the session are kept")
        self.result = result

    def _render_traceback_(self) -> list[str]:
        return [f"pimagic: {self.message}"]


class DiskLimitError(PimagicError):
    """The workspace grew past `workspace_write_limit` (the sandbox was stopped), or its growth
    cannot be watched."""
