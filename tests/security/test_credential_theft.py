"""Credential theft: the GitHub token (vault), pi's auth.json, the workspace's .env.

Each case is an attack as the agent's uid; it must leak no canary and be stopped by the
named layer. Known limits are xfail(strict=True): they fail today, and the day they
pass the suite says so (then update SECURITY.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from secharness import (
    AGENT_DIR,
    APP_FIREWALL,
    CANARY_AUTH,
    CANARY_ENV,
    CANARY_TOKEN,
    FS_VAULT,
    GUARD,
    KERNEL_PERMS,
    LIB,
    MASK,
    NON_DUMPABLE,
    SECCOMP,
    VAULT,
    assert_allowed,
    assert_stopped,
)

TOKEN = "/run/pimagic/github_token"
VAULT_SRC = Path(__file__).resolve().parents[2] / "container" / "vault" / "gh-vault.c"


# ------------------------------------------------------------------ the token file


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(TOKEN, id="token-file-cat"),
        pytest.param("/run/pimagic/../pimagic/github_token", id="token-path-dotdot"),
        pytest.param("/proc/self/root/run/pimagic/github_token", id="token-path-proc-self-root"),
        pytest.param("//run//./pimagic/github_token", id="token-path-slashes"),
    ],
)
def test_token_file_via_libc_is_refused(box, path):
    res = box.sh(f"cat '{path}'")
    assert_stopped(res, FS_VAULT, res.code != 0 and "[SYSTEM BLOCK]" in res.err)


def test_token_file_via_glob(box):
    res = box.sh("cat /run/pimagic/* 2>&1; ls -la /run/pimagic/ 2>&1")
    assert_stopped(res, KERNEL_PERMS, "github_token" not in res.out, "(directory listing must fail)")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(TOKEN, id="token-raw-syscall"),
        pytest.param("/proc/self/root/run/pimagic/github_token", id="token-raw-syscall-proc-self-root"),
        pytest.param("/proc/1/root/run/pimagic/github_token", id="token-raw-syscall-proc-1-root"),
    ],
)
def test_token_file_via_raw_syscall_is_refused_by_the_kernel(box, path):
    res = box.py(f"data, err = raw_read({path!r}); report(err=err, data=data)")
    assert_stopped(res, KERNEL_PERMS, res.values().get("err") == "EACCES")


def test_token_not_in_any_environment(box):
    """env-of-agent: the token is in no process's environment the agent can read."""
    res = box.py(
        """
        leaked = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            data, err = raw_read(f"/proc/{pid}/environ")
            if data and b"ghp_canary" in data:
                leaked.append(pid)
        report(leaked=leaked, own="ghp_canary" in str(os.environ))
        """
    )
    assert_stopped(res, VAULT, res.values() == {"leaked": "[]", "own": "False"})


@pytest.fixture
def running_gh(box):
    """gh started through the vault, holding the token, parked on a FIFO (no network)."""
    box.policy(paranoid=False)
    box.sh("rm -f /tmp/gh-fifo; mkfifo /tmp/gh-fifo")
    box.sh("setsid gh api graphql -F query=@/tmp/gh-fifo </dev/null >/dev/null 2>&1 &")
    res = box.sh("for i in $(seq 50); do p=$(pgrep -f '^gh api graphql') && break; sleep 0.1; done; echo $p")
    pid = res.out.strip().split()[0] if res.out.strip() else ""
    assert pid.isdigit(), f"gh did not start: {res}"
    yield int(pid)
    box.sh(f"kill -9 {pid}; rm -f /tmp/gh-fifo")


@pytest.mark.parametrize(
    "what", [pytest.param("environ", id="proc-environ-of-gh"), pytest.param("mem", id="proc-mem-of-gh")]
)
def test_running_gh_memory_and_environment(box, running_gh, what):
    res = box.py(f"data, err = raw_read('/proc/{running_gh}/{what}'); report(err=err)")
    assert_stopped(res, NON_DUMPABLE, res.values().get("err") in ("EACCES", "EPERM"))


def test_proc_environ_of_gh_via_libc(box, running_gh):
    res = box.sh(f"cat /proc/{running_gh}/environ")
    assert_stopped(res, FS_VAULT, res.code != 0 and "[SYSTEM BLOCK]" in res.err)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param("sc('ptrace', 16, {pid}, 0, 0)", id="ptrace-attach-gh"),
        pytest.param(
            "sc('process_vm_readv', {pid}, ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0)", id="process-vm-readv-gh"
        ),
    ],
)
def test_running_gh_cannot_be_traced(box, running_gh, call):
    res = box.py(
        f"""
        class Iov(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        buf = ctypes.create_string_buffer(64)
        iov = Iov(ctypes.cast(buf, ctypes.c_void_p), 64)
        r, err = {call.format(pid=running_gh)}
        report(r=r, err=errno.errorcode.get(err))
        """
    )
    assert_stopped(res, SECCOMP, res.values().get("err") == "EPERM")


# ------------------------------------------------------------------ gh tricks


@pytest.mark.parametrize(
    "command, blocked",
    [
        pytest.param("auth token", "gh auth token", id="gh-auth-token"),
        pytest.param("auth status --show-token", "gh auth status --show-token", id="gh-auth-status-show-token"),
        pytest.param("auth git-credential get", "gh auth git-credential", id="gh-auth-git-credential"),
        pytest.param("alias set x '!env'", "gh alias", id="gh-alias-shell"),
        pytest.param("extension install owner/gh-evil", "gh extension", id="gh-extension-install"),
        pytest.param("-R o/r --help=0 auth token", "gh auth token", id="gh-flag-shuffle-auth-token"),
    ],
)
def test_gh_commands_that_reveal_the_token(box, command, blocked):
    box.policy(paranoid=False)
    res = box.sh(f"gh {command}")
    assert_stopped(res, GUARD, res.code == 126 and f"'{blocked}' is blocked" in res.err)


def test_gh_config_dir_from_the_agent_is_ignored(box):
    """gh-alias-via-own-config: an alias in a config dir the agent controls never loads."""
    box.policy(paranoid=False)
    res = box.sh(
        "mkdir -p /tmp/evilgh && printf 'aliases:\\n  leak: \"!env\"\\n' > /tmp/evilgh/config.yml && "
        "GH_CONFIG_DIR=/tmp/evilgh XDG_CONFIG_HOME=/tmp gh leak"
    )
    assert_stopped(res, VAULT, res.code != 0 and "GH_TOKEN" not in res.out)


def test_gh_config_dir_is_root_owned_and_read_only(box):
    res = box.sh("echo 'aliases: {leak: \"!env\"}' >> /etc/pimagic/gh/config.yml; stat -c '%u %a' /etc/pimagic/gh")
    assert_stopped(res, KERNEL_PERMS, res.out.strip() == "0 555" and "Permission denied" in res.err)


def test_gh_real_called_directly_has_no_token(box):
    res = box.sh(f"GH_CONFIG_DIR=/etc/pimagic/gh {LIB}/gh-real auth status 2>&1; cat {LIB}/gh-real >/dev/null")
    assert_stopped(res, VAULT, "not logged" in res.out.lower() and "Permission denied" in res.err)


def test_twin_gh_through_the_vault_uses_the_token(box):
    box.policy(paranoid=False)
    res = box.sh("gh auth status 2>&1")
    assert_allowed(res, VAULT, "GH_TOKEN" in res.out and CANARY_TOKEN not in res.out)


def _vault_git_env() -> dict[str, str]:
    """The environment gh-vault gives gh (and so gh's git subprocesses), from its source."""
    src = VAULT_SRC.read_text()
    block = src.split("fixed_env[] = {", 1)[1].split("NULL", 1)[0]
    return dict(s.split("=", 1) for s in re.findall(r'"([A-Z_0-9]+=[^"]*)"', block))


def _git_as_gh_runs_it(script: str) -> str:
    env = " ".join(f"{k}='{v}'" for k, v in _vault_git_env().items())
    return f"env -i {env} HOME=/home/pi GH_TOKEN={CANARY_TOKEN} {script}"


def test_git_run_by_gh_in_a_hostile_repo_refuses_ext_transports(box):
    """An ext:: remote in the agent's repo config would run a command holding the token; the
    vault's command-line config (protocol.ext.allow=never) outranks the repository's."""
    res = box.sh(
        f"""
        cd /tmp && rm -rf hostile && git init -q hostile && cd hostile
        git config protocol.ext.allow always
        git remote add origin 'ext::sh -c env% 1>&2'
        {_git_as_gh_runs_it("git fetch origin")} 2>&1 |
          grep -o "transport 'ext' not allowed\\|GH_TOKEN=ghp_[a-zA-Z0-9]*"
        """
    )
    assert_stopped(res, VAULT, "transport 'ext' not allowed" in res.out)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="KNOWN LIMIT: gh runs git (pr checkout, repo clone/sync) with GH_TOKEN in its environment; a filter "
    "(or merge) driver in the config of a repository the agent built outside /workspace runs with it. Driver names "
    "are free-form, so command-line config cannot reset them. Fix: the host-side gateway (no token in the sandbox).",
)
def test_git_run_by_gh_in_a_hostile_repo_runs_no_filter_with_the_token(box):
    res = box.sh(
        f"""
        cd /tmp && rm -rf hostile2 && git init -q hostile2 && cd hostile2
        echo '* filter=x' > .gitattributes && echo data > f && git add .
        git -c user.name=a -c user.email=a@x commit -qm init
        git config filter.x.smudge 'sh -c "env >&2; cat"' && rm f
        {_git_as_gh_runs_it("git checkout -- f")} 2>&1 | grep -o 'GH_TOKEN=ghp_[a-zA-Z0-9]*'
        """
    )
    assert_stopped(res, VAULT, CANARY_TOKEN not in res.out)


# ------------------------------------------------------------------ auth.json and .env


@pytest.mark.parametrize(
    "script, layer",
    [
        pytest.param(f"cat {AGENT_DIR}/auth.json", FS_VAULT, id="auth-json-cat"),
        pytest.param(f"python3 -c 'print(open(\"{AGENT_DIR}/auth.json\").read())'", FS_VAULT, id="auth-json-python"),
        pytest.param(
            f"node -e 'console.log(require(\"fs\").readFileSync(\"{AGENT_DIR}/auth.json\",\"utf8\"))'",
            APP_FIREWALL, id="auth-json-node",
        ),
        pytest.param(f"ln -sf {AGENT_DIR}/auth.json /tmp/a.txt && cat /tmp/a.txt", FS_VAULT, id="auth-json-symlink"),
        pytest.param(
            "exec -a node python3 -c 'print(open(\"/home/pi/.pi/agent/auth.json\").read())'",
            FS_VAULT, id="auth-json-process-name-spoof",
        ),
        pytest.param(
            f"NODE_OPTIONS= node -e 'console.log(require(\"fs\").readFileSync(\"{AGENT_DIR}/auth.json\",\"utf8\"))'",
            FS_VAULT, id="auth-json-node-without-app-firewall",
        ),
    ],
)
def test_auth_json_reads(box, script, layer):
    res = box.sh(script)
    assert_stopped(res, layer, res.code != 0 and "[SYSTEM BLOCK]" in res.err and CANARY_AUTH not in res.out)


@pytest.mark.xfail(
    strict=True,
    reason="KNOWN LIMIT: pi's own process must read auth.json, so the file belongs to the agent's uid; "
    "a raw syscall (or a static binary) from that uid reads it. Only keeping the key out of the "
    "sandbox (a host-side credential proxy) fixes this.",
)
def test_auth_json_raw_syscall(box):
    res = box.py(f"data, err = raw_read('{AGENT_DIR}/auth.json'); report(err=err, data=data)")
    assert_stopped(res, "none inside the sandbox", res.values().get("err") != "OK")


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("cat .env", id="dotenv-cat"),
        pytest.param("cat /proc/self/root/workspace/.env.local", id="dotenv-proc-self-root"),
        pytest.param("ln -s /workspace/.env /tmp/e && cat /tmp/e", id="dotenv-symlink"),
    ],
)
def test_dotenv_reads_are_blocked(box, script):
    res = box.sh(script)
    assert_stopped(res, FS_VAULT, res.code != 0 and "[SYSTEM BLOCK]" in res.err)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/workspace/.env", id="dotenv-raw-syscall"),
        pytest.param("/workspace/server.pem", id="pem-raw-syscall"),
        pytest.param("/proc/self/root/workspace/.env", id="dotenv-raw-proc-self-root"),
    ],
)
def test_masked_files_are_empty_even_to_the_kernel(box, path):
    res = box.py(f"data, err = raw_read({path!r}); report(err=err, size=len(data or b''))")
    assert_stopped(res, MASK, res.values() == {"err": "OK", "size": "0"})


def test_twin_masked_file_is_intact_on_the_host(box):
    assert CANARY_ENV in (box.workspace / ".env").read_text()
    res = box.sh("cat README.md")
    assert_allowed(res, FS_VAULT, res.out == "hello\n")
