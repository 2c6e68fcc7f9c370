"""Guard tampering: switching the firewalls or the gh policy off from the agent's side."""

from __future__ import annotations

import pytest
from secharness import (
    AGENT_DIR,
    APP_FIREWALL,
    CANARY_AUTH,
    FS_VAULT,
    KERNEL_PERMS,
    LIB,
    RO_ROOT,
    VAULT,
    assert_allowed,
    assert_stopped,
)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param("LD_PRELOAD=", id="ld-preload-emptied"),
        pytest.param("env -u LD_PRELOAD LD_LIBRARY_PATH=/tmp", id="ld-preload-unset"),
    ],
)
def test_fs_vault_survives_environment_changes(box, env):
    res = box.sh(f"{env} cat /workspace/.env {AGENT_DIR}/auth.json")
    assert_stopped(res, FS_VAULT, res.code != 0 and res.err.count("[SYSTEM BLOCK]") == 2)


@pytest.mark.xfail(
    strict=True,
    reason="KNOWN LIMIT: libraries in LD_PRELOAD are searched before /etc/ld.so.preload, so preloading libc "
    "itself resolves open() to libc's and skips fs-vault.so (a speed bump; the token holds by file modes).",
)
def test_fs_vault_with_libc_preloaded_first(box):
    res = box.sh(f"LD_PRELOAD=/lib/x86_64-linux-gnu/libc.so.6 cat {AGENT_DIR}/auth.json; cat /run/pimagic/github_token")
    assert_stopped(res, FS_VAULT, res.code != 0 and res.err.count("[SYSTEM BLOCK]") == 2)


def test_libc_preloaded_first_still_meets_the_kernel_for_the_token(box):
    res = box.sh("LD_PRELOAD=/lib/x86_64-linux-gnu/libc.so.6 cat /run/pimagic/github_token")
    assert_stopped(res, KERNEL_PERMS, res.code != 0 and "Permission denied" in res.err)


def test_ld_so_preload_cannot_be_rewritten(box):
    res = box.sh("echo > /etc/ld.so.preload; mount --bind /dev/null /etc/ld.so.preload")
    assert_stopped(res, RO_ROOT, "Read-only file system" in res.err)


def test_node_options_with_an_undo_script(box):
    """node-options-undo: load the firewall, then a script that tries to take fs back."""
    res = box.sh(
        "echo 'const fs=require(\"fs\"); delete require.cache; "
        f"try {{ console.log(fs.readFileSync(\"{AGENT_DIR}/auth.json\",\"utf8\")) }} "
        "catch(e) { console.error(e.message) }"
        "' > /tmp/undo.js && "
        f"NODE_OPTIONS='--require={LIB}/app-firewall.js --require=/tmp/undo.js' node -e 0"
    )
    assert_stopped(res, APP_FIREWALL, CANARY_AUTH not in res.out and "[SYSTEM BLOCK]" in res.err)


def test_node_options_pointing_elsewhere(box):
    """node-options-replaced: without the firewall node is an ordinary process to fs-vault."""
    res = box.sh(
        "echo '' > /tmp/empty.js && NODE_OPTIONS=--require=/tmp/empty.js "
        f"node -e 'console.log(require(\"fs\").readFileSync(\"{AGENT_DIR}/auth.json\",\"utf8\"))'"
    )
    assert_stopped(res, FS_VAULT, res.code != 0 and "[SYSTEM BLOCK]" in res.err)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("PIMAGIC_PARANOID=0 gh repo list", id="policy-from-agent-env"),
        pytest.param("echo paranoid=0 > /run/pimagic/policy; gh repo list", id="policy-file-write"),
        pytest.param(f"echo paranoid=0 | {LIB}/put-secret policy; gh repo list", id="policy-put-secret-as-agent"),
    ],
)
def test_paranoid_policy_cannot_be_lifted_by_the_agent(box, script):
    box.policy(paranoid=True)
    try:
        res = box.sh(script)
    finally:
        box.policy(paranoid=False)
    layer = VAULT if script.startswith("PIMAGIC") else KERNEL_PERMS
    assert_stopped(res, layer, res.code == 126 and "'gh repo' is blocked" in res.err)


def test_twin_policy_from_the_host_applies(box):
    box.policy(paranoid=True)
    blocked = box.sh("gh repo list")
    box.policy(paranoid=False)
    allowed = box.sh("gh repo --help")
    assert_allowed(allowed, VAULT, blocked.code == 126 and allowed.code == 0)
