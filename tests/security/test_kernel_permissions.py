"""Kernel file permissions: the token and the policy are root's files (0400) in root's 0700 tmpfs
(/run/pimagic); the gh config is root's and read-only. Raw syscalls (nothing of fs-vault on the
path), so the refusal is the kernel's. The control is the same read or write by the files' owner,
uid 0, in the same sandbox: the modes, not something else, are what keep the agent out."""

from __future__ import annotations

import pytest
from secharness import (
    AGENT_DIR,
    CANARY_TOKEN,
    KERNEL_PERMS,
    LIB,
    assert_allowed,
    assert_stopped,
    errno_is,
    leaks,
    says,
)

ROOT = "0:0"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/run/pimagic/github_token", id="token-raw-syscall"),
        pytest.param("/proc/self/root/run/pimagic/github_token", id="token-raw-syscall-proc-self-root"),
        pytest.param("/proc/1/root/run/pimagic/github_token", id="token-raw-syscall-proc-1-root"),
    ],
)
def test_token_file_via_raw_syscall_is_refused_by_the_kernel(box, path):
    probe = f"data, err = raw_read({path!r}); report(err=err, data=data)"
    assert_stopped(KERNEL_PERMS, box.py(probe), errno_is("EACCES"), control=box.py(probe, user=ROOT),
                   then=leaks(CANARY_TOKEN))


def test_token_file_via_glob(box):
    script = "cat /run/pimagic/* 2>&1; ls -la /run/pimagic/ 2>&1"
    assert_stopped(KERNEL_PERMS, box.sh(script), lambda r: "Permission denied" in r.out and "github_token" not in r.out,
                   control=box.sh(script, user=ROOT), then=says("github_token"))


def test_policy_file_cannot_be_replaced_by_the_agent(box):
    """policy-file-write: the agent would lift paranoid mode by writing a new policy into root's
    folder (then renaming it over the old one). Its owner, uid 0, can (and removes it again)."""
    probe = """
    fd, err = sc("openat", AT_FDCWD, b"/run/pimagic/policy.new", os.O_WRONLY | os.O_CREAT, 0o600)
    if fd >= 0:
        os.close(fd); os.unlink("/run/pimagic/policy.new")
    report(err=errno.errorcode.get(err, "OK"))
    """
    box.policy(paranoid=True)
    try:
        attack, owner = box.py(probe), box.py(probe, user=ROOT)
        still = box.sh("echo paranoid=0 > /run/pimagic/policy; gh repo list")
    finally:
        box.policy(paranoid=False)
    assert_stopped(KERNEL_PERMS, attack, errno_is("EACCES"), control=owner, then=errno_is("OK"))
    assert still.code == 126 and "'gh repo' is blocked" in still.err, still


def test_put_secret_refuses_the_agent(box):
    """policy-put-secret-as-agent: put-secret run by the agent cannot write root's tmpfs."""
    box.policy(paranoid=True)
    try:
        attack = box.sh(f"echo paranoid=0 | {LIB}/put-secret policy; gh repo list")
        owner = box.sh(f"echo paranoid=1 | {LIB}/put-secret policy && echo stored", user=ROOT)
    finally:
        box.policy(paranoid=False)
    assert_stopped(KERNEL_PERMS, attack, says("'gh repo' is blocked", code=126), control=owner, then=says("stored"))


def test_gh_config_dir_is_root_owned_and_read_only(box):
    """The agent cannot add an alias to gh's config (root's, 0444 in a 0555 folder)."""
    script = "echo 'aliases: {leak: \"!env\"}' >> /etc/pimagic/gh/config.yml; stat -c '%u %a' /etc/pimagic/gh"
    assert_stopped(KERNEL_PERMS, box.sh(script), lambda r: r.out.strip() == "0 555" and "Permission denied" in r.err,
                   no_control="three layers hold here: its owner, uid 0, has no CAP_DAC_OVERRIDE for a 0444 file "
                   "(test_capabilities) and the root is read-only (test_read_only_root)")


def test_twin_agent_reads_its_own_files_raw(box):
    res = box.py("data, err = raw_read('/workspace/README.md'); report(err=err, data=data)")
    assert_allowed(res, KERNEL_PERMS, res.values() == {"err": "OK", "data": "b'hello\\n'"})


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="KNOWN LIMIT: pi's own process must read auth.json, so the file belongs to the agent's uid; "
    "a raw syscall (or a static binary) from that uid reads it. Only keeping the key out of the "
    "sandbox (a host-side credential proxy) fixes this.",
)
def test_auth_json_raw_syscall(box):
    res = box.py(f"data, err = raw_read('{AGENT_DIR}/auth.json'); report(err=err, data=data)")
    assert_stopped(KERNEL_PERMS, res, lambda r: r.values().get("err") != "OK", no_control="a known limit (xfail)")
