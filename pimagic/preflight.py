"""Checks of the Docker host the sandbox relies on. They warn, never refuse: the
sandbox still starts, and the cell shows what is weaker than it should be."""

from __future__ import annotations

import re
from typing import Any

# runc < 1.1.12 leaks a host directory fd into the container (CVE-2024-21626, "Leaky
# Vessels"): a process started with a crafted working directory escapes to the host.
RUNC_FIXED = (1, 1, 12)
# Distribution builds that carry the fix without the upstream version number
# (Debian bookworm's runc, 1.1.5+ds1-1+deb12u1 and later revisions).
PATCHED_DISTRO_BUILDS = (re.compile(r"^1\.1\.5\+ds1-1\+deb12u[1-9]\d*$"),)


def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    return tuple(int(x) for x in m.groups()) if m else None


def runc_warning(version: str | None, commit: str | None = None) -> str | None:
    """A warning when the runc build may predate the CVE-2024-21626 fix, else None."""
    if not version and not commit:
        return "could not tell the runc version: make sure it is >= 1.1.12 (CVE-2024-21626, fd leak escape)"
    for build in (commit or "", version or ""):
        if any(p.match(build.strip()) for p in PATCHED_DISTRO_BUILDS):
            return None
    parsed = _version_tuple(version or "")
    if parsed is None:
        return f"unrecognised runc version {version!r}: make sure it has the CVE-2024-21626 fix (>= 1.1.12)"
    if parsed >= RUNC_FIXED:
        return None
    return (
        f"runc {version} predates 1.1.12 and is not a build known to carry the CVE-2024-21626 fix: "
        "a process in the container could escape through a leaked host fd; update runc / Docker"
    )


def _runc_version(info: dict[str, Any], version: dict[str, Any]) -> tuple[str | None, str | None]:
    for comp in version.get("Components") or []:
        if str(comp.get("Name", "")).lower() == "runc":
            details = comp.get("Details") or {}
            return comp.get("Version"), details.get("GitCommit")
    commit = (info.get("RuncCommit") or {}).get("ID")
    return None, commit


def check(client: Any) -> list[str]:
    """Warnings about the Docker host (empty when all is well). Never raises."""
    warnings: list[str] = []
    try:
        info = client.info()
    except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a warning
        return [f"could not inspect the Docker host ({e}); runc, seccomp and cgroup limits unchecked"]
    try:
        version = client.version()
    except Exception:  # noqa: BLE001
        version = {}
    runc_version, runc_commit = _runc_version(info, version)
    warning = runc_warning(runc_version, runc_commit)
    if warning:
        warnings.append(warning)

    options = [str(o) for o in info.get("SecurityOptions") or []]
    if not any(o.startswith("name=seccomp") for o in options):
        warnings.append("the Docker engine reports no seccomp support: the sandbox's syscall filter is not applied")
    for key, what in (
        ("MemoryLimit", "memory"),
        ("SwapLimit", "swap"),
        ("PidsLimit", "process-count"),
        ("CpuCfsQuota", "CPU"),
    ):
        if info.get(key) is False:
            warnings.append(f"the Docker host does not enforce {what} limits (cgroup): a runaway agent is not bounded")
    return warnings
