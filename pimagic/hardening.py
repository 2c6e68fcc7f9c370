"""The sandbox's run options: settings + image + mounts -> the dict `containers.run` gets, and
its hash. Pure: no Docker calls, no filesystem, so a test can read (or alter one key of) exactly
what a start passes, and `status()` can tell a stale container without touching anything."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from . import seccomp
from .config import PimagicSettings, parse_size

LABEL_MANAGED = "org.pimagic.managed"
LABEL_WORKSPACE = "org.pimagic.workspace"
LABEL_RUN_CONFIG = "org.pimagic.run-config"  # everything: a start joins a container only if it matches
LABEL_OPTIONS = "org.pimagic.options"  # the settings' part (no image, no mounts): what status() checks

CONTAINER_HOME = "/home/pi"
CONTAINER_WORKSPACE = "/workspace"
CONTAINER_PI_DIR = f"{CONTAINER_HOME}/.pi/agent"
IDLE_SUPERVISOR = "/usr/local/lib/pimagic/idle-supervisor.py"
HOST_GATEWAY_NAME = "host.docker.internal"
_HASH_LABELS = (LABEL_RUN_CONFIG, LABEL_OPTIONS)


def container_kwargs(settings: PimagicSettings, image: str, mounts: Sequence[Any]) -> dict[str, Any]:
    """Everything passed to `containers.run`; the kernel-enforced limits live here. No labels
    with hashes yet: `with_hashes` adds them once the caller is done with the dict."""
    s = settings
    noexec = "noexec,nosuid,nodev"
    env = {"HOME": CONTAINER_HOME, "TERM": "xterm-256color", "PI_CODING_AGENT_DIR": CONTAINER_PI_DIR}
    git_config: list[tuple[str, str]] = []
    if s.git_name:
        env.update(GIT_AUTHOR_NAME=s.git_name, GIT_COMMITTER_NAME=s.git_name)
    if s.git_email:
        env.update(GIT_AUTHOR_EMAIL=s.git_email, GIT_COMMITTER_EMAIL=s.git_email)
    if s.git_gpg_key:
        git_config.append(("user.signingkey", s.git_gpg_key))
    if s.git_gpg_sign:
        git_config.append(("commit.gpgsign", "true"))
    if git_config:
        env["GIT_CONFIG_COUNT"] = str(len(git_config))
        for i, (key, value) in enumerate(git_config):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    memory = parse_size(s.memory)
    return {
        "image": image,
        "name": s.container_name,
        "hostname": "pimagic",
        "detach": True,
        "init": True,
        # The main process is the idle supervisor as uid 0 without capabilities: the agent's
        # uid cannot signal or trace it. Every exec names the agent's uid (Sandbox.exec_socket).
        "user": "0:0",
        "command": ["python3", "-I", "-S", IDLE_SUPERVISOR, "--idle-timeout", f"{s.idle_timeout:g}"],
        "working_dir": CONTAINER_WORKSPACE,
        "environment": env,
        "labels": {LABEL_MANAGED: "1", LABEL_WORKSPACE: str(s.workspace_path)},
        "mounts": list(mounts),
        "read_only": True,
        "tmpfs": {
            "/tmp": f"rw,{noexec},size={s.tmpfs_size}",
            CONTAINER_HOME: f"rw,{noexec},size={s.tmpfs_size},uid={s.uid},gid={s.gid},mode=0700",
            "/run/pimagic": f"rw,{noexec},size=1m,mode=0700",
        },
        "cap_drop": ["ALL"],
        "security_opt": seccomp.security_opt(),  # allow-list; see pimagic/seccomp.py
        # no-new-privileges stays off on purpose: the setuid vault needs it, and
        # with an empty capability bounding set setuid root grants uid 0 only.
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(s.cpus * 1e9),
        "pids_limit": s.pids_limit,
        "ulimits": ulimits(s.write_limit_bytes),
        "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
        "extra_hosts": {HOST_GATEWAY_NAME: "host-gateway"},
        "network_mode": "bridge",
        "privileged": False,
    }


def ulimits(file_size: int = 0) -> list[Any]:
    """nofile and core, plus fsize = the write limit: the kernel refuses (EFBIG/SIGXFSZ) any
    file growing past it, however fast it is written; 0 leaves file sizes unbounded."""
    from docker.types import Ulimit

    limits = [Ulimit(name="nofile", soft=4096, hard=8192), Ulimit(name="core", soft=0, hard=0)]
    if file_size > 0:
        limits.append(Ulimit(name="fsize", soft=file_size, hard=file_size))
    return limits


def run_config_hash(kwargs: dict[str, Any]) -> str:
    """A digest of the run options (the hash labels left out), so a changed setting, image or
    mount shows that a container is stale."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in sorted(value.items()) if k not in _HASH_LABELS}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else repr(dict(value))

    return hashlib.sha256(json.dumps(plain(kwargs), sort_keys=True).encode()).hexdigest()[:16]


def options_hash(kwargs: dict[str, Any]) -> str:
    """The digest of the settings' part alone (image and mounts left out): cheap to recompute
    from settings, with no image tag and no workspace walk."""
    return run_config_hash({k: v for k, v in kwargs.items() if k not in ("image", "mounts")})


def with_hashes(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with both hash labels set (call last: the hashes cover every other key)."""
    kwargs["labels"] = {**kwargs.get("labels", {}), LABEL_OPTIONS: options_hash(kwargs)}
    kwargs["labels"][LABEL_RUN_CONFIG] = run_config_hash(kwargs)
    return kwargs
