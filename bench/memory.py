"""Benchmark 4: memory of the sandbox when idle and its growth over many prompts.

A fresh sandbox is started by ``PiSession.ensure()`` (container + pi ready, no prompt yet) and its
memory read from the stats API the way ``docker stats`` computes it (cgroup usage minus inactive
file cache): that is the idle figure. Then N ``%%pi`` cells (20 by default, 200 with ``--full``),
sampling along the way. Growth per prompt is measured from the first prompt on (the first one
loads pi's provider code once), as (after N - after 1) / (N - 1); the least-squares slope over all
samples is in the JSON too.

Baseline: the resident set size of raw pi on the host (a fresh ``node cli.js --mode rpc``) at the
same points. The container figure also holds tini, ``sleep`` and kernel memory charged to the
cgroup, so the ratio shows the whole price of the sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .common import Context, Metric, MiB, container_memory, log

NAME = "memory"
SETTLE = 2.0  # seconds to let pi go idle (and GC) before a reading


def _slope(points: list[tuple[int, float]]) -> float | None:
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(p for p, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((p - mx) ** 2 for p, _ in points)
    return sum((p - mx) * (v - my) for p, v in points) / den if den else None


def _soak(n: int, prompt: Callable[[int], None], read: Callable[[], float]) -> dict:
    """idle reading, then n prompts with readings every n/10 prompts; bytes."""
    time.sleep(SETTLE)
    idle = read()
    samples: list[tuple[int, float]] = []
    every = max(1, n // 10)
    for i in range(1, n + 1):
        prompt(i)
        if i == 1 or i % every == 0 or i == n:
            samples.append((i, read()))
    time.sleep(SETTLE)
    after = read()
    first = samples[0][1]
    growth = (after - first) / (n - 1) if n > 1 else 0.0
    return {"idle": idle, "after_first": first, "after": after, "growth_per_prompt": growth,
            "slope_per_prompt": _slope(samples), "samples": samples}


def run(ctx: Context) -> list[Metric]:
    n = ctx.sizes.memory_prompts
    cells = ctx.new_cells("memory")
    log(f"{NAME}: fresh sandbox, {n} prompts")
    cells.session.ensure()
    container = cells.container()

    def sandbox_mem() -> float:
        return float(container_memory(container)["used"])

    sandbox = _soak(n, lambda i: cells.run(f"memory soak {i}"), sandbox_mem)
    raw_usage = container_memory(container)
    cells.close()
    cells.session.sandbox.remove()

    log(f"{NAME}: raw host pi, {n} prompts")
    host = ctx.start_host_pi("host-mem")
    hostm = _soak(n, lambda i: host.prompt(f"memory soak {i}"), lambda: float(host.rss_bytes()))
    host.client.close()

    growth_ratio = (sandbox["growth_per_prompt"] / hostm["growth_per_prompt"]
                    if hostm["growth_per_prompt"] > 0 and sandbox["growth_per_prompt"] > 0 else None)
    details = {"sandbox": sandbox, "host_rss": hostm, "sandbox_final_stats": raw_usage, "prompts": n}
    return [
        Metric(NAME, "sandbox idle (pi ready)", sandbox["idle"] / MiB, hostm["idle"] / MiB, "MiB",
               "raw host pi RSS", note="container: docker-stats usage (cgroup minus inactive file)",
               details=details),
        Metric(NAME, f"after {n} prompts", sandbox["after"] / MiB, hostm["after"] / MiB, "MiB",
               "raw host pi RSS"),
        Metric(NAME, "growth per prompt", sandbox["growth_per_prompt"] / 1024, hostm["growth_per_prompt"] / 1024,
               "KiB", "raw host pi RSS", ratio=growth_ratio,
               note=f"from prompt 1 to {n}; slope {(sandbox['slope_per_prompt'] or 0) / 1024:.0f} vs "
                    f"{(hostm['slope_per_prompt'] or 0) / 1024:.0f} KiB/prompt"),
    ]
