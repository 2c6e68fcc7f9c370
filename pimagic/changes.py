"""What a turn changed in the workspace, and which of those files the host may
run. Pure filesystem reads; the agent is hostile, so anything it writes that
the host could execute is called out after each cell."""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

_SKIP_DIRS = {"node_modules", "__pycache__", ".ipynb_checkpoints", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
_MAX_FILES = 50_000
_GIT_BULK = {"objects", "logs", "lfs"}

# Paths the host may execute or load without the user running them on purpose.
HOST_EXECUTABLE_PATTERNS = (
    ".git/hooks/*", ".git/config", ".git/commondir", ".git/config.worktree", ".git/modules/*/config",
    ".git/modules/*/hooks/*", ".git/worktrees/*/config*", ".gitattributes", ".gitmodules", "*.pth", "sitecustomize.py",
    "usercustomize.py", "conftest.py", "setup.py", "pyproject.toml", "Makefile", "makefile", "*.mk",
    ".envrc", ".bashrc", ".profile", ".zshrc", ".bash_profile", ".vscode/*", ".idea/*",
    ".github/workflows/*", ".gitlab-ci.yml", ".pre-commit-config.yaml", "package.json", "*.ipynb",
    ".venv/*", "venv/*", "*/bin/activate*", ".pi/*", "ipython_config.py", ".ipython/*", ".jupyter/*",
    "tox.ini", "noxfile.py", "Dockerfile", "docker-compose.yml", "compose.yaml",
    # IPython and Jupyter read config from the folder they start in: code that runs on the host.
    "jupyter_*_config.py", "jupyter_*_config.json", "ipython_kernel_config.py", ".pythonrc*",
    "pytest.ini", "setup.cfg", ".npmrc", ".yarnrc*", "justfile", "Taskfile.yml", ".direnv/*",
)

Snapshot = dict[str, tuple[int, int, int]]


def snapshot(root: Path) -> Snapshot:
    """relative path -> (mtime_ns, size, mode) for files under root (bounded)."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        if os.path.basename(dirpath) == ".git":  # objects and logs are many and never run
            dirnames[:] = [d for d in dirnames if d not in _GIT_BULK]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            out[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size, st.st_mode)
            if len(out) >= _MAX_FILES:
                return out
    return out


@dataclass
class Changes:
    created: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    host_executable: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        return sorted(self.created + self.modified)

    def __bool__(self) -> bool:
        return bool(self.created or self.modified or self.deleted)


def is_host_executable(rel: str, mode: int) -> bool:
    """True when the host may run the file: an executable bit, or a path tools load on their own."""
    if stat.S_ISREG(mode) and mode & 0o111:
        return True
    rel = rel.replace(os.sep, "/")
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in HOST_EXECUTABLE_PATTERNS)


def diff(before: Snapshot, after: Snapshot) -> Changes:
    changes = Changes()
    for rel, meta in after.items():
        if rel not in before:
            changes.created.append(rel)
        elif before[rel] != meta:
            changes.modified.append(rel)
    changes.deleted = sorted(set(before) - set(after))
    changes.created.sort()
    changes.modified.sort()
    changes.host_executable = [r for r in changes.changed if is_host_executable(r, after[r][2])]
    return changes
