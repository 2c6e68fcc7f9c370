"""Fixtures for the attack suite: one hardened sandbox per module, canaries planted."""

from __future__ import annotations

import pytest
from secharness import Box, start_box


@pytest.fixture(scope="module")
def box(docker_client, sandbox_image, tmp_path_factory) -> Box:
    """A pimagic sandbox started exactly as the magic starts it (Sandbox.start), with a token
    canary in the vault, an auth.json canary in pi's dir and a .env canary in the workspace."""
    root = tmp_path_factory.mktemp("attack")
    b = start_box(root, sandbox_image, docker_client, memory="512m", pids_limit=128, tmpfs_size="32m")
    yield b
    b.sandbox.remove()
