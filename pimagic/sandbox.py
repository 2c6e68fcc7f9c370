"""Container lifecycle for one workspace: find, start (create or join), stop, exec. The run
options come from pimagic.hardening (pure), the folder's view from pimagic.workspace; Docker's
errors are translated here, so nothing above this module sees docker-py's exceptions."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import envtrust, hardening, hostfs, policy, preflight, providers, statedir, workspace, workspace_pin
from . import image as image_mod
from .config import PimagicSettings, pimagic_data_root
from .errors import DockerUnavailableError, PimagicError, SandboxError, WorkspaceReplacedError
from .hardening import (
    CONTAINER_PI_DIR,
    CONTAINER_WORKSPACE,
    HOST_GATEWAY_NAME,
    IDLE_SUPERVISOR,
    LABEL_MANAGED,
    LABEL_OPTIONS,
    LABEL_RUN_CONFIG,
)
from .rpc import demux

__all__ = [
    "HOST_GATEWAY_NAME", "IDLE_EXIT_CODE", "IDLE_SUPERVISOR", "LABEL_RUN_CONFIG", "ContainerState", "Sandbox",
    "SandboxStart", "SandboxStatus", "docker_client", "list_sandboxes", "mask_path", "mounts", "reload_if_sandbox_gone",
]

PUT_SECRET = "/usr/local/lib/pimagic/put-secret"
IDLE_EXIT_CODE = 75  # the supervisor's exit code when no session was attached for idle_timeout
Adjust = Callable[[dict[str, Any]], dict[str, Any]]


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


def _engine_errors() -> tuple[type[Exception], ...]:
    """What docker-py raises when the engine refuses or goes away (requests' errors escape it)."""
    import docker.errors
    import requests.exceptions

    return docker.errors.DockerException, requests.exceptions.RequestException


@dataclass(frozen=True)
class ContainerState:
    """The engine's `State` of a container, parsed in one place."""

    status: str  # running | exited | created | restarting | paused | dead
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    container_id: str | None = None

    @classmethod
    def of(cls, container: Any) -> ContainerState:
        state = (getattr(container, "attrs", None) or {}).get("State") or {}
        return cls(state.get("Status") or getattr(container, "status", "unknown"), state.get("ExitCode"),
                   state.get("StartedAt"), state.get("FinishedAt"), getattr(container, "id", None))

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def idle_exit(self) -> bool:
        """The idle supervisor ended it: no notebook or shell was attached for idle_timeout."""
        return self.status == "exited" and self.exit_code == IDLE_EXIT_CODE


@dataclass(frozen=True)
class SandboxStart:
    """What `Sandbox.start` did: the running container, "created" | "joined" | "replaced", what
    the user should hear about, and the workspace view the container mounts."""

    container: Any
    action: str
    notes: tuple[str, ...]
    view: workspace.WorkspaceView


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


def mask_path(settings: PimagicSettings) -> Path:
    """The empty read-only file mounted over every secret file."""
    return statedir.state_dir(settings) / "empty-mask"


def mounts(settings: PimagicSettings, view: workspace.WorkspaceView) -> list[Any]:
    """The bind mounts of one start: the folder, pi's agent dir, pi's read-only config view,
    an empty file over each secret file, `.git` and the read-only paths."""
    from docker.types import Mount

    s, mask = settings, mask_path(settings)

    def target(path: Path) -> str:
        return f"{CONTAINER_WORKSPACE}/{path.relative_to(view.root).as_posix()}"

    out = [
        Mount(CONTAINER_WORKSPACE, str(s.workspace_path), type="bind"),
        Mount(CONTAINER_PI_DIR, str(s.pi_data_path), type="bind"),
    ]
    for name in statedir.VIEW_FILES:  # pi reads its config from the host-owned, read-only view
        source = statedir.view_dir(s) / name
        out.append(Mount(f"{CONTAINER_PI_DIR}/{name}", str(source), type="bind", read_only=True))
    out += [Mount(target(path), str(mask), type="bind", read_only=True) for path in view.secret_files]
    if view.git_dir is not None:  # a mount point: .git cannot be renamed away from its masks
        out.append(Mount(target(view.git_dir), str(view.git_dir), type="bind"))
    # what the host runs on its own: git hooks/config, virtualenvs
    out += [Mount(target(path), str(path), type="bind", read_only=True) for path in view.read_only]
    return out


class Sandbox:
    """The long-lived container of one workspace: same folder, same container.

    `adjust(kwargs) -> kwargs` alters the run options before `containers.run` (the security
    tests' control sandboxes remove one layer this way); the hashes cover its result."""

    def __init__(self, settings: PimagicSettings, client: Any = None, *, adjust: Adjust | None = None) -> None:
        self.settings = settings
        self._client = client
        self.adjust = adjust
        self._replaced_running: str | None = None  # its policy carries over (pimagic.policy)
        self._agent_dir: tuple[int, int] | None = None  # pi's agent dir as the last start prepared it

    @property
    def client(self):
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def name(self) -> str:
        return self.settings.container_name

    @contextlib.contextmanager
    def _engine(self, what: str) -> Iterator[None]:
        """Docker's errors during `what` as SandboxError (the engine refused) or
        DockerUnavailableError (it went away)."""
        import docker.errors

        try:
            yield
        except docker.errors.APIError as e:
            raise SandboxError(
                f"could not {what} sandbox {self.name}: {e.explanation or e}", container=self.name,
                hint="`pimagic status` shows the engine's view; `pimagic clean` removes the container",
            ) from e
        except _engine_errors() as e:
            raise DockerUnavailableError(
                f"lost the Docker engine while trying to {what} sandbox {self.name}: {e}",
                hint="check that `docker info` works for this user, then run the cell again",
            ) from e

    # --- host-side preparation -------------------------------------------

    def _prepare_host_dirs(self) -> list[str]:
        """Create the folder's state dir, pi's agent dir (writable by the container's uid) and the
        mask file; return what the user should hear about (e.g. legacy config not imported)."""
        s = self.settings
        s.check_workspace_pin()  # the folder the user chose, reached through no link a sandbox made
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
        # (host-only) and reaches the sandbox as read-only file mounts (see pimagic.statedir).
        state = statedir.prepare_state(s)
        providers.refresh_view(s)
        agent = os.stat(s.pi_data_path)  # host-only parent: no sandbox can swap it (checked in the container)
        self._agent_dir = (agent.st_dev, agent.st_ino)
        with hostfs.opened_dir(state.path) as sfd:  # O_EXCL: two kernels starting at once
            try:
                os.close(os.open(mask_path(s).name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o444,
                                 dir_fd=sfd))
            except FileExistsError:
                pass
        return list(state.notes)

    def view(self, candidates=None) -> workspace.WorkspaceView:
        """The folder as a start now mounts it (reads only). `candidates`: its relative paths
        when the caller has listed them already."""
        s = self.settings
        return workspace.view(s.workspace_path, s.secret_patterns, s.keep_visible, candidates)

    def _start_view(self) -> workspace.WorkspaceView:
        """The view for a start; a walk that fails because the folder was swapped under it says so."""
        try:
            return self.view()
        except OSError:
            self.settings.check_workspace_pin()
            raise

    def run_kwargs(self, image: str, view: workspace.WorkspaceView | None = None) -> dict[str, Any]:
        """Exactly what `containers.run` gets for `image` and `view`, `adjust` applied, hashes set."""
        kwargs = hardening.container_kwargs(self.settings, image, mounts(self.settings, view or self.view()))
        if self.adjust is not None:
            kwargs = self.adjust(kwargs)
        return hardening.with_hashes(kwargs)

    def _options_hash(self) -> str:
        """The settings' part of the run options' hash: no image tag, no workspace walk."""
        kwargs = hardening.container_kwargs(self.settings, "", [])
        if self.adjust is not None:
            kwargs = self.adjust(kwargs)
        return hardening.options_hash(kwargs)

    # --- lifecycle ---------------------------------------------------------

    def find(self):
        """The workspace's container (any state), or None."""
        import docker.errors

        with self._engine("look up"):
            try:
                return self.client.containers.get(self.name)
            except docker.errors.NotFound:
                return None

    def start(self, *, build: bool = True, progress=None) -> SandboxStart:
        """The running container, created (and its image built) when needed, its policy pushed.

        A container that died, or that was started with other settings, is replaced; the
        workspace and pi's data live on the host, so nothing is lost. A running container is
        removed only once its replacement's image is ready. Several kernels may call this at once
        for one folder: each round either joins the container another one is starting or creates
        it, and a lost creation race just goes round again.
        """
        notes: list[str] = []
        replaced = False
        for _ in range(4):
            container = self.find()
            status = self._settle(container) if container is not None else None
            if status == "running":
                joined = self._join_or_prepare(container, notes, build=build, progress=progress)
                if joined is not None:
                    return joined
                # Started with other settings (limits, mounts, a new secret file to mask):
                # replace it; pi's sessions live on the host, so conversations resume.
                notes.append("the sandbox's settings changed: replaced its container")
                replaced = True
                self._replaced_running = container.id
            if status is not None:
                self.remove_container(container)
            self._record_stopped(container if status is not None else None)
            created = self._create(notes, build=build, progress=progress)
            if created is not None:
                return SandboxStart(created[0], "replaced" if replaced else "created", tuple(notes), created[1])
        raise SandboxError(
            f"could not start sandbox {self.name}: its container keeps being replaced",
            container=self.name, hint="is another notebook in this folder using different pimagic settings?",
        )

    def _join_or_prepare(self, container, notes: list[str], *, build: bool, progress) -> SandboxStart | None:
        """Join the running container when it was started with these run options; None when it
        must be replaced (its new image is ready by then). When the replacement cannot be
        prepared (an image tag or build that fails), the running container is kept if it hides
        every secret file of the folder, with a note; otherwise the start fails, nothing removed."""
        self.settings.check_workspace_pin()  # before the folder is walked or written
        workspace.disarm(self.settings.workspace_path)
        view = self._start_view()
        try:
            image = image_mod.image_tag(self.settings)
            if container.labels.get(LABEL_RUN_CONFIG) != self.run_kwargs(image, view)["labels"][LABEL_RUN_CONFIG]:
                image_mod.ensure_image(self.client, self.settings, build=build, progress=progress)
                return None
        except PimagicError as e:
            missing = _unmasked(container, view)
            if missing:
                raise SandboxError(
                    f"sandbox {self.name} must be replaced (not hidden in it: {', '.join(missing)}) but "
                    f"its new image cannot be made: {e.message}", container=self.name,
                    hint=f"{e.hint or 'fix the image settings'}; the running sandbox was left as it was",
                ) from e
            notes.append(f"kept the running sandbox with the settings it was started with: "
                         f"a new one cannot be made ({e.message})")
        self._verify_mounts(container, agent_dir=None)  # another kernel may have pinned another directory
        self._record_running(container)  # joined: the window may predate this kernel
        # The container may predate this kernel's settings (another kernel started it): the
        # policy file must say what this kernel's settings say before pi runs any gh.
        notes.extend(self.apply_policy(container.id))
        return SandboxStart(container, "joined", tuple(notes), view)

    def _settle(self, container, timeout: float = 20.0) -> str | None:
        """The container's state once it is no longer being created; None if it vanished."""
        import docker.errors

        deadline = time.monotonic() + timeout
        while True:
            with self._engine("inspect"):
                try:
                    container.reload()
                except docker.errors.NotFound:
                    return None
            status = ContainerState.of(container).status
            if status not in ("created", "restarting") or time.monotonic() > deadline:
                return status
            time.sleep(0.1)  # another kernel is starting it right now

    def _create(self, notes: list[str], *, build: bool, progress) -> tuple[Any, workspace.WorkspaceView] | None:
        """Create and start the container, store the token and push the policy; None when
        another process created it first."""
        import docker.errors

        image = image_mod.ensure_image(self.client, self.settings, build=build, progress=progress)
        notes.extend(f"Docker host check: {w}" for w in preflight.check(self.client))  # warns, never raises
        notes.extend(self._prepare_host_dirs())
        notes.extend(self._nested_notes())
        workspace.disarm(self.settings.workspace_path)
        view = self._start_view()
        self.settings.check_workspace_pin()  # again, as late as possible; the container check closes the rest
        begun = time.time()  # the window opens before the container can run anything
        with self._engine("create"):
            try:
                container = self.client.containers.run(**self.run_kwargs(image, view))
            except docker.errors.APIError as e:
                if e.status_code == 409:  # name taken: another kernel won the race
                    return None
                raise SandboxError(f"could not start the sandbox: {e.explanation or e}", container=self.name) from e
        try:
            self._record_running(container, started_at=begun)
        except SandboxError:
            self.remove_container(container)
            raise
        try:
            if self._settle(container) != "running":
                raise SandboxError("the sandbox container exited at once", container=self.name)
            # before the token or pi; `.git` only when mounted (keeps the two-argument call otherwise)
            git = {"git_dir": view.git_id} if view.git_id is not None else {}
            self._verify_mounts(container, agent_dir=self._agent_dir, **git)
            self.put_secret("github_token", self.settings.github_token.encode())
            notes.extend(self.apply_policy(container.id))
        except WorkspaceReplacedError:
            self.remove_container(container)
            self._record_stopped(container)
            raise
        except Exception:
            logs = _safe_logs(container)
            self.remove_container(container)
            raise SandboxError(
                "the sandbox died while starting", container=self.name, logs=logs,
                hint="`pimagic update` rebuilds the image; `pimagic status` shows the engine's view",
            ) from None
        return container, view

    def _verify_mounts(
        self, container, *, agent_dir: tuple[int, int] | None, git_dir: tuple[int, int] | None = None
    ) -> None:
        """What Docker mounted (stat in the container, before anything of the agent's runs)
        is the pinned folder, pi's agent dir when `agent_dir` is given, and the host `.git` the
        view saw when `git_dir` is given (mounted read-write): dockerd follows links in a mount
        source when it mounts, after the host's check. WorkspaceReplacedError otherwise."""
        s, pinned = self.settings, self.settings.workspace_pin
        reference = statedir.view_dir(s) / statedir.MODELS_FILE  # host-only, mounted in every start
        targets = [CONTAINER_WORKSPACE, f"{CONTAINER_PI_DIR}/{statedir.MODELS_FILE}"]
        if agent_dir is not None:
            targets.append(CONTAINER_PI_DIR)
        if git_dir is not None:
            targets.append(f"{CONTAINER_WORKSPACE}/.git")
        # The image's own `stat`, as the agent's uid: root in the sandbox has no CAP_DAC_OVERRIDE and
        # cannot enter the agent's home; nothing of the agent's runs yet in a container just created.
        code, out, err = self.exec(["stat", "-c", "%d %i", "--", *targets])
        try:
            if code != 0:
                raise ValueError(err.decode(errors="replace").strip())
            seen = workspace_pin.parse_stat(out, len(targets))
            ref = os.stat(reference)
        except (OSError, ValueError) as e:
            raise SandboxError(f"could not check what the sandbox mounted: {e}", container=self.name,
                               hint="`pimagic update` rebuilds the image") from None
        ref_pair = ((ref.st_dev, ref.st_ino), seen[1])
        if ref_pair[1].ino != ref.st_ino:
            raise WorkspaceReplacedError(
                f"this Docker engine does not show a mounted folder's inode number, so pimagic cannot check that "
                f"sandbox {self.name} mounts {pinned.path} and not a folder put in its place", container=self.name,
                hint="use a Docker engine whose bind mounts keep inode numbers (Docker Engine on Linux, or "
                "Docker Desktop with VirtioFS file sharing)",
            )
        wrong = []
        if pinned.identity is None or not workspace_pin.same(pinned.identity, seen[0], ref_pair):
            wrong.append(f"{CONTAINER_WORKSPACE} is not {pinned.path}")
        if agent_dir is not None and not workspace_pin.same(agent_dir, seen[2], ref_pair):
            wrong.append(f"{CONTAINER_PI_DIR} is not {s.pi_data_path}")
        if git_dir is not None and not workspace_pin.same(git_dir, seen[-1], ref_pair):
            wrong.append(f"{CONTAINER_WORKSPACE}/.git is not {pinned.path}/.git")
        if wrong:
            what = f"the folder {pinned.path}" if wrong[0].startswith(CONTAINER_WORKSPACE) else (
                f"pi's data dir {s.pi_data_path}")
            raise WorkspaceReplacedError(
                f"{what} was replaced (moved, or a link put in its place) while sandbox "
                f"{self.name} started: {'; '.join(wrong)}; nothing ran in it and no file was touched",
                container=self.name,
                hint="a sandbox whose folder contains this one can rename it: check what is there, then "
                "reopen the notebook from the real folder or `%config PimagicSettings.workspace = '...'`",
            )

    def _nested_notes(self) -> list[str]:
        """Other sandboxes whose folder contains this one: their agents own its name (a rename, a
        link in its place), so the user should know; each start checks the pinned folder."""
        here = self.settings.workspace_path
        try:
            outer = sorted({w.folder for w in envtrust.open_windows()
                            if hostfs.path_in(Path(w.folder), here)})
        except (OSError, PimagicError):
            return []
        return [f"this folder is inside {folder}, whose sandbox can rename or replace it; pimagic checks at "
                "each start that it still mounts the folder this kernel loaded" for folder in outer[:3]]

    def remove_container(self, container) -> None:
        """Remove `container` (this folder's or, for `pimagic clean --all`, any), gone or not."""
        import docker.errors

        with self._engine("remove"), contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)

    # --- when the sandbox could write the workspace (a `.env` from then is not loaded) -------

    def _record_running(self, container, started_at: float | None = None) -> None:
        """Open the container's write window in the host-only trust state (see pimagic.envtrust).
        Fails the start when it cannot: an unrecorded window would let a planted `.env` load."""
        if started_at is None:  # joined: the engine's StartedAt, on the host's clock
            if any(w.container == container.id for w in envtrust.open_windows()):
                return  # already recorded (every cell joins): no engine round trip, no write
            engine = envtrust.parse_engine_time(ContainerState.of(container).started_at)
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
            with contextlib.suppress(OSError, PimagicError):  # a window left open only makes pimagic stricter
                self._close_gone(w for w in envtrust.open_windows() if w.folder == str(self.settings.workspace_path))
            return
        finished = None
        state = ContainerState.of(container)
        if state.status in ("exited", "dead"):
            finished = self._host_time(envtrust.parse_engine_time(state.finished_at))
        with contextlib.suppress(OSError, PimagicError):  # a window left open only makes pimagic stricter
            envtrust.record_stopped(container.id, finished)

    def _engine_skew(self) -> tuple[float, float] | None:
        """(engine clock - host clock, uncertainty) in seconds; None when it cannot be measured
        (Docker Desktop's VM clock drifts after sleep: its timestamps are not the host's)."""
        try:
            before = time.time()
            engine = envtrust.parse_engine_time(self.client.info().get("SystemTime"))
            after = time.time()
        except (OSError, PimagicError, *_engine_errors()):  # unknown: the safe side
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
            with self._engine("look up"):
                try:
                    container = self.client.containers.get(w.container)
                except docker.errors.NotFound:
                    envtrust.record_stopped(w.container, None)
                    closed = True
                    continue
            if ContainerState.of(container).status not in ("running", "paused", "restarting", "created"):
                self._record_stopped(container)
                closed = True
        return closed

    def close_stale_windows(self) -> bool:
        """Close the write windows of containers that stopped or vanished while no kernel watched
        (idle exit, `docker rm`), for any folder: a `.env` written since then is the user's."""
        return self._close_gone(envtrust.open_windows())

    def state(self) -> ContainerState | None:
        """The container's current state, or None when there is none."""
        container = self.find()
        if container is None:
            return None
        with self._engine("inspect"):
            container.reload()
        return ContainerState.of(container)

    def running(self):
        """The running container, or a SandboxError saying it is gone."""
        container = self.find()
        if container is None:
            raise SandboxError(f"sandbox {self.name} does not exist", container=self.name)
        with self._engine("inspect"):
            container.reload()
        state = ContainerState.of(container)
        if not state.running:
            raise SandboxError(
                f"sandbox {self.name} is {state.status} (exit code {state.exit_code})",
                container=self.name, logs=_safe_logs(container),
            )
        return container

    def stop(self, timeout: int = 5) -> bool:
        import docker.errors

        container = self.find()
        if container is None:
            return False
        with self._engine("stop"), contextlib.suppress(docker.errors.NotFound):
            container.stop(timeout=timeout)
            container.reload()
        self._record_stopped(container)
        return True

    def kill(self) -> bool:
        """SIGKILL every process in the sandbox now, with no grace (the write limit's stop:
        a writer must not get the seconds `stop` gives). False if it was not running."""
        import docker.errors

        with self._engine("kill"):
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
        if ContainerState.of(container).running:  # replaced (restart, new secrets): its policy carries over
            self._replaced_running = container.id
        self.remove_container(container)
        self._record_stopped(container)
        return True

    def status(self, *, with_stats: bool = False) -> SandboxStatus:
        """The container as the engine sees it; walks nothing and creates nothing. `stale` compares
        the settings' hash label with the current settings (image and mounts are start's job)."""
        container = self.find()
        if container is None:
            return SandboxStatus(self.name, "missing")
        with self._engine("inspect"):
            container.reload()
        state = ContainerState.of(container)
        uptime = memory = limit = None
        started = envtrust.parse_engine_time(state.started_at)
        if state.running and started is not None:
            uptime = max(0.0, time.time() - started)
        if with_stats and state.running:
            with self._engine("measure"):
                stats = container.stats(stream=False).get("memory_stats", {})
            memory, limit = stats.get("usage"), stats.get("limit")
        label = container.labels.get(LABEL_OPTIONS)
        stale = state.running and label is not None and label != self._options_hash()
        image = (container.attrs.get("Config") or {}).get("Image")
        return SandboxStatus(self.name, state.status, image, state.started_at, uptime, memory, limit, stale)

    def logs(self, tail: int = 100) -> str:
        container = self.find()
        if container is None:
            return ""
        with self._engine("read the logs of"):
            return container.logs(tail=tail).decode(errors="replace")

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
            for stream, payload in demux(raw):
                (out if stream == 1 else err).extend(payload)
        finally:
            raw.close()
        return self.exit_code(exec_id), bytes(out), bytes(err)

    def exit_code(self, exec_id: str) -> int:
        """The exit code of a finished exec; -1 when the engine does not know one."""
        with self._engine("inspect an exec in"):
            code = self.client.api.exec_inspect(exec_id).get("ExitCode")
        return code if code is not None else -1

    def exec_socket(
        self, cmd: list[str], *, user: str | None = None, environment: dict | None = None,
        workdir: str | None = None, tty: bool = False,
    ) -> tuple[str, Any]:
        """Start a command attached to a socket (stdin open): pi's RPC channel or a TTY.

        Runs as the agent's uid unless `user` says otherwise: the container's own user is root
        (the idle supervisor), so an exec that named no user would run as uid 0."""
        container = self.running()
        with self._engine("run a command in"):
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

    def apply_policy(self, container_id: str | None = None) -> list[str]:
        """Push paranoid mode where only root can write it (the next gh call reads it) and record,
        host-only, what went into which container: the only place the host learns a running
        sandbox's policy from. Never weaker than what the host last gave the running container (or
        the one it replaced) without a deliberate "off" (pimagic.policy). Returns notes for the user."""
        if container_id is None:
            container_id = self.running().id
        paranoid, why, notes = policy.decide(self.settings, container_id, self._replaced_running)
        self.put_secret("policy", f"paranoid={1 if paranoid else 0}\n".encode())
        self._replaced_running = None
        policy.record_applied(self.settings, container_id, paranoid, why)
        return notes


def _unmasked(container, view: workspace.WorkspaceView) -> list[str]:
    """The view's secret files that the container does not mount read-only (per the engine)."""
    covered = {m.get("Destination") for m in (container.attrs.get("Mounts") or []) if not m.get("RW", True)}
    rels = [p.relative_to(view.root).as_posix() for p in view.secret_files]
    return [rel for rel in rels if f"{CONTAINER_WORKSPACE}/{rel}" not in covered]


def _safe_logs(container, tail: int = 50) -> str:
    """The container's last log lines for an error message; empty when the engine has none to give
    (the error being reported is the one that matters)."""
    try:
        return container.logs(tail=tail).decode(errors="replace")
    except _engine_errors():
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
    except (OSError, PimagicError):  # no engine, or it failing: keep the refusal (the safe side)
        return settings
    return reload() if closed else settings


def list_sandboxes(client) -> list[Any]:
    """Every pimagic container on this engine (for `pimagic clean --all`)."""
    try:
        return client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=1"})
    except _engine_errors() as e:
        raise DockerUnavailableError(f"could not list pimagic's containers: {e}",
                                     hint="check that `docker info` works for this user") from e
