"""Benchmarks 1 and 2: the latency of a follow-up prompt.

1. ``followup``: a ``%%pi`` cell through a real IPython ``InteractiveShell`` (sandbox already warm)
   vs raw pi on the host over ``ProcessTransport``/``RpcClient``, both against the same scripted
   model answering ``"ok"``. The two are interleaved prompt by prompt so that noise on the machine
   hits both alike. Target: median ratio <= 1.5x. First in an empty folder, then in generated
   projects of growing size (``bench/project.py``: a git repository, node_modules, .venv, data
   files), each with its own sandbox and its own raw pi started in that same folder, so the rows
   show how a cell's cost grows with the folder.
2. ``per_prompt``: the seed's pattern, one ``docker run --rm`` of the sandbox image with the same
   hardening per prompt, running ``pi -p PROMPT`` (print mode) against the scripted model, vs the
   pimagic follow-up cell. Target: pimagic >= 50x faster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from .common import AGENT_GID, AGENT_UID, BENCH_LABEL, PROMPT_TIMEOUT, Context, Metric, log, median, summary
from .project import generate

FOLLOWUP = "followup"
PER_PROMPT = "per_prompt"


def _check_ok(events: list[dict[str, Any]]) -> None:
    texts = [
        e["message"] for e in events
        if e.get("type") == "message_end" and (e.get("message") or {}).get("role") == "assistant"
    ]
    if not texts or texts[-1].get("stopReason") != "stop":
        raise RuntimeError(f"raw pi turn failed: {texts[-1] if texts else events[-3:]}")


def _timed_cell(cells: Any, i: int) -> float:
    """One follow-up `%%pi` cell on the warm sandbox, in seconds; its answer must be the scripted "ok"."""
    started = time.perf_counter()
    result = cells.run(f"follow-up {i}")
    elapsed = time.perf_counter() - started
    if result.text != "ok":
        raise RuntimeError(f"unexpected answer {result.text!r}")
    return elapsed


def pimagic_followups(ctx: Context, n: int) -> list[float]:
    """n follow-up cells on the warm sandbox (seconds each)."""
    cells = ctx.warm_cells()
    return [_timed_cell(cells, i) for i in range(n)]


def run_followup(ctx: Context) -> list[Metric]:
    n = ctx.sizes.followup_prompts
    cells = ctx.warm_cells()
    host = ctx.host_pi()
    pimagic: list[float] = []
    rpc_only: list[float] = []
    raw: list[float] = []
    log(f"{FOLLOWUP}: {n} interleaved follow-up prompts (pimagic cell, sandbox RPC only, raw host pi)")
    for i in range(n):
        pimagic.append(_timed_cell(cells, i))
        # the same sandboxed pi, straight through its RpcClient: container + docker exec cost only
        rpc = cells.session.rpc
        started = time.perf_counter()
        events = list(rpc.prompt(f"follow-up {i} (rpc)", timeout=PROMPT_TIMEOUT))
        rpc_only.append(time.perf_counter() - started)
        _check_ok(events)
        started = time.perf_counter()
        events = host.prompt(f"follow-up {i}")
        raw.append(time.perf_counter() - started)
        _check_ok(events)
    ctx.shared["pimagic_followup"] = pimagic
    ratio = median(pimagic) / median(raw)
    return [
        Metric(FOLLOWUP, "follow-up cell, empty folder, median", median(pimagic) * 1e3, median(raw) * 1e3, "ms",
               "raw host pi RPC", ratio=ratio, target="<= 1.5x", passed=ratio <= 1.5,
               note=f"n={n}; p95 {summary(pimagic)['p95'] * 1e3:.0f} vs {summary(raw)['p95'] * 1e3:.0f} ms",
               details={"pimagic_s": pimagic, "rpc_only_s": rpc_only, "raw_s": raw, "pimagic": summary(pimagic),
                        "rpc_only": summary(rpc_only), "raw": summary(raw),
                        "host_pi_ready_s": host.ready_seconds}),
        Metric(FOLLOWUP, "  of which sandbox RPC only", median(rpc_only) * 1e3, median(raw) * 1e3, "ms",
               "raw host pi RPC",
               note="same sandboxed pi driven through its RpcClient without the %%pi layer "
                    f"(cell - RPC = {(median(pimagic) - median(rpc_only)) * 1e3:.1f} ms of magic/session overhead)"),
        *_in_projects(ctx, median(pimagic)),
    ]


def _in_projects(ctx: Context, empty_cell: float) -> list[Metric]:
    """One row per generated project size; each note has the growth since the previous size."""
    rows: list[Metric] = []
    previous = (0, empty_cell)
    for files in ctx.sizes.project_files:
        row = _in_project(ctx, files, empty_cell, previous)
        rows.append(row)
        previous = (row.details["shape"]["files"], row.value / 1e3)
    return rows


def _in_project(ctx: Context, files: int, empty_cell: float, previous: tuple[int, float]) -> Metric:
    """Follow-up cells in a generated project of ``files`` files vs raw host pi in that folder;
    ``previous`` is (files, median cell seconds) of the next smaller folder."""
    n = ctx.sizes.project_prompts
    shape: dict[str, int] = {}

    def fill(folder: Any) -> None:
        shape.update(generate(folder, files, owner=(AGENT_UID, AGENT_GID) if os.getuid() == 0 else None))

    log(f"{FOLLOWUP}: generating a {files}-file project")
    cells = ctx.new_cells(f"project-{files}", prepare=fill)
    log(f"{FOLLOWUP}: {shape['files']} files, {shape['bytes'] / 2**20:.0f} MiB; {n} interleaved prompts")
    host = ctx.start_host_pi(f"host-project-{files}", cwd=cells.settings.workspace_path)
    try:
        for i in range(2):  # warm-up, as for the empty folder
            cells.run(f"warm-up {i}")
            host.prompt(f"warm-up {i}")
        pimagic: list[float] = []
        raw: list[float] = []
        for i in range(n):
            pimagic.append(_timed_cell(cells, i))
            started = time.perf_counter()
            events = host.prompt(f"follow-up {i}")
            raw.append(time.perf_counter() - started)
            _check_ok(events)
    finally:
        host.client.close()
        cells.close()
        cells.session.sandbox.remove()
    ratio = median(pimagic) / median(raw)
    growth = median(pimagic) - empty_cell
    per_1k = (median(pimagic) - previous[1]) / max(1, shape["files"] - previous[0]) * 1000
    return Metric(
        FOLLOWUP, f"follow-up cell, {files:,}-file project", median(pimagic) * 1e3, median(raw) * 1e3, "ms",
        "raw host pi RPC, same folder", ratio=ratio, target="<= 1.5x", passed=ratio <= 1.5,
        note=f"n={n}; {shape['files']:,} files / {shape['bytes'] / 2**20:.0f} MiB (git repo, node_modules, .venv, "
             f"data); cell {growth * 1e3:+.1f} ms vs the empty folder, {per_1k * 1e3:+.1f} ms per 1k files "
             f"since {previous[0]:,} files; "
             f"p95 {summary(pimagic)['p95'] * 1e3:.0f} vs {summary(raw)['p95'] * 1e3:.0f} ms",
        details={"files": files, "shape": shape, "pimagic_s": pimagic, "raw_s": raw,
                 "pimagic": summary(pimagic), "raw": summary(raw)})


# ------------------------------------------------------------------------------------------------
# container per prompt (the seed's `make run-args`)
# ------------------------------------------------------------------------------------------------


def docker_run_args(kwargs: dict[str, Any], files: Path) -> list[str]:
    """``docker run`` flags equivalent to pimagic's run options (``Sandbox.run_kwargs``); an inline
    seccomp profile is written to ``files`` (the CLI takes a path)."""
    args = ["--rm"]
    if kwargs.get("init"):
        args.append("--init")
    args += ["--name", kwargs["name"], "--hostname", kwargs["hostname"], "--user", kwargs["user"],
             "--workdir", kwargs["working_dir"], "--network", kwargs["network_mode"]]
    for key, value in kwargs["environment"].items():
        args += ["--env", f"{key}={value}"]
    for key, value in kwargs["labels"].items():
        args += ["--label", f"{key}={value}"]
    for m in kwargs["mounts"]:
        spec = f"type={m['Type']},source={m['Source']},target={m['Target']}"
        if m.get("ReadOnly"):
            spec += ",readonly"
        args += ["--mount", spec]
    if kwargs.get("read_only"):
        args.append("--read-only")
    for path, opts in kwargs["tmpfs"].items():
        args += ["--tmpfs", f"{path}:{opts}"]
    for cap in kwargs.get("cap_drop") or []:
        args += ["--cap-drop", cap]
    for opt in kwargs.get("security_opt") or []:
        key, _, value = opt.partition("=")
        if key == "seccomp" and value.startswith("{"):
            profile = files / "seccomp.json"
            profile.write_text(value)
            opt = f"seccomp={profile}"
        args += ["--security-opt", opt]
    args += ["--memory", str(kwargs["mem_limit"]), "--memory-swap", str(kwargs["memswap_limit"]),
             "--cpus", f"{kwargs['nano_cpus'] / 1e9:g}", "--pids-limit", str(kwargs["pids_limit"])]
    for u in kwargs.get("ulimits") or []:
        args += ["--ulimit", f"{u['Name']}={u['Soft']}:{u['Hard']}"]
    log_config = kwargs.get("log_config") or {}
    if log_config.get("type"):
        args += ["--log-driver", log_config["type"]]
        for key, value in (log_config.get("config") or {}).items():
            args += ["--log-opt", f"{key}={value}"]
    for host, addr in (kwargs.get("extra_hosts") or {}).items():
        args += ["--add-host", f"{host}:{addr}"]
    if kwargs.get("privileged"):
        args.append("--privileged")
    return args


def run_per_prompt(ctx: Context) -> list[Metric]:
    from pimagic.config import load_settings
    from pimagic.offline import use_scripted_model
    from pimagic.sandbox import Sandbox

    docker = shutil.which("docker")
    if docker is None:
        raise RuntimeError("the docker CLI is needed for the container-per-prompt baseline")
    runs = ctx.sizes.per_prompt_runs
    workspace, agent_dir = ctx.new_workspace("per-prompt")
    settings = load_settings(workspace, environ=os.environ, pi_data_dir=str(agent_dir), image=ctx.image)
    use_scripted_model(settings, ctx.gateway_server)
    sandbox = Sandbox(settings, ctx.client)
    sandbox._prepare_host_dirs()  # pi's agent dir and the mask file, as a start makes them
    per_prompt: list[float] = []
    log(f"{PER_PROMPT}: {runs} x `docker run --rm ... pi -p PROMPT`")
    for i in range(runs):
        kwargs = sandbox.run_kwargs(ctx.image)  # exactly what Sandbox.start would run
        kwargs["name"] = f"pimagic-bench-{ctx.run_id}-pp-{uuid.uuid4().hex[:6]}"
        kwargs["labels"][BENCH_LABEL] = ctx.run_id
        kwargs["user"] = f"{settings.uid}:{settings.gid}"  # pi is the main process here, not the supervisor
        ctx.track_container(kwargs["name"])
        cmd = [docker, "run", *docker_run_args(kwargs, ctx.tmp), ctx.image, "pi", "-p", f"one-shot prompt {i}"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        per_prompt.append(time.perf_counter() - started)
        if proc.returncode != 0 or proc.stdout.strip() != "ok":
            raise RuntimeError(f"docker run pi -p failed ({proc.returncode}): {proc.stdout!r} {proc.stderr[-500:]!r}")
    pimagic = ctx.shared.get("pimagic_followup")
    if not pimagic:
        pimagic = pimagic_followups(ctx, max(5, ctx.sizes.followup_prompts // 2))
    speedup = median(per_prompt) / median(pimagic)
    return [
        Metric(PER_PROMPT, "follow-up vs container-per-prompt", median(pimagic) * 1e3, median(per_prompt) * 1e3,
               "ms", "docker run --rm pi -p", ratio=speedup, ratio_kind="speedup", target=">= 50x faster",
               passed=speedup >= 50,
               note=f"n={runs} docker runs; each one-shot run also loses the conversation",
               details={"per_prompt_s": per_prompt, "pimagic_s": pimagic, "per_prompt": summary(per_prompt),
                        "pimagic": summary(pimagic), "docker_run": " ".join(cmd[:-1] + ["PROMPT"])}),
    ]

