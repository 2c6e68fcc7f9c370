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


FAKE_OPEN = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>
int open(const char *p, int f, ...) { va_list a; va_start(a, f); int m = va_arg(a, int); va_end(a);
    return (int)syscall(SYS_openat, AT_FDCWD, p, f, m); }
int openat(int d, const char *p, int f, ...) { va_list a; va_start(a, f); int m = va_arg(a, int); va_end(a);
    return (int)syscall(SYS_openat, d, p, f, m); }
"""


@pytest.fixture(scope="module")
def own_open_library(box, tmp_path_factory):
    """A library of the agent's own that defines open(), placed in the (exec-allowed) workspace."""
    import os
    import shutil
    import subprocess

    if not shutil.which("gcc"):
        pytest.skip("gcc is needed on the host to build the attacker's library")
    src = tmp_path_factory.mktemp("fake") / "fake.c"
    src.write_text(FAKE_OPEN)
    out = box.workspace / "fake-open.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    if os.getuid() == 0:
        os.chown(out, 1000, 1000)
    return "/workspace/fake-open.so"


@pytest.mark.parametrize("which", ["libc-first", "own-open"])
def test_fs_vault_refuses_to_run_when_a_preload_shadows_it(box, own_open_library, which):
    library = "/lib/x86_64-linux-gnu/libc.so.6" if which == "libc-first" else own_open_library
    """fs-vault-with-libc-preloaded-first: LD_PRELOAD objects come before /etc/ld.so.preload, so
    preloading libc (or a library of one's own) would resolve open() past the firewall; fs-vault
    notices in its constructor and the process exits instead of running unguarded."""
    res = box.sh(f"LD_PRELOAD={library} cat {AGENT_DIR}/auth.json")
    assert_stopped(res, FS_VAULT, CANARY_AUTH not in res.out and res.code == 126 and "shadows" in res.err)


def test_unrelated_preload_libraries_still_work(box):
    """The allowed twin: preloading a library that wraps nothing of ours runs normally."""
    res = box.sh("LD_PRELOAD=/lib/x86_64-linux-gnu/libm.so.6 cat /workspace/README.md")
    assert res.code == 0, res


def test_without_fs_vault_the_token_still_meets_the_kernel(box):
    """With fs-vault out of the way (a static reader: python's raw openat), file modes hold."""
    res = box.py("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
                 "fd = libc.syscall(257, -100, b'/run/pimagic/github_token', os.O_RDONLY); "
                 "print(fd, os.strerror(ctypes.get_errno()))")
    assert_stopped(res, KERNEL_PERMS, res.out.startswith("-1") and "Permission denied" in res.out)


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
