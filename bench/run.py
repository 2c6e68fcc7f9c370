"""pimagic benchmark runner: every metric next to its baseline measured in the same run.

    python -m bench [--quick | --full] [--only NAME[,NAME...]] [--json PATH]
    python bench/run.py ...

Needs a Docker engine, the sandbox image (PIMAGIC_IMAGE, default pimagic:dev if present, else
built from container/) and pi on the host (PIMAGIC_HOST_NODE / PIMAGIC_HOST_PI_CLI, else
bench/install-host-pi.sh is run). Targets are printed (PASS/MISS), not asserted: the exit status
is 1 only when a benchmark could not run (or with --strict, when a target is missed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `pimagic` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import first_cell, followup, image_size, memory, stream_lag  # noqa: E402
from bench.common import Context, Metric, log  # noqa: E402

BENCHMARKS: dict[str, tuple[Callable[[Context], list[Metric]], str]] = {
    "followup": (followup.run_followup, "follow-up %%pi cell vs raw host pi RPC (target <= 1.5x)"),
    "per_prompt": (followup.run_per_prompt, "follow-up cell vs docker run --rm pi -p per prompt (>= 50x)"),
    "first_cell": (first_cell.run, "first cell from nothing vs bare docker run + exec pi + 1 turn"),
    "memory": (memory.run, "sandbox memory idle and growth per prompt vs host pi RSS"),
    "image_size": (image_size.run, "sandbox image size vs a seed-style image on the same base"),
    "stream_lag": (stream_lag.run, "streamed delta -> display update lag vs raw pi event arrival"),
}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.0f} ms" if abs(value) >= 10 else f"{value:.1f} ms"
    if unit in ("MB", "MiB"):
        return f"{value:.0f} {unit}"
    if unit == "KiB":
        return f"{value:.0f} KiB"
    return f"{value:g} {unit}"


def _ratio(m: Metric) -> str:
    if m.ratio is None:
        return "-"
    if m.ratio_kind == "speedup":
        return f"{m.ratio:.0f}x faster" if m.ratio >= 10 else f"{m.ratio:.1f}x faster"
    return f"{m.ratio:.2f}x"


def table(metrics: Sequence[Metric], errors: dict[str, str]) -> str:
    headers = ["benchmark", "metric", "pimagic", "baseline", "baseline is", "ratio", "target", "result"]
    rows = [[m.bench, m.name, _fmt(m.value, m.unit), _fmt(m.baseline, m.unit), m.baseline_label, _ratio(m),
             m.target or "-", m.verdict] for m in metrics]
    rows += [[name, "(failed)", "-", "-", "-", "-", "-", "ERROR"] for name in errors]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    notes = [f"  {m.bench} / {m.name}: {m.note}" for m in metrics if m.note]
    notes += [f"  {name}: ERROR {err.strip().splitlines()[-1] if err.strip() else ''}" for name, err in errors.items()]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def _environment(ctx: Context) -> dict[str, object]:
    info: dict[str, object] = {"python": platform.python_version(), "platform": platform.platform(),
                               "cpus": os.cpu_count()}
    try:
        from pimagic.image import pi_version

        info["pi_version"] = pi_version()
        if ctx._client is not None:
            info["docker"] = ctx.client.version().get("Version")
            info["sandbox_image"] = ctx._image
    except Exception:
        pass
    return info


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI smoke: few samples, no seed-image build")
    mode.add_argument("--full", action="store_true", help="more samples and the 200-prompt memory soak")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only these (repeatable or comma-separated): {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON")
    parser.add_argument("--build-seed", action="store_true", help="build the seed-style image even with --quick")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the run's temp dir (workspaces, pi data)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.only or [] for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.names = names or list(BENCHMARKS)
    args.mode = "quick" if args.quick else "full" if args.full else "default"
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the context's cleanup


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (_, text) in BENCHMARKS.items():
            print(f"{name:12} {text}")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    metrics: list[Metric] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    with Context(args.mode, keep_tmp=args.keep_tmp) as ctx:
        if args.build_seed:
            ctx.sizes = type(ctx.sizes)(**{**ctx.sizes.__dict__, "build_seed": True})
        log(f"mode {args.mode}: {', '.join(args.names)} (temp dir {ctx.tmp})")
        for name in args.names:
            fn = BENCHMARKS[name][0]
            t0 = time.perf_counter()
            try:
                metrics += fn(ctx)
            except (KeyboardInterrupt, SystemExit):
                log(f"{name} interrupted: cleaning up")
                raise
            except Exception:
                errors[name] = traceback.format_exc()
                log(f"{name} failed:\n{errors[name]}")
            timings[name] = time.perf_counter() - t0
            log(f"{name}: {timings[name]:.1f} s")
        environment = _environment(ctx)
        log("cleaning up")
    total = time.perf_counter() - started
    print()
    print(f"pimagic benchmarks ({args.mode} mode, {total:.0f} s)")
    print(table(metrics, errors))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "mode": args.mode, "started": started_at, "seconds": total, "benchmark_seconds": timings,
            "environment": environment, "metrics": [m.to_json() for m in metrics], "errors": errors,
        }, indent=2, default=str) + "\n")
        print(f"\nJSON written to {args.json}")
    if errors:
        return 1
    if args.strict and any(m.passed is False for m in metrics):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
