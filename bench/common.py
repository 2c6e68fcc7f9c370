"""Shared pieces of the benchmark suite: the run context (Docker client, sandbox image, scripted
model servers, host pi, warm pimagic cells) and everything it must clean up, plus small stats
helpers and the :class:`Metric` rows the runner prints.

Everything a benchmark starts (containers, pi processes, model servers, temp dirs, monkeypatches)
is registered on :class:`Context`'s exit stack as soon as it exists, so it is removed even when a
benchmark fails half-way or the run is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_LABEL = "org.pimagic.bench"
DEFAULT_IMAGE = "pimagic:dev"
PROMPT_TIMEOUT = 120.0
AGENT_UID = os.getuid() if os.getuid() != 0 else 1000
AGENT_GID = os.getgid() if os.getuid() != 0 else 1000


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclass
class Metric:
    """One row of the results table.

    ``ratio`` is ``value / baseline`` unless ``ratio_kind`` is ``"speedup"`` (``baseline / value``);
    ``target`` is a human-readable goal and ``passed`` its verdict (None: informational only).
    """

    bench: str
    name: str
    value: float | None
    baseline: float | None
    unit: str
    baseline_label: str = ""
    ratio: float | None = None
    ratio_kind: str = "ratio"  # ratio (value/baseline) | speedup (baseline/value)
    target: str = ""
    passed: bool | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    def __post_init__(self) -> None:
        if self.ratio is None and self.value and self.baseline:
            self.ratio = self.baseline / self.value if self.ratio_kind == "speedup" else self.value / self.baseline

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else {True: "PASS", False: "MISS", None: "info"}[self.passed]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict
        return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sample."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "median": median(xs),
        "p95": percentile(xs, 95),
        "min": min(xs),
        "max": max(xs),
        "mean": statistics.fmean(xs),
    }


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Modes
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does in a mode."""

    followup_prompts: int
    per_prompt_runs: int
    first_cell_reps: int
    memory_prompts: int
    stream_turns: int
    stream_tokens: int
    build_seed: bool  # build the seed-style image when it is not cached yet
    project_files: tuple[int, ...] = ()  # follow-ups also in generated projects of these many files
    project_prompts: int = 0  # follow-up prompts per generated project


MODES = {
    "quick": Sizes(followup_prompts=5, per_prompt_runs=2, first_cell_reps=1, memory_prompts=5,
                   stream_turns=1, stream_tokens=30, build_seed=False, project_files=(1000,), project_prompts=3),
    "default": Sizes(followup_prompts=20, per_prompt_runs=5, first_cell_reps=3, memory_prompts=20,
                     stream_turns=3, stream_tokens=40, build_seed=True, project_files=(1000, 10000),
                     project_prompts=10),
    "full": Sizes(followup_prompts=50, per_prompt_runs=10, first_cell_reps=5, memory_prompts=200,
                  stream_turns=5, stream_tokens=40, build_seed=True, project_files=(1000, 10000, 30000),
                  project_prompts=20),
}


# ------------------------------------------------------------------------------------------------
# Host pi (raw pi on the host, the baseline)
# ------------------------------------------------------------------------------------------------


def host_pi_paths() -> tuple[str, str]:
    """(node, cli.js) of pi on the host: from PIMAGIC_HOST_NODE/PIMAGIC_HOST_PI_CLI, else installed
    (or found in its cache) by bench/install-host-pi.sh."""
    node, cli = os.environ.get("PIMAGIC_HOST_NODE"), os.environ.get("PIMAGIC_HOST_PI_CLI")
    if node and cli and Path(cli).is_file() and shutil.which(node):
        return node, cli
    log("PIMAGIC_HOST_NODE/PIMAGIC_HOST_PI_CLI unset: running bench/install-host-pi.sh")
    out = subprocess.run(
        ["bash", str(REPO / "bench" / "install-host-pi.sh")], check=True, capture_output=True, text=True
    ).stdout
    values: dict[str, str] = {}
    for word in out.replace("export", " ").split():
        key, _, value = word.partition("=")
        values[key] = value.strip("'\"")
    node, cli = values.get("PIMAGIC_HOST_NODE"), values.get("PIMAGIC_HOST_PI_CLI")
    if not node or not cli:
        raise RuntimeError(f"bench/install-host-pi.sh printed no paths: {out!r}")
    os.environ["PIMAGIC_HOST_NODE"], os.environ["PIMAGIC_HOST_PI_CLI"] = node, cli
    return node, cli


@dataclass
class HostPi:
    """A raw ``node cli.js --mode rpc`` on the host with its own agent dir."""

    client: Any  # RpcClient
    popen: subprocess.Popen
    agent_dir: Path
    ready_seconds: float

    def memory(self) -> dict[str, int]:
        """Resident set size (``rss``) and its anonymous part (``anon``) of the pi (node) process."""
        fields = {"VmRSS:": "rss", "RssAnon:": "anon"}
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            if key in fields:
                out[fields[key]] = int(line.split()[1]) * 1024
        if set(out) != set(fields.values()):
            raise RuntimeError("no VmRSS/RssAnon for the host pi process")
        return out

    def prompt(self, message: str) -> list[dict[str, Any]]:
        return list(self.client.prompt(message, timeout=PROMPT_TIMEOUT))


# ------------------------------------------------------------------------------------------------
# pimagic through a real IPython shell
# ------------------------------------------------------------------------------------------------


class Cells:
    """``%%pi`` cells through the process's IPython ``InteractiveShell`` and one PiMagics instance
    (one workspace, so one sandbox container)."""

    def __init__(self, shell: Any, magics: Any, settings: Any) -> None:
        self.shell, self.magics, self.settings = shell, magics, settings

    def _activate(self) -> None:
        current = self.shell.magics_manager.magics["cell"].get("pi")
        if getattr(current, "__self__", None) is not self.magics:
            self.shell.register_magics(self.magics)

    def run(self, prompt: str, line: str = "") -> Any:
        self._activate()
        result = self.shell.run_cell_magic("pi", line, prompt)
        if result is None or getattr(result, "error", None):
            raise RuntimeError(f"%%pi cell failed: {getattr(result, 'error', result)!r}")
        return result

    @property
    def session(self) -> Any:
        return self.magics.session

    def container(self) -> Any:
        return self.session.sandbox.find()

    def close(self) -> None:
        if self.magics._session is not None:
            self.magics._session.close()


# ------------------------------------------------------------------------------------------------
# Container memory
# ------------------------------------------------------------------------------------------------


def container_memory(container: Any) -> dict[str, int]:
    """Memory of a running container from the stats API (one shot, no 1 s CPU sample).

    ``used`` is what ``docker stats`` prints: cgroup usage minus inactive file cache
    (``inactive_file`` on cgroup v2, ``total_inactive_file`` on v1); ``anon`` is the anonymous
    (process-private) memory charged to the container (``anon`` on v2, ``total_rss`` on v1).
    """
    try:
        stats = container.stats(stream=False, one_shot=True)
    except TypeError:  # docker-py < 6: no one_shot
        stats = container.stats(stream=False)
    mem = stats.get("memory_stats") or {}
    usage = int(mem.get("usage") or 0)
    inner = mem.get("stats") or {}
    cache = int(inner.get("inactive_file", inner.get("total_inactive_file", 0)) or 0)
    anon = int(inner.get("anon", inner.get("total_rss", inner.get("rss", 0))) or 0)
    return {"usage": usage, "inactive_file": cache, "used": max(0, usage - cache), "anon": anon,
            "limit": int(mem.get("limit") or 0)}


MiB = 2**20


# ------------------------------------------------------------------------------------------------
# The run context
# ------------------------------------------------------------------------------------------------


class Context:
    """Lazily created shared resources of one benchmark run, all torn down by :meth:`close`."""

    def __init__(self, mode: str, *, keep_tmp: bool = False) -> None:
        self.mode = mode
        self.sizes = MODES[mode]
        self.run_id = uuid.uuid4().hex[:8]
        self.stack = contextlib.ExitStack()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"pimagic-bench-{self.run_id}-"))
        os.environ["PIMAGIC_DATA_ROOT"] = str(self.tmp)  # pi data dirs must lie under pimagic's data root
        if not keep_tmp:
            self.stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        self._client: Any = None
        self._image: str | None = None
        self._gateway_server: Any = None
        self._loopback_server: Any = None
        self._warm: Cells | None = None
        self._host: HostPi | None = None
        self._containers: list[str] = []
        self.shared: dict[str, Any] = {}  # results one benchmark may reuse from another
        self.stack.callback(self._remove_containers)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def defer(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn`` at the end of the run (LIFO), swallowing its errors."""

        def safe() -> None:
            try:
                fn(*args, **kwargs)
            except Exception as e:  # cleanup must go on
                log(f"cleanup {getattr(fn, '__name__', fn)} failed: {e}")

        self.stack.callback(safe)

    def track_container(self, name: str) -> None:
        self._containers.append(name)

    def _remove_containers(self) -> None:
        if self._client is None:
            return
        import docker.errors

        names = set(self._containers)
        try:
            for c in self._client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={self.run_id}"}):
                names.add(c.name)
        except Exception as e:
            log(f"listing bench containers failed: {e}")
        for name in names:
            with contextlib.suppress(docker.errors.NotFound):
                try:
                    self._client.containers.get(name).remove(force=True)
                except docker.errors.NotFound:
                    raise
                except Exception as e:
                    log(f"removing container {name} failed: {e}")

    # -- docker ---------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            from pimagic.sandbox import docker_client

            self._client = docker_client()
        return self._client

    @property
    def image(self) -> str:
        """The sandbox image: PIMAGIC_IMAGE (default pimagic:dev when it exists), else built by
        pimagic from container/ like the test suite does."""
        if self._image is None:
            from pimagic.config import load_settings
            from pimagic.image import ensure_image, image_exists

            wanted = os.environ.get("PIMAGIC_IMAGE")
            if not wanted and image_exists(self.client, DEFAULT_IMAGE):
                wanted = DEFAULT_IMAGE
            if wanted:
                if not image_exists(self.client, wanted):
                    raise RuntimeError(f"sandbox image {wanted} does not exist (build it: pimagic build)")
                self._image = wanted
            else:
                log("building the sandbox image from container/ (once)")
                self._image = ensure_image(self.client, load_settings(self.tmp, environ=os.environ))
        return self._image

    # -- scripted model servers ----------------------------------------------------------------

    def _nodelay(self) -> None:
        """Set TCP_NODELAY on the scripted server's connections for this run.

        The server streams each SSE event as its own small write; with Nagle's algorithm on, a
        write waits for the ACK of the previous one, which the client may delay by up to 40 ms.
        That stall hits pimagic and raw pi at random (bimodal 6 ms / 50 ms turns) and no real
        provider has it, so the benchmark removes it. A no-op if the server already sets it.
        """
        if getattr(self, "_nodelay_done", False):
            return
        import socket

        import pimagic.scripted_model as sm

        original = sm._Handler.setup

        def setup(handler: Any) -> None:
            original(handler)
            with contextlib.suppress(OSError):
                handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        sm._Handler.setup = setup
        self.stack.callback(setattr, sm._Handler, "setup", original)
        self._nodelay_done = True

    @property
    def gateway_server(self) -> Any:
        """Scripted model on the Docker bridge gateway (what the sandbox reaches); answers "ok"."""
        if self._gateway_server is None:
            self._nodelay()
            from pimagic.offline import start_scripted_model

            self._gateway_server = start_scripted_model(self.client, fallback="ok")
            self.defer(self._gateway_server.stop)
        return self._gateway_server

    @property
    def loopback_server(self) -> Any:
        """The same scripted model on 127.0.0.1 for raw host pi; answers "ok"."""
        if self._loopback_server is None:
            self._nodelay()
            from pimagic.scripted_model import ScriptedModelServer

            self._loopback_server = ScriptedModelServer(host="127.0.0.1", fallback="ok").start()
            self.defer(self._loopback_server.stop)
        return self._loopback_server

    # -- pimagic --------------------------------------------------------------------------------

    def new_workspace(self, tag: str) -> tuple[Path, Path]:
        """A fresh (workspace, pi agent dir) pair; a new workspace means a new container."""
        root = self.tmp / f"{tag}-{uuid.uuid4().hex[:6]}"
        workspace = root / "workspace"
        workspace.mkdir(parents=True)
        if os.getuid() == 0:
            os.chown(workspace, AGENT_UID, AGENT_GID)
        return workspace, root / "pi-data" / "agent"

    def new_cells(self, tag: str, prepare: Callable[[Path], Any] | None = None) -> Cells:
        """PiMagics on the shared InteractiveShell for a fresh workspace using the gateway model;
        ``prepare(workspace)`` fills the folder first. Nothing is started yet: the first cell
        creates the container."""
        from IPython.core.interactiveshell import InteractiveShell

        from pimagic.config import load_settings
        from pimagic.magics import PiMagics
        from pimagic.offline import use_scripted_model

        workspace, agent_dir = self.new_workspace(tag)
        if prepare is not None:
            prepare(workspace)
        settings = load_settings(workspace, environ=os.environ, pi_data_dir=str(agent_dir), image=self.image)
        use_scripted_model(settings, self.gateway_server)
        self.track_container(settings.container_name)
        shell = InteractiveShell.instance()
        cells = Cells(shell, PiMagics(shell, settings), settings)
        self.defer(cells.close)
        return cells

    def warm_cells(self) -> Cells:
        """One sandbox shared by the follow-up benchmarks: started and warmed up by two cells."""
        if self._warm is None:
            cells = self.new_cells("warm")
            log("starting the warm sandbox")
            for i in range(2):
                cells.run(f"warm-up {i}")
            self._warm = cells
        return self._warm

    # -- raw host pi ----------------------------------------------------------------------------

    def start_host_pi(self, tag: str = "host", cwd: Path | None = None) -> HostPi:
        """A new raw pi on the host (``node cli.js --mode rpc``) using the loopback model, in
        ``cwd`` (default: an empty folder of its own).

        Same environment knobs as the sandbox image sets (version check and telemetry off); the
        session is persisted to its own agent dir, as pimagic's is.
        """
        from pimagic.rpc import ProcessTransport, RpcClient
        from pimagic.scripted_model import pi_models_json, pi_settings

        node, cli = host_pi_paths()
        root = self.tmp / f"{tag}-{uuid.uuid4().hex[:6]}"
        agent_dir, work = root / "agent", root / "work"
        agent_dir.mkdir(parents=True)
        work.mkdir()
        (agent_dir / "models.json").write_text(json.dumps(pi_models_json(self.loopback_server.url)))
        (agent_dir / "settings.json").write_text(json.dumps(pi_settings()))
        env = {
            **os.environ,
            "HOME": str(root),
            "PI_CODING_AGENT_DIR": str(agent_dir),
            "PI_SKIP_VERSION_CHECK": "1",
            "PI_TELEMETRY": "0",
        }
        started = time.perf_counter()
        popen = subprocess.Popen(
            [node, cli, "--mode", "rpc"], cwd=cwd or work, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        client = RpcClient(ProcessTransport(popen), call_timeout=30.0)
        self.defer(client.close)
        state = client.wait_ready(90)
        ready = time.perf_counter() - started
        model = state.get("model") or {}
        if model.get("id") != self.loopback_server.model_id:
            raise RuntimeError(f"host pi did not select the scripted model: {model}")
        return HostPi(client, popen, agent_dir, ready)

    def host_pi(self) -> HostPi:
        """One warm raw host pi shared by the follow-up benchmarks."""
        if self._host is None:
            host = self.start_host_pi("host-warm")
            for i in range(2):
                host.prompt(f"warm-up {i}")
            self._host = host
        return self._host


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily replace ``obj.name``."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value
