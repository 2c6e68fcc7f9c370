"""Benchmark 4: memory of the sandbox when idle and its growth over many prompts.

A fresh sandbox is started by ``PiSession.ensure()`` (container + pi ready, no prompt yet) and its
memory read from the stats API the way ``docker stats`` computes it (cgroup usage minus inactive
file cache): that is the idle figure. Then N ``%%pi`` cells (20 by default, 200 with ``--full``),
sampling along the way. Growth per prompt is measured from the first prompt on (the first one
loads pi's provider code once), as (after N - after 1) / (N - 1); the least-squares slope over all
samples is in the JSON too.

Baseline: raw pi on the host (a fresh ``node cli.js --mode rpc``) at the same points, as resident
set size (RSS). Those two are not accounted alike: the container figure also holds tini, ``sleep``
and kernel memory charged to the cgroup, but not file pages (node's binary) first touched by
another cgroup, which RSS counts. So the rows with a ratio compare like with like: the anonymous
(process-private) memory of the whole container (cgroup ``anon``) with pi's ``RssAnon``. The
``docker stats`` figure (what users see) is printed next to host RSS without a ratio.
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


def _soak(n: int, prompt: Callable[[int], None], read: Callable[[], dict[str, int]]) -> dict[str, dict]:
    """Readings (bytes, per kind of figure) when idle, then along n prompts."""
    time.sleep(SETTLE)
    idle = read()
    samples: list[tuple[int, dict[str, int]]] = []
    every = max(1, n // 10)
    for i in range(1, n + 1):
        prompt(i)
        if i == 1 or i % every == 0 or i == n:
            samples.append((i, read()))
    time.sleep(SETTLE)
    after = read()
    out: dict[str, dict] = {}
    for kind in idle:
        first = samples[0][1][kind]
        series = [(i, float(s[kind])) for i, s in samples]
        out[kind] = {
            "idle": idle[kind], "after_first": first, "after": after[kind],
            "growth_per_prompt": (after[kind] - first) / (n - 1) if n > 1 else 0.0,
            "slope_per_prompt": _slope(series), "samples": series,
        }
    return out


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.0f}"


def run(ctx: Context) -> list[Metric]:
    n = ctx.sizes.memory_prompts
    cells = ctx.new_cells("memory")
    log(f"{NAME}: fresh sandbox, {n} prompts")
    cells.session.ensure()
    container = cells.container()
    sandbox = _soak(n, lambda i: cells.run(f"memory soak {i}"), lambda: container_memory(container))
    cells.close()
    cells.session.sandbox.remove()

    log(f"{NAME}: raw host pi, {n} prompts")
    host = ctx.start_host_pi("host-mem")
    hostm = _soak(n, lambda i: host.prompt(f"memory soak {i}"), host.memory)
    host.client.close()

    used, anon, rss, hanon = sandbox["used"], sandbox["anon"], hostm["rss"], hostm["anon"]
    growth, hgrowth = anon["growth_per_prompt"], hanon["growth_per_prompt"]
    like = "like for like: anonymous"
    return [
        Metric(NAME, f"idle, {like}", anon["idle"] / MiB, hanon["idle"] / MiB, "MiB", "raw host pi RssAnon",
               note="process-private memory of the whole container (cgroup anon: pi, tini, sleep) vs pi's RssAnon",
               details={"sandbox": sandbox, "host": hostm, "prompts": n}),
        Metric(NAME, f"after {n} prompts, {like}", anon["after"] / MiB, hanon["after"] / MiB, "MiB",
               "raw host pi RssAnon"),
        Metric(NAME, f"growth per prompt, {like}", growth / 1024, hgrowth / 1024, "KiB", "raw host pi RssAnon",
               ratio=growth / hgrowth if growth > 0 and hgrowth > 0 else None,
               note=f"prompts 1..{n}; least-squares slope {_kib(anon['slope_per_prompt'])} vs "
                    f"{_kib(hanon['slope_per_prompt'])} KiB/prompt"),
        # What `docker stats` shows users; host RSS (file pages included) only in the note: no ratio.
        Metric(NAME, "idle, docker stats (no ratio: not like for like)", used["idle"] / MiB, None, "MiB",
               note=f"cgroup usage minus inactive file cache; host pi RSS {rss['idle'] / MiB:.0f} MiB counts file "
                    "pages the cgroup may not; not comparable"),
        Metric(NAME, f"after {n} prompts, docker stats (no ratio)", used["after"] / MiB, None, "MiB",
               note=f"growth {_kib(used['growth_per_prompt'])} KiB/prompt; host pi RSS {rss['after'] / MiB:.0f} MiB, "
                    f"{_kib(rss['growth_per_prompt'])} KiB/prompt"),
    ]
