"""Fixtures for the attack suite: one hardened sandbox per module, canaries planted, and its
controls: the same start path with one layer removed, started on first use, one per module."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from secharness import Box, start_box

LIMITS = {"memory": "512m", "pids_limit": 128, "tmpfs_size": "32m"}


@pytest.fixture(scope="module")
def box(docker_client, sandbox_image, tmp_path_factory) -> Iterator[Box]:
    """A pimagic sandbox started exactly as the magic starts it (Sandbox.start), with a token
    canary in the vault, an auth.json canary in pi's dir and a .env canary in the workspace."""
    b = start_box(tmp_path_factory.mktemp("attack"), sandbox_image, docker_client, **LIMITS)
    yield b
    b.sandbox.remove()


@pytest.fixture(scope="module")
def control(docker_client, sandbox_image, tmp_path_factory) -> Iterator[Callable[..., Box]]:
    """control(*layers, **settings): the box started the same way without `layers` (and with
    `settings` changed, for the limits that are settings); one per module and combination."""
    boxes: dict[tuple, Box] = {}

    def get(*layers: str, **settings) -> Box:
        key = (tuple(sorted(layers)), tuple(sorted(settings.items())))
        if key not in boxes:
            boxes[key] = start_box(tmp_path_factory.mktemp("control"), sandbox_image, docker_client,
                                   remove=layers, **{**LIMITS, **settings})
        return boxes[key]

    yield get
    for b in boxes.values():
        b.sandbox.remove()
