"""Errors are one short, actionable message: hint, and the last output when there is some."""

from __future__ import annotations

from pimagic.errors import ConfigError, PimagicError, SandboxError


def test_sandbox_error_shows_hint_and_the_tail_of_the_logs():
    logs = "\n".join(f"line {i}" for i in range(40)) + "\nError: models.json: Unexpected token\n"
    err = SandboxError("pi did not start in the sandbox", logs=logs, hint="`%pi logs` shows more")
    text = str(err)
    assert text.startswith("pi did not start in the sandbox\n  hint: `%pi logs` shows more")
    assert "Error: models.json: Unexpected token" in text
    assert "line 28" not in text and "line 29" in text  # only the last dozen lines


def test_ipython_shows_the_message_instead_of_a_traceback():
    err = ConfigError("PARANOID_MODE", "maybe", "expected true or false", hint="fix it in .env")
    assert err._render_traceback_() == [
        "pimagic ConfigError: invalid setting PARANOID_MODE='maybe': expected true or false\n  hint: fix it in .env"
    ]
    assert isinstance(err, PimagicError)
