"""The Docker host preflight (pimagic/preflight.py): warns about a runc without the 2024 fd-leak
fix (CVE-2024-21626), an engine without seccomp or without process-count limits. It warns, never
refuses; the sandbox's own layers are tested in the other files of this folder."""

from __future__ import annotations

import pytest

from pimagic import preflight


@pytest.mark.parametrize(
    "version, commit, warns",
    [
        ("1.1.5+ds1", "1.1.5+ds1-1+deb12u1", False),
        ("1.1.5", "v1.1.5-0-gf19387a", True),
        ("1.1.11", "", True),
        ("1.1.12", "", False),
        ("1.2.0", "", False),
        (None, None, True),
    ],
)
def test_runc_check(version, commit, warns):
    assert (preflight.runc_warning(version, commit) is not None) is warns


class _FakeClient:
    def __init__(self, info, version):
        self._info, self._version = info, version

    def info(self):
        return self._info

    def version(self):
        return self._version


def test_preflight_warns_about_old_runc_no_seccomp_no_cgroups():
    client = _FakeClient(
        {"SecurityOptions": ["name=apparmor"], "PidsLimit": False, "MemoryLimit": True},
        {"Components": [{"Name": "runc", "Version": "1.1.4", "Details": {"GitCommit": "v1.1.4-0-g5fd4c4d"}}]},
    )
    text = " ".join(preflight.check(client))
    assert "CVE-2024-21626" in text and "seccomp" in text and "process-count" in text


def test_preflight_on_this_host(docker_client):
    """This engine (CI's too) has seccomp and pids limits: at most a runc note."""
    warnings = preflight.check(docker_client)
    assert all(isinstance(w, str) for w in warnings)
    assert not [w for w in warnings if "seccomp" in w or "process-count" in w], warnings
