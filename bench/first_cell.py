"""Benchmark 3: the first cell, from nothing running to the first answer (image cached).

pimagic: a fresh workspace (so no container exists) and a ``%%pi`` cell through the shell: image
check, container creation with the full hardening, secrets/policy pushed in, pi started over
``docker exec`` and ready, one turn.

Baseline: the least anyone can do with the same image and the same Docker API client:
``docker run -d IMAGE sleep infinity`` (just the agent dir mounted and the host gateway mapped, so
the turn can reach the model), ``docker exec pi --mode rpc``, ``get_state`` answered, one turn.
The two are alternated repetition by repetition.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from .common import AGENT_GID, AGENT_UID, BENCH_LABEL, Context, Metric, log, median, summary

NAME = "first_cell"


def pimagic_first_cell(ctx: Context) -> dict[str, float]:
    """Total time of a first %%pi cell, with the phases it spent in (container, pi ready)."""
    cells = ctx.new_cells("first")
    if cells.container() is not None:
        raise RuntimeError("a fresh workspace already has a container")
    session, sandbox = cells.session, cells.session.sandbox
    marks: dict[str, float] = {}
    started = 0.0

    def mark_after(obj: object, attr: str, key: str) -> None:
        original = getattr(obj, attr)

        def wrapper(*args: object, **kwargs: object) -> object:
            value = original(*args, **kwargs)
            marks.setdefault(key, time.perf_counter() - started)
            return value

        setattr(obj, attr, wrapper)  # instance attribute: only this session/sandbox is timed

    mark_after(sandbox, "start", "container")  # created, running, secrets and policy pushed
    mark_after(session, "ensure", "ready")  # + pi started over docker exec and answering
    started = time.perf_counter()
    result = cells.run("first prompt")
    marks["total"] = time.perf_counter() - started
    if result.text != "ok":
        raise RuntimeError(f"unexpected answer {result.text!r}")
    cells.close()
    sandbox.remove()
    return marks


def bare_first_turn(ctx: Context) -> dict[str, float]:
    from docker.types import Mount

    from pimagic.rpc import RpcClient, SocketTransport
    from pimagic.sandbox import CONTAINER_PI_DIR, HOST_GATEWAY_NAME
    from pimagic.scripted_model import pi_models_json, pi_settings

    server = ctx.gateway_server
    _, agent_dir = ctx.new_workspace("bare")
    agent_dir.mkdir(parents=True)
    (agent_dir / "models.json").write_text(json.dumps(pi_models_json(server.base_url(HOST_GATEWAY_NAME))))
    (agent_dir / "settings.json").write_text(json.dumps(pi_settings()))
    if os.getuid() == 0:  # the image's user (uid 1000) writes pi's sessions there
        for path in (agent_dir, *agent_dir.iterdir()):
            os.chown(path, AGENT_UID, AGENT_GID)
    name = f"pimagic-bench-{ctx.run_id}-bare-{uuid.uuid4().hex[:6]}"
    ctx.track_container(name)
    client = ctx.client
    marks: dict[str, float] = {}
    started = time.perf_counter()
    container = client.containers.run(
        ctx.image, ["sleep", "infinity"], detach=True, name=name, labels={BENCH_LABEL: ctx.run_id},
        mounts=[Mount(CONTAINER_PI_DIR, str(agent_dir), type="bind")],
        extra_hosts={HOST_GATEWAY_NAME: "host-gateway"},
    )
    marks["container"] = time.perf_counter() - started
    rpc: Any = None
    try:
        exec_id = client.api.exec_create(container.id, ["pi", "--mode", "rpc"], stdin=True, stdout=True,
                                         stderr=True)["Id"]
        sock = client.api.exec_start(exec_id, socket=True)
        rpc = RpcClient(SocketTransport(sock))
        rpc.wait_ready(90)
        marks["ready"] = time.perf_counter() - started
        events = list(rpc.prompt("first prompt", timeout=120))
        marks["total"] = time.perf_counter() - started
        ends = [e["message"] for e in events
                if e.get("type") == "message_end" and (e.get("message") or {}).get("role") == "assistant"]
        if not ends or ends[-1].get("stopReason") != "stop":
            raise RuntimeError(f"bare pi turn failed: {ends[-1] if ends else events[-3:]}; {rpc.stderr_tail}")
    finally:
        if rpc is not None:
            rpc.close(timeout=2)
        container.remove(force=True)
    return marks


def run(ctx: Context) -> list[Metric]:
    reps = ctx.sizes.first_cell_reps
    ctx.image  # noqa: B018  (resolve/build the image before timing anything)
    ctx.gateway_server  # noqa: B018
    pimagic: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    log(f"{NAME}: {reps} x (fresh %%pi cell, bare docker run + exec pi)")
    for i in range(reps):
        # alternate which goes first, so neither always runs on a just-busied engine
        order = (pimagic_first_cell, bare_first_turn) if i % 2 == 0 else (bare_first_turn, pimagic_first_cell)
        for fn in order:
            (pimagic if fn is pimagic_first_cell else bare).append(fn(ctx))
    p_total = [m["total"] for m in pimagic]
    b_total = [m["total"] for m in bare]

    def phases(marks: list[dict[str, float]]) -> str:
        container = median([m["container"] for m in marks])
        ready = median([m["ready"] for m in marks])
        turn = median([m["total"] - m["ready"] for m in marks])
        return f"container {container:.2f} s, pi ready +{ready - container:.2f} s, turn +{turn:.2f} s"

    return [
        Metric(NAME, "first cell to first answer", median(p_total), median(b_total), "s",
               "bare docker run + exec pi + 1 turn",
               note=f"n={reps}; pimagic: {phases(pimagic)}; bare: {phases(bare)}",
               details={"pimagic": pimagic, "bare": bare, "pimagic_total": summary(p_total),
                        "bare_total": summary(b_total)}),
    ]
