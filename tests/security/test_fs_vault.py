"""fs-vault.so (/etc/ld.so.preload): the libc file firewall of every native process. Its refusal
line starts with "[SYSTEM BLOCK: libc-fs]". The control is the same sandbox with an empty file
mounted over /etc/ld.so.preload (fs-vault not loaded): there the same commands read the canary,
or meet the next layer (file modes, masks) with its own, different refusal."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from secharness import (
    AGENT_DIR,
    CANARY_AUTH,
    FS_VAULT,
    LIBC_FS,
    NODE_FS,
    assert_allowed,
    assert_stopped,
    leaks,
    marker,
    says,
)

TOKEN = "/run/pimagic/github_token"
READ_AUTH_NODE = f"node -e 'console.log(require(\"fs\").readFileSync(\"{AGENT_DIR}/auth.json\",\"utf8\"))'"


@pytest.fixture(scope="module")
def no_vault(control):
    return control(FS_VAULT)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(TOKEN, id="token-file-cat"),
        pytest.param("/run/pimagic/../pimagic/github_token", id="token-path-dotdot"),
        pytest.param("/proc/self/root/run/pimagic/github_token", id="token-path-proc-self-root"),
        pytest.param("//run//./pimagic/github_token", id="token-path-slashes"),
    ],
)
def test_token_file_via_libc(box, no_vault, path):
    """Without fs-vault the kernel refuses instead (no marker): see test_kernel_permissions."""
    script = f"cat '{path}'"
    assert_stopped(FS_VAULT, box.sh(script), marker(LIBC_FS), control=no_vault.sh(script),
                   then=says("Permission denied"))


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(f"cat {AGENT_DIR}/auth.json", id="auth-json-cat"),
        pytest.param(f"python3 -c 'print(open(\"{AGENT_DIR}/auth.json\").read())'", id="auth-json-python"),
        pytest.param(f"ln -sf {AGENT_DIR}/auth.json /tmp/a.txt && cat /tmp/a.txt", id="auth-json-symlink"),
        pytest.param("cd /workspace && cat ./../home/pi//.pi/agent/./auth.json", id="auth-json-dotdot"),
        pytest.param(f"exec -a node python3 -c 'print(open(\"{AGENT_DIR}/auth.json\").read())'",
                     id="auth-json-process-name-spoof"),
        pytest.param(f"NODE_OPTIONS= {READ_AUTH_NODE}", id="auth-json-node-without-app-firewall"),
        pytest.param(f"echo '' > /tmp/empty.js && NODE_OPTIONS=--require=/tmp/empty.js {READ_AUTH_NODE}",
                     id="node-options-pointing-elsewhere"),
        pytest.param(f"LD_PRELOAD= cat {AGENT_DIR}/auth.json", id="ld-preload-emptied"),
        pytest.param(f"env -u LD_PRELOAD LD_LIBRARY_PATH=/tmp cat {AGENT_DIR}/auth.json", id="ld-preload-unset"),
    ],
)
def test_auth_json_reads(box, no_vault, script):
    attack = box.sh(script)
    assert_stopped(FS_VAULT, attack, marker(LIBC_FS), control=no_vault.sh(script), then=leaks(CANARY_AUTH))
    assert NODE_FS not in attack.err  # node without the Node firewall is fs-vault's


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("cat .env", id="dotenv-cat"),
        pytest.param("cat /proc/self/root/workspace/.env.local", id="dotenv-proc-self-root"),
        pytest.param("ln -sf /workspace/.env /tmp/e && cat /tmp/e", id="dotenv-symlink"),
    ],
)
def test_dotenv_reads(box, no_vault, script):
    """Without fs-vault the read succeeds and finds the mask: an empty file (test_masks)."""
    assert_stopped(FS_VAULT, box.sh(script), marker(LIBC_FS), control=no_vault.sh(script),
                   then=lambda r: r.code == 0 and r.out == "")


@pytest.mark.parametrize(
    "script, undo",
    [
        pytest.param(f"ln {AGENT_DIR}/auth.json {AGENT_DIR}/innocent.txt && cat {AGENT_DIR}/innocent.txt",
                     f"rm -f {AGENT_DIR}/innocent.txt", id="auth-json-hardlink"),
        pytest.param(f"mv {AGENT_DIR}/auth.json {AGENT_DIR}/moved.txt && cat {AGENT_DIR}/moved.txt",
                     f"mv {AGENT_DIR}/moved.txt {AGENT_DIR}/auth.json", id="auth-json-rename"),
    ],
)
def test_credentials_cannot_get_another_name(box, no_vault, script, undo):
    attack = box.sh(script)
    try:
        unguarded = no_vault.sh(script)
    finally:
        no_vault.sh(undo)
    assert_stopped(FS_VAULT, attack, marker(LIBC_FS), control=unguarded, then=leaks(CANARY_AUTH))
    assert (box.pi_dir / "auth.json").exists()


def test_other_processes_environ(box, no_vault):
    """/proc/<pid>/environ of another process, even the agent's own: pi's holds its keys."""
    script = ("sleep 5 & pid=$!; until [ \"$(cat /proc/$pid/comm)\" = sleep ]; do :; done; "  # exec'd
              "cat /proc/$pid/environ | tr '\\0' '\\n'; kill $pid")
    assert_stopped(FS_VAULT, box.sh(script), lambda r: LIBC_FS in r.err and "PATH=" not in r.out,
                   control=no_vault.sh(script), then=says("PATH="))


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


def build_own_open_library(workspace, tmp_path) -> str:
    """A library of the agent's own that defines open(), placed in the (exec-allowed) workspace.
    Needs gcc on the host (scripts/setup.sh installs it): without it the case would not run, so
    that is a failure, never a skip."""
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed on the host to build the attacker's library: run scripts/setup.sh "
                    "(it installs gcc) or install gcc")
    src = tmp_path / "fake.c"
    src.write_text(FAKE_OPEN)
    out = workspace / "fake-open.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    if os.getuid() == 0:
        os.chown(out, 1000, 1000)
    return "/workspace/fake-open.so"


@pytest.mark.parametrize("which", ["libc-first", "own-open"])
def test_fs_vault_refuses_to_run_when_a_preload_shadows_it(box, no_vault, tmp_path, which):
    """fs-vault-with-libc-preloaded-first: LD_PRELOAD objects come before /etc/ld.so.preload, so
    preloading libc (or a library of one's own) would resolve open() past the firewall; fs-vault
    notices in its constructor and the process exits instead of running unguarded."""
    library = "/lib/x86_64-linux-gnu/libc.so.6"
    if which == "own-open":
        library = build_own_open_library(box.workspace, tmp_path)
        build_own_open_library(no_vault.workspace, tmp_path)
    script = f"LD_PRELOAD={library} cat {AGENT_DIR}/auth.json"
    assert_stopped(FS_VAULT, box.sh(script), lambda r: r.code == 126 and f"{LIBC_FS} fs-vault: a preloaded" in r.err,
                   control=no_vault.sh(script), then=leaks(CANARY_AUTH))


def test_twin_unrelated_preload_libraries_still_work(box):
    res = box.sh("LD_PRELOAD=/lib/x86_64-linux-gnu/libm.so.6 cat /workspace/README.md")
    assert_allowed(res, FS_VAULT, res.code == 0 and res.out == "hello\n")


def test_twin_ordinary_files_read_and_tools_run(box):
    res = box.sh("echo 'SECRET=changeme' > .env.example && cat README.md .env.example && rm .env.example && "
                 f"ls {AGENT_DIR}/auth.json && rg -l hello /workspace && git --version && cat /proc/self/environ | "
                 "tr '\\0' '\\n' | grep -c '^HOME='")
    assert_allowed(res, FS_VAULT, res.code == 0 and "hello\nSECRET=changeme\n" in res.out and LIBC_FS not in res.err)


def test_twin_workspace_is_writable(box):
    res = box.sh("echo ok > /workspace/note.txt && cat note.txt && rm note.txt && echo ok > /tmp/x && cat /tmp/x")
    assert_allowed(res, FS_VAULT, res.out == "ok\nok\n")
