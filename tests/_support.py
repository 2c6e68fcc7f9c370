"""Helpers shared by test modules (importable as `_support`; conftest modules clash by name)."""

from __future__ import annotations

import os
from pathlib import Path

AGENT_UID = os.getuid() if os.getuid() != 0 else 1000
AGENT_GID = os.getgid() if os.getuid() != 0 else 1000


def make_workspace(root: Path) -> Path:
    """A workspace the agent's uid can write, as a user's notebook folder is theirs."""
    root.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        os.chown(root, AGENT_UID, AGENT_GID)
    return root
