"""Attacks through the path the agent really uses: a `%%pi` cell whose (scripted) model
turn calls pi's own `bash` tool. Each test is one cell in a fresh sandbox."""

from __future__ import annotations

import subprocess

import pytest
from secharness import (
    AGENT_DIR,
    APP_FIREWALL,
    CANARY_AUTH,
    CANARY_ENV,
    CANARY_TOKEN,
    CHANGE_REPORT,
    FS_VAULT,
    RO_MOUNT,
    SECCOMP,
    assert_allowed,
    plant_pi_dir,
    plant_workspace,
)

from pimagic.scripted_model import call, say


@pytest.fixture
def shell(settings, scripted, workspace, pi_magics):
    plant_workspace(workspace)
    plant_pi_dir(settings.pi_data_path)
    settings.github_token = CANARY_TOKEN
    return pi_magics.shell


def cell(shell, scripted, command: str | None = None, *, tool: str = "bash", **args):
    args = args or {"command": command}
    scripted.push(call(tool, **args), say("done"))
    result = shell.run_cell_magic("pi", "", "do it")
    outputs = " ".join(str(getattr(c, "result", "")) + str(getattr(c, "output", "")) for c in result.tool_calls)
    text = result._repr_mimebundle_()["text/plain"]
    return result, outputs + text


def no_canary(text: str) -> None:
    for c in (CANARY_TOKEN, CANARY_AUTH, CANARY_ENV):
        assert c not in text, "canary leaked through the agent's own tool"


def test_agent_bash_reads_secrets(shell, scripted):
    """agent-bash-secrets: token file, auth.json and .env through pi's bash tool."""
    _, text = cell(shell, scripted, f"cat /run/pimagic/github_token {AGENT_DIR}/auth.json .env; env")
    no_canary(text)
    assert "[SYSTEM BLOCK]" in text, f"expected {FS_VAULT} in the tool output: {text[-2000:]}"


def test_agent_read_tool_on_auth_json(shell, scripted):
    _, text = cell(shell, scripted, tool="read", path=f"{AGENT_DIR}/auth.json")
    no_canary(text)
    assert "SYSTEM BLOCK" in text or "denied" in text, f"expected {APP_FIREWALL}: {text[-2000:]}"


def test_agent_bash_unshare(shell, scripted):
    _, text = cell(
        shell, scripted,
        "python3 -c 'import ctypes;l=ctypes.CDLL(None,use_errno=True);print(\"unshare\",l.unshare(0x10000000),"
        "ctypes.get_errno())'",
    )
    assert "unshare -1 1" in text, f"expected {SECCOMP} (EPERM): {text[-2000:]}"


def test_agent_git_hook_is_refused_and_pth_is_reported(shell, scripted, workspace):
    """agent-persistence: a git hook fails (read-only mount); a *.pth in the workspace is
    allowed but the cell names it as a file the host may run."""
    result, text = cell(
        shell, scripted,
        "printf '#!/bin/sh\\necho pwned\\n' > .git/hooks/pre-commit; echo 'import os' > evil.pth; echo ok",
    )
    assert not (workspace / ".git" / "hooks" / "pre-commit").exists(), f"expected {RO_MOUNT}"
    assert "Read-only file system" in text, text[-2000:]
    assert (workspace / "evil.pth").exists()
    assert "evil.pth" in text and "your machine may run" in text, f"expected {CHANGE_REPORT}: {text[-2000:]}"
    status = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(workspace), "status", "--short"],
                            capture_output=True, text=True)
    assert_allowed(result, CHANGE_REPORT, "evil.pth" in status.stdout)
