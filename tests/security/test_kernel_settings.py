"""Kernel-enforced settings: the seccomp profile is applied and leaves the agent's tools
working; the Docker host preflight warns about a runc without the 2024 fd-leak fix."""

from __future__ import annotations

import json

import pytest
from secharness import SECCOMP, assert_allowed

from pimagic import preflight, seccomp


def test_profile_denies_what_it_documents():
    prof = seccomp.profile("x86_64")
    allowed = {n for rule in prof["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
               for n in rule["names"]}
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO" and prof["architectures"] == ["SCMP_ARCH_X86_64"]
    assert not allowed & set(seccomp.DENIED)
    clone = next(r for r in prof["syscalls"] if r["names"] == ["clone"])
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" and clone["args"][0]["value"] & 0x10000000
    assert json.loads(seccomp.security_opt("x86_64")[0].removeprefix("seccomp=")) == prof


def test_sandbox_runs_with_the_profile(box):
    inspect = box.sandbox.running().attrs["HostConfig"]
    assert any(o.startswith("seccomp={") for o in inspect["SecurityOpt"])
    assert "no-new-privileges" not in " ".join(inspect["SecurityOpt"])


@pytest.mark.parametrize(
    "script, expect",
    [
        pytest.param("pi --version", "1.5.2", id="pi"),
        pytest.param("cd /tmp && git init -q r && cd r && git -c user.name=a -c user.email=a@b commit -q "
                     "--allow-empty -m x && git log --oneline | wc -l", "1", id="git"),
        pytest.param("gh --version | head -1 | cut -d' ' -f1-2", "gh version", id="gh"),
        pytest.param("python3 -c 'import subprocess,threading,multiprocessing as m; p=m.Pool(2); "
                     "print(sum(p.map(abs,[-1,-2])))'", "3", id="python3-multiprocessing"),
        pytest.param("node -e 'const {Worker}=require(\"worker_threads\");new Worker(\"1\",{eval:true})"
                     ".on(\"exit\",()=>console.log(\"ok\"))'", "ok", id="node-worker"),
        pytest.param("bash -c 'echo $(( $(seq 10 | paste -sd+) ))' | cat", "55", id="bash-pipes"),
    ],
)
def test_tools_work_under_the_profile(box, script, expect):
    res = box.sh(script)
    assert_allowed(res, SECCOMP, res.code == 0 and expect in res.out, f"({script})")


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


def test_preflight_on_this_host_and_in_the_sandbox(box, docker_client):
    assert preflight.check(docker_client) == [] or all(isinstance(w, str) for w in preflight.check(docker_client))
    assert isinstance(box.sandbox.preflight_warnings, list)
