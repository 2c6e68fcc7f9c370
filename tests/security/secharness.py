"""Harness for the attack suite: a real pimagic sandbox with canaries planted, and
assertions that an attack failed, leaked no canary, and was stopped by a named layer.

Every case runs inside the sandbox as the agent's uid (the uid pi runs as)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

from pimagic.config import load_settings
from pimagic.sandbox import Sandbox

AGENT_UID = os.getuid() if os.getuid() != 0 else 1000
AGENT_GID = os.getgid() if os.getuid() != 0 else 1000
AGENT = f"{AGENT_UID}:{AGENT_GID}"
LIB = "/usr/local/lib/pimagic"
AGENT_DIR = "/home/pi/.pi/agent"

CANARY_TOKEN = "ghp_canaryTOKEN" + uuid.uuid4().hex
CANARY_AUTH = "sk-canaryAUTH-" + uuid.uuid4().hex
CANARY_ENV = "canaryDOTENV_" + uuid.uuid4().hex
CANARY_PEM = "canaryPEM_" + uuid.uuid4().hex
CANARIES = (CANARY_TOKEN, CANARY_AUTH, CANARY_ENV, CANARY_PEM)

# Layers, as named in SECURITY.md.
SECCOMP = "seccomp profile (pimagic/seccomp.py)"
CAPS = "dropped capabilities (cap_drop=ALL)"
KERNEL_PERMS = "kernel file permissions (root-only /run/pimagic)"
NON_DUMPABLE = "non-dumpable gh (exec-only gh-real)"
VAULT = "token vault (gh-vault builds gh's environment)"
GUARD = "gh policy in the setuid vault (container/vault/gh-policy.c)"
FS_VAULT = "LD_PRELOAD file firewall (fs-vault.so)"
APP_FIREWALL = "Node fs firewall (app-firewall.js)"
MASK = "workspace secret masks (empty read-only bind mounts)"
RO_MOUNT = "read-only bind mounts (.git/hooks, .git/config, virtualenvs)"
RO_ROOT = "read-only root filesystem"
NOEXEC = "noexec tmpfs"
TMPFS = "tmpfs (container-only, size-capped)"
PIDS = "pids cgroup limit"
MEMORY = "memory cgroup limit"
ULIMIT = "nofile ulimit"
MOUNT_NS = "mount namespace (only the workspace and pi's dir are shared)"
NETWORK = "bridge network namespace (host loopback unreachable)"
NO_SOCKET = "no Docker socket mounted"
CHANGE_REPORT = "host-executable change report (pimagic/changes.py)"

# Raw syscalls from Python: nothing of the LD_PRELOAD firewall sits on this path, so a
# refusal here comes from the kernel (modes, seccomp, capabilities, mounts).
RAW = textwrap.dedent(
    """
    import ctypes, errno, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    NR = dict(read=0, close=3, openat=257, ptrace=101, mount=165, umount2=166, unshare=272, setns=308,
              clone=56, clone3=435, personality=135, keyctl=250, bpf=321, perf_event_open=298,
              userfaultfd=323, io_uring_setup=425, process_vm_readv=310, open_by_handle_at=304,
              pidfd_getfd=438, kcmp=312, linkat=265, init_module=175, fsopen=430, pivot_root=155)
    AT_FDCWD = -100
    def sc(name, *args):
        libc.syscall.argtypes = None
        r = libc.syscall(NR[name], *args)
        return r, (ctypes.get_errno() if r == -1 else 0)
    def raw_read(path):
        fd, err = sc("openat", AT_FDCWD, path.encode(), os.O_RDONLY)
        if fd < 0:
            return None, errno.errorcode.get(err, str(err))
        buf = ctypes.create_string_buffer(1 << 16)
        n, _ = sc("read", fd, buf, len(buf))
        sc("close", fd)
        return buf.raw[: max(n, 0)], "OK"
    def report(**kw):
        for k, v in kw.items():
            print(f"{k}={v}")
    """
)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def values(self) -> dict[str, str]:
        """key=value lines the probe printed (see RAW.report)."""
        return dict(line.split("=", 1) for line in self.out.splitlines() if "=" in line)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"


class Box:
    """The running sandbox, driven as the agent would: shell and Python as the agent's uid."""

    def __init__(self, sandbox: Sandbox, workspace: Path, pi_dir: Path):
        self.sandbox = sandbox
        self.workspace = workspace
        self.pi_dir = pi_dir

    def sh(self, script: str, *, user: str = AGENT, timeout: int = 30) -> Result:
        cmd = ["timeout", "-s", "KILL", str(timeout), "bash", "-c", script]
        code, out, err = self.sandbox.exec(cmd, user=user, workdir="/workspace")
        return Result(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def py(self, code: str, *, timeout: int = 30) -> Result:
        body = RAW + "\n" + textwrap.dedent(code)
        return self.sh(f"python3 - <<'PY'\n{body}\nPY", timeout=timeout)

    def policy(self, paranoid: bool) -> None:
        self.sandbox.put_secret("policy", f"paranoid={int(paranoid)}\n".encode())


def assert_stopped(res: Result, layer: str, stopped: bool, why: str = "") -> None:
    """The attack leaked no canary and `layer` stopped it (`stopped` is the layer's evidence)."""
    leaked = [c[:14] for c in CANARIES if c in res.text]
    assert not leaked, f"canary leaked ({leaked}); expected {layer} to stop it\n{res}"
    assert stopped, f"attack not stopped by the expected layer: {layer} {why}\n{res}"


def assert_allowed(res: Result, layer: str, ok: bool, why: str = "") -> None:
    """Allowed-use twin: the layer lets the legitimate use through."""
    assert ok, f"{layer} blocked a legitimate use {why}\n{res}"


def chown_tree(root: Path) -> None:
    if os.getuid() == 0:
        for p in [root, *root.rglob("*")]:
            os.lchown(p, AGENT_UID, AGENT_GID)


def plant_workspace(workspace: Path) -> None:
    """A notebook folder with secrets, a git repository and a virtualenv."""
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "README.md").write_text("hello\n")
    (workspace / ".env").write_text(f"OPENAI_API_KEY={CANARY_ENV}\n")
    (workspace / ".env.local").write_text(f"X={CANARY_ENV}\n")
    (workspace / "server.pem").write_text(f"-----BEGIN PRIVATE KEY-----\n{CANARY_PEM}\n")
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    venv = workspace / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("# activate\n")
    (venv / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    chown_tree(workspace)


def plant_pi_dir(pi_dir: Path) -> None:
    pi_dir.mkdir(parents=True, exist_ok=True)
    (pi_dir / "auth.json").write_text(json.dumps({"anthropic": {"type": "api_key", "key": CANARY_AUTH}}))
    chown_tree(pi_dir.parent)


def start_box(root: Path, image: str, client, **overrides) -> Box:
    workspace, pi_dir = root / "workspace", root / "pi-data" / "agent"
    plant_workspace(workspace)
    plant_pi_dir(pi_dir)
    settings = load_settings(
        workspace, environ=os.environ, pi_data_dir=str(pi_dir), image=image,
        github_token=CANARY_TOKEN, paranoid=False, **overrides,
    )
    sandbox = Sandbox(settings, client)
    sandbox.start(build=False)
    return Box(sandbox, workspace, pi_dir)
