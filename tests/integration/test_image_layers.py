"""The sandbox image's defense layers, attacked from inside as the agent's uid.

Each layer gets an attack that must fail and, where it makes sense, the legitimate use
that must keep working. The image is built once per session from ``container/``;
one long-lived container per module serves every case through ``docker exec``.

Environment: PIMAGIC_BASE_IMAGE (default node:22-bookworm-slim) is the base image;
PIMAGIC_EXTRA_CA_CERTS names a PEM file (or bundle) the build must trust, for hosts
behind a TLS-intercepting proxy.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import textwrap
import time
import uuid
from pathlib import Path

import pytest

docker = pytest.importorskip("docker", reason="the docker SDK is not installed")

pytestmark = pytest.mark.docker

LIB = "/usr/local/lib/pimagic"
VAULT = f"{LIB}/gh-vault"
PUT_SECRET = f"{LIB}/put-secret"
AGENT_DIR = "/home/pi/.pi/agent"
ESCALATION_BINARIES = "su mount umount passwd chsh chfn chage gpasswd newgrp login nsenter unshare setpriv".split()


# --------------------------------------------------------------------- image + run
# The image is the run's shared one (tests/conftest.py builds it once via pimagic.image).


def agent_ids() -> tuple[int, int]:
    if os.getuid() == 0:
        return 1000, 1000
    return os.getuid(), os.getgid()


def start_sandbox(client, image, workspace: Path, agent_dir: Path):
    """Start a container exactly as the runtime contract says (container/README.md)."""
    uid, gid = agent_ids()
    return client.containers.run(
        image.id,
        detach=True,
        user=f"{uid}:{gid}",
        read_only=True,
        cap_drop=["ALL"],
        init=True,
        network_mode="none",
        pids_limit=256,
        mem_limit="1g",
        nano_cpus=1_000_000_000,
        tmpfs={
            "/tmp": "rw,noexec,nosuid,nodev,size=256m",
            "/home/pi": f"rw,noexec,nosuid,nodev,size=256m,uid={uid},gid={gid},mode=0700",
            "/run/pimagic": "rw,noexec,nosuid,nodev,size=1m,uid=0,gid=0,mode=0700",
        },
        volumes={
            str(workspace): {"bind": "/workspace", "mode": "rw"},
            str(agent_dir): {"bind": AGENT_DIR, "mode": "rw"},
        },
        labels={"org.pimagic.test": "image-layers"},
    )


@pytest.fixture(scope="session")
def client(docker_client):
    return docker_client


@pytest.fixture(scope="session")
def image(docker_client, sandbox_image):
    return docker_client.images.get(sandbox_image)


# --------------------------------------------------------------------- helpers

CANARY_TOKEN = "ghp_canary" + uuid.uuid4().hex
CANARY_AUTH = "sk-ant-canary-" + uuid.uuid4().hex
CANARY_ENV = "DOTENV_CANARY_" + uuid.uuid4().hex


class Sandbox:
    def __init__(self, client, container, workspace: Path, agent_dir: Path):
        self.client = client
        self.container = container
        self.workspace = workspace
        self.agent_dir = agent_dir
        uid, gid = agent_ids()
        self.agent = f"{uid}:{gid}"

    def sh(self, script: str, user: str | None = None, env: dict | None = None):
        """Run a bash script; returns (exit code, stdout, stderr)."""
        res = self.container.exec_run(
            ["bash", "-c", script], user=user or self.agent, environment=env, demux=True, workdir="/workspace"
        )
        out, err = res.output
        return res.exit_code, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")

    def py(self, code: str, user: str | None = None):
        return self.sh(f"python3 - <<'PY'\n{textwrap.dedent(code)}\nPY", user=user)

    def node(self, code: str, env_prefix: str = ""):
        return self.sh(f"{env_prefix} node - <<'JS'\n{textwrap.dedent(code)}\nJS")

    def put_secret(self, name: str, value: str):
        """What the Python side does: exec put-secret as 0:0 with the value on stdin."""
        api = self.client.api
        exec_id = api.exec_create(self.container.id, [PUT_SECRET, name], stdin=True, user="0:0")["Id"]
        sock = api.exec_start(exec_id, socket=True)
        raw = getattr(sock, "_sock", sock)
        raw.sendall(value.encode())
        raw.shutdown(socket.SHUT_WR)
        output = b""
        while chunk := raw.recv(65536):
            output += chunk
        raw.close()
        for _ in range(100):
            info = api.exec_inspect(exec_id)
            if not info["Running"]:
                break
            time.sleep(0.05)
        assert info["ExitCode"] == 0, f"put-secret {name} failed: {demux(output)}"

    def policy(self, paranoid: bool):
        self.put_secret("policy", f"paranoid={int(paranoid)}\n")


def demux(raw: bytes) -> str:
    """Docker's multiplexed stream (8-byte headers) as plain text, for messages."""
    text, i = b"", 0
    while i + 8 <= len(raw):
        (size,) = struct.unpack(">I", raw[i + 4 : i + 8])
        text += raw[i + 8 : i + 8 + size]
        i += 8 + size
    return text.decode(errors="replace")


@pytest.fixture(scope="module")
def sandbox(client, image, tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    workspace, agent_dir = root / "workspace", root / "agent"
    workspace.mkdir()
    agent_dir.mkdir()
    (workspace / "README.md").write_text("hello from the workspace\n")
    (workspace / ".env").write_text(f"SECRET={CANARY_ENV}\n")
    (workspace / ".env.local").write_text(f"SECRET={CANARY_ENV}\n")
    (workspace / ".env.example").write_text("SECRET=changeme\n")
    (agent_dir / "auth.json").write_text(json.dumps({"anthropic": {"type": "api_key", "key": CANARY_AUTH}}))
    (agent_dir / "settings.json").write_text(json.dumps({"defaultThinkingLevel": "off"}))
    if os.getuid() == 0:  # the agent must own its files, or the kernel (not our layers) refuses
        uid, gid = agent_ids()
        for p in [root, *root.rglob("*")]:
            os.chown(p, uid, gid)
    container = start_sandbox(client, image, workspace, agent_dir)
    try:
        box = Sandbox(client, container, workspace, agent_dir)
        box.put_secret("github_token", CANARY_TOKEN + "\n")
        box.policy(paranoid=True)
        yield box
    finally:
        container.remove(force=True)


# --------------------------------------------------------------------- image shape


def test_escalation_binaries_are_gone(sandbox):
    names = " ".join(ESCALATION_BINARIES)
    code, out, _ = sandbox.sh(
        f"for b in {names}; do for d in /bin /usr/bin /sbin /usr/sbin /usr/local/bin; do "
        f'[ -e "$d/$b" ] && echo "$d/$b"; done; done; true'
    )
    assert code == 0 and out == "", f"escalation binaries present: {out}"


def test_everyday_tools_are_present(sandbox):
    code, out, err = sandbox.sh(
        "for b in bash git gh rg python3 ps node pi; do command -v $b >/dev/null || echo $b; done"
    )
    assert code == 0 and out == "", f"missing tools: {out} {err}"


def test_vault_is_the_only_setuid_or_setgid_file(sandbox):
    _, out, _ = sandbox.sh("find / -xdev -perm /6000 2>/dev/null", user="0:0")
    assert out.split() == [VAULT]
    _, out, _ = sandbox.sh(f"stat -c '%a %U' {VAULT} {LIB}/gh-real; readlink -f $(command -v gh)")
    assert out.split() == ["4755", "root", "711", "root", VAULT]


def test_image_records_the_pi_version(image):
    from pimagic.image import pi_version

    pinned = pi_version()
    assert image.labels["org.pimagic.pi-version"] == pinned


@pytest.mark.parametrize("directory", ["/tmp", "/home/pi"])
def test_writable_tmpfs_is_noexec(sandbox, directory):
    code, out, err = sandbox.sh(f"cp /bin/true {directory}/t && chmod +x {directory}/t && {directory}/t")
    assert code == 126 and "Permission denied" in err, (code, out, err)
    code, _, _ = sandbox.sh(f"echo data > {directory}/file && cat {directory}/file")
    assert code == 0  # still writable


def test_root_filesystem_is_read_only(sandbox):
    for user in (sandbox.agent, "0:0"):
        code, _, err = sandbox.sh("touch /usr/local/bin/x", user=user)
        assert code != 0 and "Read-only file system" in err, (user, err)
    code, _, err = sandbox.sh("touch /workspace/ok && rm /workspace/ok")
    assert code == 0, err


# --------------------------------------------------------------------- the GitHub token


def test_token_unreadable_with_cat(sandbox):
    code, out, err = sandbox.sh("cat /run/pimagic/github_token; ls /run/pimagic")
    assert code != 0 and CANARY_TOKEN not in out + err
    assert "Permission denied" in err


def test_token_unreadable_with_python_open(sandbox):
    code, out, err = sandbox.py(
        """
        try:
            print(open("/run/pimagic/github_token").read())
        except PermissionError as e:
            print("denied", e.errno)
        """
    )
    assert out.strip() == "denied 13" and CANARY_TOKEN not in out + err


def test_token_unreadable_with_node(sandbox):
    code, out, err = sandbox.node(
        """
        try { console.log(require('fs').readFileSync('/run/pimagic/github_token', 'utf8')); }
        catch (e) { console.log('denied', e.code); }
        """
    )
    assert out.strip() == "denied EACCES" and CANARY_TOKEN not in out + err


def test_token_unreadable_with_raw_syscall(sandbox):
    # syscall(2) skips libc's open and with it fs-vault: only the kernel decides here.
    code, out, err = sandbox.py(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_openat, AT_FDCWD = 257, -100
        fd = libc.syscall(SYS_openat, AT_FDCWD, b"/run/pimagic/github_token", os.O_RDONLY)
        print(fd, ctypes.get_errno())
        """
    )
    assert out.split() == ["-1", "13"], (out, err)


def test_token_absent_from_inspect_env_and_image(sandbox, image, client):
    sandbox.container.reload()
    assert CANARY_TOKEN not in json.dumps(sandbox.container.attrs)
    assert CANARY_TOKEN not in json.dumps(client.api.inspect_image(image.id))
    assert CANARY_TOKEN not in json.dumps(image.history())
    _, out, _ = sandbox.sh("env; cat /proc/self/environ | tr '\\0' '\\n'")
    assert CANARY_TOKEN not in out and "GH_TOKEN" not in out
    # /run/pimagic is a tmpfs: nothing of it reaches the container's writable layer
    assert not [c for c in (sandbox.container.diff() or []) if c["Path"].startswith("/run/pimagic")]


def test_token_not_in_environ_of_running_gh(sandbox):
    """While gh holds GH_TOKEN, scan every /proc/<pid>/environ and mem with raw syscalls."""
    sandbox.policy(paranoid=False)
    # `-F q=@-` makes gh read stdin before any network: it sits there with the token.
    code, _, err = sandbox.sh("(sleep 20 | gh api -F q=@- user >/dev/null 2>&1 &) ; sleep 0.2")
    assert code == 0, err
    code, out, err = sandbox.py(
        f"""
        import ctypes, os, time
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_openat, AT_FDCWD = 257, -100
        def raw_read(path):
            fd = libc.syscall(SYS_openat, AT_FDCWD, path.encode(), os.O_RDONLY)
            if fd < 0:
                return None
            try:
                return os.read(fd, 1 << 20)
            except OSError:
                return None
            finally:
                os.close(fd)
        gh = None
        for _ in range(100):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                cmd = raw_read(f"/proc/{{pid}}/cmdline") or b""
                if cmd.startswith(b"gh\\0api"):
                    gh = pid
            if gh:
                break
            time.sleep(0.1)
        leaked = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            data = raw_read(f"/proc/{{pid}}/environ") or b""
            if b"{CANARY_TOKEN}" in data:
                leaked.append(pid)
        print("gh", gh)
        print("environ", raw_read(f"/proc/{{gh}}/environ") is None if gh else "no-gh")
        print("mem", raw_read(f"/proc/{{gh}}/mem") is None if gh else "no-gh")
        print("leaked", leaked)
        """
    )
    sandbox.sh("pkill -f 'sleep 20' || true")
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines.get("gh", "None") != "None", f"gh never ran: {out} {err}"
    assert lines["environ"] == "True" and lines["mem"] == "True", out
    assert lines["leaked"] == "[]", out


def test_gh_through_the_vault_gets_the_token(sandbox):
    sandbox.policy(paranoid=False)
    code, out, err = sandbox.sh("gh auth status 2>&1")
    assert "GH_TOKEN" in out, (code, out, err)
    assert CANARY_TOKEN not in out
    # allowed-use twin's counterpart: gh without the vault runs tokenless
    code, out, _ = sandbox.sh(f"GH_CONFIG_DIR=/etc/pimagic/gh {LIB}/gh-real auth status 2>&1")
    assert "GH_TOKEN" not in out and "not logged" in out.lower(), out


def test_vault_ignores_the_callers_environment(sandbox):
    sandbox.policy(paranoid=False)
    code, out, err = sandbox.sh(
        "GH_TOKEN=evil GH_HOST=attacker.example GH_CONFIG_DIR=/tmp LD_PRELOAD=/tmp/x.so gh auth status 2>&1"
    )
    assert "attacker.example" not in out and "evil" not in out and "GH_TOKEN" in out, out


# --------------------------------------------------------------------- gh guard


@pytest.mark.parametrize(
    "command", ["auth status", "repo list", "secret list", "ssh-key list", "gpg-key list", "config list"]
)
def test_paranoid_blocks_account_commands(sandbox, command):
    sandbox.policy(paranoid=True)
    code, _, err = sandbox.sh(f"gh {command}")
    assert code == 126 and f"'gh {command.split()[0]}' is blocked" in err, (code, err)


@pytest.mark.parametrize("command", ["--version", "help", "help repo"])
def test_paranoid_lets_harmless_commands_through(sandbox, command):
    sandbox.policy(paranoid=True)
    code, out, err = sandbox.sh(f"gh {command}")
    assert code == 0, (out, err)


def test_paranoid_blocks_flag_tricks_and_api_writes(sandbox):
    sandbox.policy(paranoid=True)
    for command in ["-R o/r repo list", "--repo o/r repo list", "-- repo list", "api -X POST user/keys -f key=x"]:
        code, _, err = sandbox.sh(f"gh {command}")
        assert code == 126 and "blocked" in err, (command, code, err)


@pytest.mark.parametrize(
    "command", ["pr checkout 1", "pr co 1", "pr create --fill", "pr merge 1", "gist clone x", "codespace ssh"]
)
def test_paranoid_blocks_commands_that_run_git_with_the_token(sandbox, command):
    sandbox.policy(paranoid=True)
    code, _, err = sandbox.sh(f"gh {command}")
    assert code == 126 and ("run git with the token" in err or "remote shells" in err), (command, code, err)


@pytest.mark.parametrize("command", ["pr list --help", "pr view --help", "issue list --help"])
def test_paranoid_lets_read_only_pr_and_issue_commands_through(sandbox, command):
    sandbox.policy(paranoid=True)
    code, out, err = sandbox.sh(f"gh {command}")
    assert code == 0, (command, out, err)


def test_paranoid_off_allows_repo_help(sandbox):
    sandbox.policy(paranoid=False)
    code, out, err = sandbox.sh("gh repo --help")
    assert code == 0 and "repo" in out, err


@pytest.mark.parametrize(
    "command",
    [
        "auth token",
        "auth git-credential",
        "auth status -t",
        "auth status --show-token",
        "extension list",
        "ext install x",
        "alias list",
    ],
)
def test_token_revealing_commands_always_blocked(sandbox, command):
    sandbox.policy(paranoid=False)
    code, out, err = sandbox.sh(f"gh {command}")
    assert code == 126 and "blocked" in err and CANARY_TOKEN not in out + err, (command, code, out, err)


def test_agent_cannot_turn_paranoid_off(sandbox):
    sandbox.policy(paranoid=True)
    code, _, err = sandbox.sh("PIMAGIC_PARANOID=0 gh repo list")
    assert code == 126, err
    code, _, err = sandbox.sh("echo paranoid=0 > /run/pimagic/policy")
    assert code != 0 and "Permission denied" in err
    code, _, err = sandbox.sh(f"echo paranoid=0 | {PUT_SECRET} policy")
    assert code != 0
    code, _, err = sandbox.sh("gh repo list")
    assert code == 126, err


def test_policy_change_applies_to_the_next_call(sandbox):
    sandbox.policy(paranoid=True)
    assert sandbox.sh("gh repo --help")[0] == 126
    sandbox.policy(paranoid=False)
    assert sandbox.sh("gh repo --help")[0] == 0


# --------------------------------------------------------------------- fs-vault (native processes)


@pytest.mark.parametrize("target", [f"{AGENT_DIR}/auth.json", "/workspace/.env", "/workspace/.env.local"])
def test_fs_vault_blocks_credentials_for_cat_and_python(sandbox, target):
    code, out, err = sandbox.sh(f"cat {target}")
    assert code != 0 and "Permission denied" in err and "canary" not in out.lower(), (out, err)
    code, out, err = sandbox.py(
        f"""
        try:
            print(open("{target}").read())
        except PermissionError as e:
            print("denied")
        """
    )
    assert out.strip() == "denied", (out, err)


def test_fs_vault_blocks_link_and_symlink_tricks(sandbox):
    code, out, err = sandbox.sh(f"ln -sf {AGENT_DIR}/auth.json /workspace/innocent && cat /workspace/innocent")
    assert code != 0 and CANARY_AUTH not in out, (out, err)
    code, out, err = sandbox.sh(f"ln {AGENT_DIR}/auth.json {AGENT_DIR}/innocent.txt")
    assert code != 0, (out, err)
    code, out, err = sandbox.sh(f"mv {AGENT_DIR}/auth.json {AGENT_DIR}/moved.txt")
    assert code != 0 and (sandbox.agent_dir / "auth.json").exists(), (out, err)
    code, out, err = sandbox.sh("cd /workspace && cat ./../workspace//.env")
    assert code != 0 and CANARY_ENV not in out


def test_fs_vault_allows_ordinary_files(sandbox):
    code, out, err = sandbox.sh(f"cat /workspace/README.md /workspace/.env.example {AGENT_DIR}/settings.json")
    assert code == 0 and "hello from the workspace" in out and "changeme" in out, err
    code, out, err = sandbox.sh("rg -l hello /workspace && git --version")
    assert code == 0, err


def test_fs_vault_blocks_other_processes_environ(sandbox):
    code, out, err = sandbox.sh(
        "sleep 5 & pid=$!; cat /proc/$pid/environ; rc=$?; cat /proc/self/environ >/dev/null; echo rc=$rc $?"
    )
    assert "rc=1 0" in out and "[SYSTEM BLOCK]" in err, (out, err)


# --------------------------------------------------------------------- app-firewall (node)


def test_app_firewall_blocks_node_reading_auth_json(sandbox):
    code, out, err = sandbox.node(
        f"""
        const fs = require('fs');
        const p = '{AGENT_DIR}/auth.json';
        const results = [];
        const tryIt = (name, f) => {{ try {{ f(); results.push(name + ':read'); }}
            catch (e) {{ results.push(name + ':' + e.code + ':' + e.message.startsWith('[SYSTEM BLOCK]')); }} }};
        tryIt('readFileSync', () => fs.readFileSync(p));
        tryIt('openSync', () => fs.openSync(p, 'r'));
        tryIt('copyFileSync', () => fs.copyFileSync(p, '/tmp/copy'));
        tryIt('binding', () => process.binding('fs'));
        fs.promises.readFile(p).then(() => 'read', (e) => e.code + ':' + e.message.startsWith('[SYSTEM BLOCK]'))
          .then((r) => {{ results.push('promises:' + r); return new Promise((res) => {{
            fs.createReadStream(p).on('data', () => res('stream:read'))
              .on('error', (e) => res('stream:' + e.code)); }}); }})
          .then((r) => {{ results.push(r); console.log(JSON.stringify(results)); }});
        """
    )
    results = json.loads(out)
    assert results == [
        "readFileSync:EACCES:true",
        "openSync:EACCES:true",
        "copyFileSync:EACCES:true",
        "binding:EACCES:true",
        "promises:EACCES:true",
        "stream:EACCES",
    ], (out, err)
    assert CANARY_AUTH not in out + err


def test_app_firewall_allows_ordinary_reads(sandbox):
    code, out, err = sandbox.node(
        f"""
        const fs = require('fs');
        console.log(fs.readFileSync('/workspace/README.md', 'utf8').trim());
        console.log(JSON.parse(fs.readFileSync('{AGENT_DIR}/settings.json', 'utf8')).defaultThinkingLevel);
        """
    )
    assert out.split("\n")[:2] == ["hello from the workspace", "off"], (out, err)


def test_node_without_the_firewall_meets_fs_vault(sandbox):
    code, out, err = sandbox.sh(
        f"NODE_OPTIONS= node -e \"try {{ require('fs').readFileSync('{AGENT_DIR}/auth.json') }} "
        'catch (e) { console.log(e.code) }"'
    )
    assert out.strip() == "EACCES", (out, err)


def test_node_expose_internals_is_refused(sandbox):
    # internalBinding('fs') would skip the JS wrappers while fs-vault trusts node.
    code, out, err = sandbox.sh("node --expose-internals -e 'console.log(\"ran\")'")
    assert code == 126 and "ran" not in out and "[SYSTEM BLOCK]" in err, (code, out, err)
    code, out, _ = sandbox.sh("node -e 'console.log(\"ran\")'")
    assert out.strip() == "ran"


# --------------------------------------------------------------------- pi still works


def test_pi_starts(sandbox):
    code, out, err = sandbox.sh("pi --version")
    assert code == 0 and out.strip(), (out, err)


def test_pi_reads_its_own_credentials(sandbox):
    """pi (and only pi) may read auth.json: the canary key makes anthropic models available."""
    code, out, err = sandbox.sh("pi --list-models anthropic 2>&1")
    assert code == 0 and "claude" in out.lower(), (out, err)
    assert "SYSTEM BLOCK" not in out


def test_pi_rpc_mode_answers(sandbox):
    code, out, err = sandbox.sh(
        'printf \'%s\\n\' \'{"id":"1","type":"get_state"}\' | timeout 30 pi --mode rpc --no-session'
    )
    first = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert first.get("type") == "response" and first.get("success") is True, (out, err)


FAKE_LLM = '''
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT, TARGET, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def chunk(delta, finish=None):
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0,
                                  "model": "fake", "choices": [choice]}) + "\\n\\n"


class Handler(BaseHTTPRequestHandler):
    """First turn: call pi's read tool on TARGET. Second turn: log what the tool returned."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        tool = [m for m in body["messages"] if m.get("role") == "tool"]
        if tool:
            with open(LOG, "w") as f:
                json.dump(tool, f)
            parts = [chunk({"role": "assistant", "content": "done"}), chunk({}, "stop")]
        else:
            call = {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "read", "arguments": json.dumps({"path": TARGET})}}
            parts = [chunk({"role": "assistant", "content": None, "tool_calls": [call]}), chunk({}, "tool_calls")]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for part in parts + ["data: [DONE]\\n\\n"]:
            self.wfile.write(part.encode())

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
'''


@pytest.mark.parametrize(
    ("target", "port", "expected"),
    [
        (f"{AGENT_DIR}/auth.json", 18081, "[SYSTEM BLOCK]"),
        ("/workspace/.env", 18082, "[SYSTEM BLOCK]"),
        ("/workspace/README.md", 18083, "hello from the workspace"),
    ],
)
def test_pi_read_tool_is_firewalled(sandbox, target, port, expected):
    """pi's own read tool, driven by a fake model on loopback, cannot read credentials."""
    models = {
        "providers": {
            "fake": {
                "baseUrl": f"http://127.0.0.1:{port}/v1",
                "api": "openai-completions",
                "apiKey": "none",
                "models": [{"id": "fake-model"}],
            }
        }
    }
    (sandbox.agent_dir / "models.json").write_text(json.dumps(models))
    if os.getuid() == 0:
        os.chown(sandbox.agent_dir / "models.json", *agent_ids())
    code, out, err = sandbox.sh(
        f"cat > /tmp/fakellm{port}.py <<'PY'\n{FAKE_LLM}\nPY\n"
        f"python3 /tmp/fakellm{port}.py {port} {target} /tmp/tool{port}.json & server=$!; sleep 0.5; "
        f"timeout 60 pi -p --no-session --model fake/fake-model 'read it'; rc=$?; kill $server; "
        f"cat /tmp/tool{port}.json; exit $rc"
    )
    assert code == 0, (out, err)
    tool_result = json.loads(out[out.index("[{") :])[0]["content"]
    assert expected in str(tool_result), tool_result
    assert CANARY_AUTH not in out and CANARY_ENV not in out
