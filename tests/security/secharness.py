"""Harness for the attack suite: a real pimagic sandbox with canaries planted, a control sandbox
started the same way with ONE layer removed, and assertions that an attack failed, leaked no
canary, was refused in the named layer's own words, and was not refused that way by the control.

Every case runs inside the sandbox as the agent's uid (the uid pi runs as), unless it says it plays
uid 0 (what the setuid vault runs as)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker.types import Mount

from pimagic.config import load_settings
from pimagic.sandbox import Sandbox, mask_path

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
CHANGE_REPORT = "host-executable change report (pimagic/workspace.py)"

# The refusal line of each file firewall (container/vault/fs-vault.c, container/app-firewall.js).
LIBC_FS = "[SYSTEM BLOCK: libc-fs]"
NODE_FS = "[SYSTEM BLOCK: node-fs]"

# What a control keeps of the capabilities pimagic drops (cap_drop=ALL): what the attacks need.
KEPT_CAPS = ["SYS_ADMIN", "SYS_CHROOT", "SYS_MODULE", "DAC_READ_SEARCH", "DAC_OVERRIDE", "CHOWN", "SETUID",
             "SETGID", "KILL"]
RO_MOUNT_TARGETS = ("/workspace/.git/hooks", "/workspace/.git/config", "/workspace/.venv", "/workspace/venv")

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
              pidfd_getfd=438, pidfd_open=434, kcmp=312, linkat=265, init_module=175, fsopen=430, pivot_root=155)
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

    def py(self, code: str, *, user: str = AGENT, timeout: int = 30) -> Result:
        body = RAW + "\n" + textwrap.dedent(code)
        return self.sh(f"python3 - <<'PY'\n{body}\nPY", user=user, timeout=timeout)

    def policy(self, paranoid: bool) -> None:
        self.sandbox.put_secret("policy", f"paranoid={int(paranoid)}\n".encode())


Check = Callable[[Result], bool]


def assert_stopped(layer: str, attack: Result, refused: Check, *, control: Result | None = None,
                   then: Check | None = None, no_control: str = "") -> None:
    """`layer` stopped the attack: it leaked no canary, `refused` (the layer's own refusal: its
    errno, its marker, its message) holds for it, and in `control` (the same attack in a sandbox
    started the same way without that layer) it does NOT hold: there the attack went through
    (`then`, when given, says how) or failed otherwise. A case without a control names why."""
    leaked = [c[:14] for c in CANARIES if c in attack.text]
    assert not leaked, f"canary leaked ({leaked}); expected {layer} to stop it\n{attack}"
    assert refused(attack), f"not refused the way {layer} refuses\n{attack}"
    if control is None:
        assert no_control, f"{layer}: a case without a control must say why (no_control=...)"
        return
    assert not refused(control), f"the control without {layer} refused the same way: not what stops it\n{control}"
    if then is not None:
        assert then(control), f"the control without {layer} did not let the attack through\n{control}"


def assert_allowed(res: Result | None, layer: str, ok: bool, why: str = "") -> None:
    """Allowed-use twin: the layer lets the legitimate use through."""
    assert ok, f"{layer} blocked a legitimate use {why}\n{res}"


# Refusals, each in the words of one layer.
def errno_is(name: str) -> Check:
    """The probe (see RAW.report) got errno `name` (EPERM from seccomp, EACCES from file modes...)."""
    return lambda r: r.values().get("err") == name


def marker(which: str) -> Check:
    """The command failed with the refusal line of one firewall: LIBC_FS or NODE_FS."""
    return lambda r: r.code != 0 and which in r.err


def says(*texts: str, code: int | None = None) -> Check:
    """Every text is in the output (and the exit code is `code`, when given)."""
    return lambda r: all(t in r.text for t in texts) and (code is None or r.code == code)


def leaks(canary: str) -> Check:
    """What a control shows when the attack went through: the canary."""
    return lambda r: canary in r.out


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


def without(layers: Iterable[str], root: Path, mask: Path) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The run options with `layers` removed (a control); everything else as pimagic starts it."""
    layers = set(layers)

    def adjust(kwargs: dict[str, Any]) -> dict[str, Any]:
        opts = list(kwargs["security_opt"])
        if SECCOMP in layers:
            opts = [*(o for o in opts if not o.startswith("seccomp=")), "seccomp=unconfined"]
        if CAPS in layers:
            # AppArmor is no pimagic layer, but a host's docker-default profile refuses mount too.
            kwargs["cap_add"], opts = KEPT_CAPS, [*opts, "apparmor=unconfined"]
        kwargs["security_opt"] = opts
        mounts = kwargs["mounts"]
        if MASK in layers:
            mounts = [m for m in mounts if m["Source"] != str(mask)]
        if RO_MOUNT in layers:
            mounts = [m for m in mounts if not (m["ReadOnly"] and m["Target"] in RO_MOUNT_TARGETS)]
        if FS_VAULT in layers:  # /etc/ld.so.preload (read-only root) names fs-vault.so: hide it
            empty = root / "no-preload"
            empty.touch()
            mounts = [*mounts, Mount("/etc/ld.so.preload", str(empty), type="bind", read_only=True)]
        kwargs["mounts"] = mounts
        if APP_FIREWALL in layers:  # the image's NODE_OPTIONS=--require=app-firewall.js
            kwargs["environment"] = {**kwargs["environment"], "NODE_OPTIONS": ""}
        if RO_ROOT in layers:
            kwargs["read_only"] = False
        if NOEXEC in layers:
            kwargs["tmpfs"] = {k: v.replace("noexec,", "exec,") for k, v in kwargs["tmpfs"].items()}
        if NETWORK in layers:  # the host's network namespace (Docker refuses a hostname there)
            kwargs["network_mode"] = "host"
            kwargs.pop("hostname", None)
        if ULIMIT in layers:  # the engine's default open-files limit
            kwargs["ulimits"] = [u for u in kwargs["ulimits"] if u["Name"] != "nofile"]
        unknown = layers - {SECCOMP, CAPS, MASK, RO_MOUNT, FS_VAULT, APP_FIREWALL, RO_ROOT, NOEXEC, NETWORK, ULIMIT}
        assert not unknown, f"no control for {unknown}"
        return kwargs

    return adjust


def start_box(root: Path, image: str, client, *, remove: Iterable[str] = (),
              adjust: Callable[[dict[str, Any]], dict[str, Any]] | None = None, **overrides) -> Box:
    """A sandbox started through `Sandbox.start` (the magic's path), canaries planted; `remove`
    names the layers its control lacks (none: the real sandbox); `adjust` changes a run option
    a case needs besides (e.g. no network at all)."""
    workspace, pi_dir = root / "workspace", root / "pi-data" / "agent"
    plant_workspace(workspace)
    plant_pi_dir(pi_dir)
    settings = load_settings(
        workspace, environ=os.environ, pi_data_dir=str(pi_dir), image=image,
        github_token=CANARY_TOKEN, paranoid=False, **overrides,
    )
    removed = without(remove, root, mask_path(settings))
    changed = (lambda kw: removed(adjust(kw) if adjust else kw)) if remove or adjust else None
    sandbox = Sandbox(settings, client, adjust=changed)  # the real sandbox: None, exactly the magic's options
    sandbox.start(build=False)
    return Box(sandbox, workspace, pi_dir)
