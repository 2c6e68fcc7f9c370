"""Container lifecycle for one workspace. `container_kwargs()` is where the
hardening lives; everything else finds, starts, stops and execs."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import envtrust, hostfs, piconfig, preflight, seccomp
from . import image as image_mod
from .config import PimagicSettings, pimagic_data_root
from .errors import DockerUnavailableError, PimagicError, SandboxError

LABEL_MANAGED = "org.pimagic.managed"
LABEL_WORKSPACE = "org.pimagic.workspace"
LABEL_RUN_CONFIG = "org.pimagic.run-config"

CONTAINER_HOME = "/home/pi"
CONTAINER_WORKSPACE = "/workspace"
CONTAINER_PI_DIR = f"{CONTAINER_HOME}/.pi/agent"
PUT_SECRET = "/usr/local/lib/pimagic/put-secret"
IDLE_SUPERVISOR = "/usr/local/lib/pimagic/idle-supervisor.py"
IDLE_EXIT_CODE = 75  # the supervisor's exit code when no session was attached for idle_timeout
HOST_GATEWAY_NAME = "host.docker.internal"

# Directories never walked when looking for secret files to mask (too big, not secrets).
_SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", ".ipynb_checkpoints", ".tox"}
_MASK_DEPTH = 4


def docker_client():
    """A docker-py client that answers, or a DockerUnavailableError saying what to do."""
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except docker.errors.DockerException as e:
        text = str(e)
        if "Permission denied" in text or "PermissionError" in text:
            hint = (
                "your user may not use the Docker socket: add it to the `docker` group "
                "(sudo usermod -aG docker $USER, then log in again) or use rootless Docker"
            )
        elif "FileNotFoundError" in text or "Connection refused" in text or "No such file" in text:
            hint = "no Docker engine is running: start it (sudo systemctl start docker, or `dockerd &`)"
        else:
            hint = "check that `docker info` works for this user (DOCKER_HOST, socket permissions)"
        raise DockerUnavailableError(f"cannot reach the Docker engine: {text}", hint=hint) from None


@dataclass(frozen=True)
class SandboxStatus:
    name: str
    state: str  # running | exited | missing | ...
    image: str | None = None
    started_at: str | None = None
    uptime: float | None = None
    memory_bytes: int | None = None
    memory_limit: int | None = None
    stale: bool = False  # run options changed since the container was created

    def parts(self, *, escape=lambda text: text) -> list[str]:
        """The status as short phrases (image, uptime, memory); `escape` for HTML callers."""
        parts = []
        if self.image:
            parts.append(f"image {escape(self.image)}")
        if self.uptime is not None:
            parts.append(f"up {_duration(self.uptime)}")
        if self.memory_bytes is not None:
            limit = f" / {self.memory_limit / 2**20:.0f}" if self.memory_limit else ""
            parts.append(f"memory {self.memory_bytes / 2**20:.0f}{limit} MiB")
        return parts

    def __str__(self) -> str:
        parts = [f"{self.name}: {self.state}", *self.parts()]
        if self.stale:
            parts.append("settings changed: `%pi restart` to apply")
        return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def _docker_size(text: str) -> int:
    units = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class Sandbox:
    """The long-lived container of one workspace: same folder, same container."""

    def __init__(self, settings: PimagicSettings, client: Any = None) -> None:
        self.settings = settings
        self._client = client
        self.preflight_warnings: list[str] = []  # Docker host weaknesses found at the last start
        self.notes: list[str] = []  # what start() had to do that the user should hear about

    @property
    def client(self):
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def name(self) -> str:
        return self.settings.container_name

    # --- host-side preparation -------------------------------------------

    def _prepare_host_dirs(self) -> Path:
        """Create the folder's state dir and pi's agent dir (writable by the container's uid);
        return the mask file."""
        s = self.settings
        if not s.workspace_path.is_dir():
            raise SandboxError(
                f"workspace {s.workspace_path} is not a directory", hint="set PimagicSettings.workspace"
            )
        _refuse_unsafe_workspace(s)
        st = s.workspace_path.stat()
        if os.getuid() == 0 and st.st_uid != s.uid and not st.st_mode & 0o002:
            raise SandboxError(
                f"the agent runs as uid {s.uid} and cannot write to {s.workspace_path} (owned by uid {st.st_uid})",
                hint=f"run as a normal user, or `chown {s.uid}:{s.gid} {s.workspace_path}`, or set HOST_UID",
            )
        # pi's agent dir is the agent's; everything the host reads or writes sits beside it
        # (host-only) and reaches the sandbox as read-only file mounts (see pimagic.piconfig).
        state = piconfig.prepare_state(s)
        self.notes.extend(state.notes)
        piconfig.refresh_view(s)
        with hostfs.opened_dir(state.path) as sfd:  # O_EXCL: two kernels starting at once
            try:
                os.close(os.open("empty-mask", os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o444,
                                 dir_fd=sfd))
            except FileExistsError:
                pass
        return self._mask_path()

    def masked_files(self, candidates: Iterable[str] | None = None) -> list[Path]:
        """Workspace files matching the secret patterns: hidden from the sandbox.

        `candidates` (paths relative to the workspace, e.g. a change snapshot's keys) saves a
        second walk of the folder on the per-cell path."""
        root = self.settings.workspace_path
        if candidates is None:
            candidates = []
            for dirpath, dirnames, filenames in os.walk(root):
                depth = len(Path(dirpath).relative_to(root).parts)
                dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and depth < _MASK_DEPTH]
                candidates.extend(os.path.relpath(os.path.join(dirpath, n), root) for n in filenames)
        found: list[Path] = []
        for rel in candidates:
            parts = Path(rel).parts
            if len(parts) > _MASK_DEPTH + 1 or any(p in _SKIP_DIRS for p in parts[:-1]):
                continue
            if self._is_secret_name(parts[-1]):
                path = root / rel
                if path.is_file() and not path.is_symlink():
                    found.append(path)
        return sorted(found)

    def _is_secret_name(self, name: str) -> bool:
        return name not in self.settings.keep_visible and any(
            fnmatch.fnmatch(name, p) for p in self.settings.secret_patterns
        )

    def _mounts(self, mask: Path) -> list[Any]:
        from docker.types import Mount

        s = self.settings
        mounts = [
            Mount(CONTAINER_WORKSPACE, str(s.workspace_path), type="bind"),
            Mount(CONTAINER_PI_DIR, str(s.pi_data_path), type="bind"),
        ]
        for name in piconfig.VIEW_FILES:  # pi reads its config from the host-owned, read-only view
            source = piconfig.view_dir(s) / name
            mounts.append(Mount(f"{CONTAINER_PI_DIR}/{name}", str(source), type="bind", read_only=True))
        for path in self.masked_files():
            target = f"{CONTAINER_WORKSPACE}/{path.relative_to(s.workspace_path).as_posix()}"
            mounts.append(Mount(target, str(mask), type="bind", read_only=True))
        git = s.workspace_path / ".git"
        if git.is_dir() and not git.is_symlink():  # a mount point: .git cannot be renamed away from its masks
            mounts.append(Mount(f"{CONTAINER_WORKSPACE}/.git", str(git), type="bind"))
        for path in self.read_only_paths():  # what the host runs on its own: git hooks/config, virtualenvs
            target = f"{CONTAINER_WORKSPACE}/{path.relative_to(s.workspace_path).as_posix()}"
            mounts.append(Mount(target, str(path), type="bind", read_only=True))
        return mounts

    def read_only_paths(self) -> list[Path]:
        """Existing workspace paths the host executes or loads by itself, mounted read-only."""
        root = self.settings.workspace_path
        git = root / ".git"
        if git.is_dir() and not git.is_symlink() and not (git / "hooks").exists():
            (git / "hooks").mkdir()  # present, so the agent cannot create hooks in it
        found = [git / "hooks", git / "config", root / ".venv", root / "venv"]
        return [p for p in found if p.exists() and not p.is_symlink() and p.resolve().is_relative_to(root.resolve())]

    # --- run options: the hardening ----------------------------------------

    def container_kwargs(self, image: str, mask: Path) -> dict[str, Any]:
        """Everything passed to `containers.run`; the kernel-enforced limits live here."""
        s = self.settings
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
        memory = _docker_size(s.memory)
        kwargs: dict[str, Any] = {
            "image": image,
            "name": self.name,
            "hostname": "pimagic",
            "detach": True,
            "init": True,
            # The main process is the idle supervisor as uid 0 without capabilities: the agent's
            # uid cannot signal or trace it. Every exec names the agent's uid (see exec_socket).
            "user": "0:0",
            "command": ["python3", "-I", "-S", IDLE_SUPERVISOR, "--idle-timeout", f"{s.idle_timeout:g}"],
            "working_dir": CONTAINER_WORKSPACE,
            "environment": env,
            "labels": {LABEL_MANAGED: "1", LABEL_WORKSPACE: str(s.workspace_path)},
            "mounts": self._mounts(mask),
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
            "ulimits": _ulimits(s.write_limit_bytes),
            "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
            "extra_hosts": {HOST_GATEWAY_NAME: "host-gateway"},
            "network_mode": "bridge",
            "privileged": False,
        }
        kwargs["labels"][LABEL_RUN_CONFIG] = _run_config_hash(kwargs)
        return kwargs

    # --- lifecycle ---------------------------------------------------------

    def find(self):
        """The workspace's container (any state), or None."""
        import docker.errors

        try:
            return self.client.containers.get(self.name)
        except docker.errors.NotFound:
            return None

    def start(self, *, build: bool = True, progress=None) -> Any:
        """Return the running container, creating it (and the image) when needed.

        A container that died, or that was started with other settings, is replaced; the
        workspace and pi's data live on the host, so nothing is lost. Several kernels may
        call this at once for one folder: each round either joins the container another
        one is starting or creates it, and a lost creation race just goes round again.
        """
        import docker.errors

        self.preflight_warnings = []
        for _ in range(4):
            container = self.find()
            state = self._settle(container) if container is not None else None
            if state == "running":
                if container.labels.get(LABEL_RUN_CONFIG) == self._wanted_run_config():
                    self._record_running(container)  # joined: the window may predate this kernel
                    return container
                # Started with other settings (limits, mounts, a new secret file to mask):
                # replace it; pi's sessions live on the host, so conversations resume.
                self.notes.append("the sandbox's settings changed: replaced its container")
            if state is not None:
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
            self._record_stopped(container if state is not None else None)
            created = self._create(build=build, progress=progress)
            if created is not None:
                return created
        raise SandboxError(
            f"could not start sandbox {self.name}: its container keeps being replaced",
            container=self.name, hint="is another notebook in this folder using different pimagic settings?",
        )

    def _settle(self, container, timeout: float = 20.0) -> str | None:
        """The container's state once it is no longer being created; None if it vanished."""
        import docker.errors

        deadline = time.monotonic() + timeout
        while True:
            try:
                container.reload()
            except docker.errors.NotFound:
                return None
            if container.status not in ("created", "restarting") or time.monotonic() > deadline:
                return container.status
            time.sleep(0.1)  # another kernel is starting it right now

    def _create(self, *, build: bool, progress) -> Any:
        """Create and start the container; None when another process created it first."""
        import docker.errors

        image = image_mod.ensure_image(self.client, self.settings, build=build, progress=progress)
        self.preflight_warnings = preflight.check(self.client)  # warn, never refuse
        mask = self._prepare_host_dirs()
        begun = time.time()  # the window opens before the container can run anything
        try:
            container = self.client.containers.run(**self.container_kwargs(image, mask))
        except docker.errors.APIError as e:
            if e.status_code == 409:  # name taken: another kernel won the race
                return None
            raise SandboxError(f"could not start the sandbox: {e.explanation or e}", container=self.name) from e
        try:
            self._record_running(container, started_at=begun)
        except SandboxError:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
            raise
        try:
            if self._settle(container) != "running":
                raise SandboxError("the sandbox container exited at once", container=self.name)
            self.put_secret("github_token", self.settings.github_token.encode())
            self.apply_policy()
        except Exception:
            logs = _safe_logs(container)
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
            raise SandboxError(
                "the sandbox died while starting", container=self.name, logs=logs,
                hint="`pimagic update` rebuilds the image; `pimagic status` shows the engine's view",
            ) from None
        return container

    # --- when the sandbox could write the workspace (a `.env` from then is not loaded) -------

    def _record_running(self, container, started_at: float | None = None) -> None:
        """Open the container's write window in the host-only trust state (see pimagic.envtrust).
        Fails the start when it cannot: an unrecorded window would let a planted `.env` load."""
        if started_at is None:  # joined: the engine's StartedAt, on the host's clock
            if any(w.container == container.id for w in envtrust.open_windows()):
                return  # already recorded (every cell joins): no engine round trip, no write
            engine = envtrust.parse_engine_time(container.attrs.get("State", {}).get("StartedAt"))
            skew = self._engine_skew()
            started_at = 0.0 if engine is None or skew is None else engine - skew[0] - skew[1]
        try:
            envtrust.record_running(container.id, self.settings.workspace_path, started_at)
        except (OSError, PimagicError) as e:
            directory = envtrust.state_dir()
            raise SandboxError(
                f"could not record that the sandbox runs in {directory}: {e}", container=self.name,
                hint=f"make {directory} writable by you (pimagic's own host-only state)",
            ) from None

    def _record_stopped(self, container=None) -> None:
        """Close this container's write window (only its own): at the engine's FinishedAt for an
        exited container, moved onto the host's clock; else now. None: the folder's container is
        gone, so check every window still open for this folder by container id."""
        if container is None:
            with contextlib.suppress(Exception):  # noqa: BLE001 - a window left open only makes pimagic stricter
                self._close_gone(w for w in envtrust.open_windows() if w.folder == str(self.settings.workspace_path))
            return
        finished = None
        if container.status in ("exited", "dead"):
            finished = self._host_time(envtrust.parse_engine_time(container.attrs.get("State", {}).get("FinishedAt")))
        with contextlib.suppress(OSError, PimagicError):  # a window left open only makes pimagic stricter
            envtrust.record_stopped(container.id, finished)

    def _engine_skew(self) -> tuple[float, float] | None:
        """(engine clock - host clock, uncertainty) in seconds; None when it cannot be measured
        (Docker Desktop's VM clock drifts after sleep: its timestamps are not the host's)."""
        try:
            before = time.time()
            engine = envtrust.parse_engine_time(self.client.info().get("SystemTime"))
            after = time.time()
        except Exception:  # noqa: BLE001 - docker-py or the engine failing: unknown, the safe side
            return None
        if engine is None:
            return None
        return engine - (before + after) / 2, (after - before) / 2 + 0.01

    def _host_time(self, engine_time: float | None) -> float | None:
        """An engine timestamp as the latest host time it may stand for; None (= now) when unknown."""
        skew = self._engine_skew() if engine_time is not None else None
        return None if skew is None or engine_time is None else engine_time - skew[0] + skew[1]

    def _close_gone(self, windows) -> bool:
        """Close each window whose container (looked up by id) no longer runs. True when one closed."""
        import docker.errors

        closed = False
        for w in list(windows)[:64]:
            try:
                container = self.client.containers.get(w.container)
            except docker.errors.NotFound:
                envtrust.record_stopped(w.container, None)
                closed = True
                continue
            if container.status not in ("running", "paused", "restarting", "created"):
                self._record_stopped(container)
                closed = True
        return closed

    def close_stale_windows(self) -> bool:
        """Close the write windows of containers that stopped or vanished while no kernel watched
        (idle exit, `docker rm`), for any folder: a `.env` written since then is the user's."""
        return self._close_gone(envtrust.open_windows())

    def running(self):
        """The running container, or a SandboxError saying it is gone."""
        container = self.find()
        if container is None:
            raise SandboxError(f"sandbox {self.name} does not exist", container=self.name)
        container.reload()
        if container.status != "running":
            code = container.attrs.get("State", {}).get("ExitCode")
            raise SandboxError(
                f"sandbox {self.name} is {container.status} (exit code {code})",
                container=self.name, logs=_safe_logs(container),
            )
        return container

    def stop(self, timeout: int = 5) -> bool:
        container = self.find()
        if container is None:
            return False
        container.stop(timeout=timeout)
        self._record_stopped(container)
        return True

    def kill(self) -> bool:
        """SIGKILL every process in the sandbox now, with no grace (the write limit's stop:
        a writer must not get the seconds `stop` gives). False if it was not running."""
        import docker.errors

        try:
            self.client.api.kill(self.name)
        except docker.errors.APIError:  # gone, or not running (409)
            return False
        self._record_stopped(self.find())
        return True

    def remove(self) -> bool:
        container = self.find()
        if container is None:
            return False
        container.remove(force=True)
        self._record_stopped(container)
        return True

    def restart(self, *, progress=None) -> Any:
        self.remove()
        return self.start(progress=progress)

    def status(self, *, with_stats: bool = False) -> SandboxStatus:
        container = self.find()
        if container is None:
            return SandboxStatus(self.name, "missing")
        container.reload()
        state = container.attrs.get("State", {})
        started = state.get("StartedAt")
        uptime = None
        if container.status == "running" and started:
            from datetime import datetime, timezone

            begun = datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00")
            uptime = (datetime.now(timezone.utc) - begun).total_seconds()
        memory = limit = None
        if with_stats and container.status == "running":
            stats = container.stats(stream=False)
            memory = stats.get("memory_stats", {}).get("usage")
            limit = stats.get("memory_stats", {}).get("limit")
        tags = container.image.tags if container.image else []
        stale = False
        if container.status == "running":
            try:
                current = self.container_kwargs(container.attrs["Config"]["Image"], self._mask_path())
                want = current["labels"][LABEL_RUN_CONFIG]
                stale = container.labels.get(LABEL_RUN_CONFIG) != want
            except Exception:
                stale = False
        return SandboxStatus(
            self.name, container.status, tags[0] if tags else container.attrs["Config"]["Image"],
            started, uptime, memory, limit, stale,
        )

    def _wanted_run_config(self) -> str | None:
        try:
            image = image_mod.image_tag(self.settings)
            return self.container_kwargs(image, self._mask_path())["labels"][LABEL_RUN_CONFIG]
        except Exception:  # e.g. an unreadable build context: keep the running container
            return None

    def _mask_path(self) -> Path:
        return self.settings.pi_data_path.parent / "empty-mask"

    def logs(self, tail: int = 100) -> str:
        container = self.find()
        return _safe_logs(container, tail) if container is not None else ""

    # --- exec --------------------------------------------------------------

    def exec(
        self, cmd: list[str], *, user: str | None = None, environment: dict | None = None,
        workdir: str | None = None, stdin: bytes | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run a command to completion; returns (exit code, stdout, stderr)."""
        exec_id, sock = self.exec_socket(cmd, user=user, environment=environment, workdir=workdir)
        raw = getattr(sock, "_sock", sock)
        try:
            if stdin is not None:
                raw.sendall(stdin)
            raw.shutdown(socket.SHUT_WR)
            out, err = bytearray(), bytearray()
            for stream, payload in _demux(raw):
                (out if stream == 1 else err).extend(payload)
        finally:
            raw.close()
        code = self.client.api.exec_inspect(exec_id).get("ExitCode")
        return (code if code is not None else -1), bytes(out), bytes(err)

    def exec_socket(
        self, cmd: list[str], *, user: str | None = None, environment: dict | None = None,
        workdir: str | None = None, tty: bool = False,
    ) -> tuple[str, Any]:
        """Start a command attached to a socket (stdin open): pi's RPC channel or a TTY.

        Runs as the agent's uid unless `user` says otherwise: the container's own user is root
        (the idle supervisor), so an exec that named no user would run as uid 0."""
        container = self.running()
        exec_id = self.client.api.exec_create(
            container.id, cmd, stdin=True, stdout=True, stderr=True, tty=tty,
            user=user or f"{self.settings.uid}:{self.settings.gid}", environment=environment, workdir=workdir,
        )["Id"]
        sock = self.client.api.exec_start(exec_id, socket=True, tty=tty)
        return exec_id, sock

    # --- secrets and policy (root-owned files the agent's uid cannot read) -------

    def put_secret(self, name: str, data: bytes) -> None:
        """Write /run/pimagic/NAME as root, mode 0400, through stdin: never in env, args or logs."""
        code, _, err = self.exec([PUT_SECRET, name], user="0:0", stdin=data)
        if code != 0:
            raise SandboxError(
                f"could not store the {name} secret in the sandbox (exit {code}): "
                f"{err.decode(errors='replace').strip()}", container=self.name,
            )

    def apply_policy(self) -> None:
        """Push security policy (paranoid mode) where only root can write it; the next gh call reads it."""
        self.put_secret("policy", f"paranoid={1 if self.settings.paranoid else 0}\n".encode())


def _demux(raw: socket.socket) -> Iterator[tuple[int, bytes]]:
    """Docker's multiplexed exec stream: 8-byte header (stream, size) then payload."""
    buf = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= 8:
            size = int.from_bytes(buf[4:8], "big")
            if len(buf) < 8 + size:
                break
            yield buf[0], buf[8 : 8 + size]
            buf = buf[8 + size :]


def _ulimits(file_size: int = 0) -> list[Any]:
    """nofile and core, plus fsize = the write limit: the kernel refuses (EFBIG/SIGXFSZ) any
    file growing past it, however fast it is written; 0 leaves file sizes unbounded."""
    from docker.types import Ulimit

    limits = [Ulimit(name="nofile", soft=4096, hard=8192), Ulimit(name="core", soft=0, hard=0)]
    if file_size > 0:
        limits.append(Ulimit(name="fsize", soft=file_size, hard=file_size))
    return limits


def _run_config_hash(kwargs: dict[str, Any]) -> str:
    """A digest of the run options, so a changed setting shows the container is stale."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in sorted(value.items()) if k != LABEL_RUN_CONFIG}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else repr(dict(value))

    return hashlib.sha256(json.dumps(plain(kwargs), sort_keys=True).encode()).hexdigest()[:16]


def _safe_logs(container, tail: int = 50) -> str:
    try:
        return container.logs(tail=tail).decode(errors="replace")
    except Exception:
        return ""


def _refuse_unsafe_workspace(settings: PimagicSettings) -> None:
    """The folder is mounted read-write: it must not hold what the host runs or trusts on its own.
    Your home (or a folder above it) holds shell, IPython and ssh start-up files, and usually
    pimagic's own host-only state; a folder that contains the data root hands that state to the agent."""
    ws, home, root = settings.workspace_path, Path.home().resolve(), pimagic_data_root()
    if home.is_relative_to(ws):
        what = "your home directory" if ws == home else f"a folder that contains your home directory ({home})"
    elif root.is_relative_to(ws):
        what = f"a folder that contains pimagic's host-only state ({root})"
    else:
        return
    raise SandboxError(
        f"refusing to give the sandbox {ws}: it is {what}, and whatever the agent writes there "
        "(start-up files, pimagic's own records) would run or be trusted on your machine",
        hint="work in a project folder (`mkdir ~/myproject`, open the notebook there, or "
        "`%config PimagicSettings.workspace = '~/myproject'`); or set PIMAGIC_DATA_ROOT outside the folder",
    )


def reload_if_sandbox_gone(settings: PimagicSettings, reload) -> PimagicSettings:
    """`reload()` the settings when their `.env` was refused and the engine shows that the
    sandbox it blamed has stopped since (idle exit, `docker rm`); else `settings` as they are."""
    if not settings.env_notes:
        return settings
    try:
        closed = Sandbox(settings).close_stale_windows()
    except Exception:  # noqa: BLE001 - no engine, or docker-py failing: keep the refusal (the safe side)
        return settings
    return reload() if closed else settings


def list_sandboxes(client) -> list[Any]:
    """Every pimagic container on this engine (for `pimagic clean --all`)."""
    return client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=1"})
