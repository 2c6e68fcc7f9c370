"""A generated, realistic project folder for the follow-up benchmark.

An empty workspace hides every per-cell cost that grows with the folder (the change scan before
and after each cell, the secret-file check, the read-only mounts). This builds what a notebook's
folder usually holds instead: a git repository (committed and packed, as a clone is) of source
files across nested packages, an ignored ``node_modules`` tree and ``.venv``, and a few data files
of several MB. ``files`` is the number of regular files outside ``.git``; the split is 40 % source,
40 % node_modules, 20 % .venv. Deterministic: the same ``files`` gives the same tree.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DATA_FILES = 3
DATA_BYTES = 4 * 2**20  # per data file: 12 MiB of CSV in all
PER_DIR = 25  # files per leaf directory


def _spread(root: Path, count: int, name: str, body: str) -> None:
    """``count`` files under ``root``, PER_DIR per folder, folders two levels deep."""
    for i in range(count):
        d = root / f"d{i // (PER_DIR * 20):02d}" / f"m{(i // PER_DIR) % 20:02d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / name.format(i=i)).write_text(body.format(i=i))


def _data(root: Path) -> None:
    root.mkdir()
    row = "2026-01-01,north,12,9.50,some free-text comment about the sale\n"
    for n in range(DATA_FILES):
        with open(root / f"sales-{n}.csv", "w") as f:
            f.write("date,region,units,price,comment\n")
            f.write(row * (DATA_BYTES // len(row)))


def _git(folder: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    # the folder may belong to the agent's uid while this runs as root: trust it for these calls
    subprocess.run(["git", "-c", "safe.directory=*", "-C", str(folder), *args],
                   check=True, capture_output=True, env=env, timeout=600)


def generate(folder: Path, files: int, owner: tuple[int, int] | None = None) -> dict[str, int]:
    """Fill ``folder`` (existing, empty) with a project of about ``files`` files, owned by
    ``owner`` (uid, gid) when given; returns its shape. ``files == 0`` leaves it empty."""
    if files <= 0:
        return {"files": 0, "bytes": 0}
    src, modules, venv = files * 4 // 10, files * 4 // 10, files - 2 * (files * 4 // 10)
    _spread(folder / "src", src, "mod{i}.py", '"""Module {i}."""\n\n\ndef f{i}(x):\n    return x + {i}\n')
    _spread(folder / "node_modules", modules, "index{i}.js", "module.exports = (x) => x + {i};\n")
    _spread(folder / ".venv" / "lib" / "python3.11" / "site-packages", venv, "m{i}.py", "VALUE = {i}\n")
    _data(folder / "data")
    (folder / ".gitignore").write_text("node_modules/\n.venv/\n")
    (folder / "README.md").write_text("# generated benchmark project\n")
    _git(folder, "init", "-q")
    _git(folder, "add", "-A")
    _git(folder, "commit", "-q", "-m", "generated project")
    _git(folder, "gc", "-q")  # packed, as a clone is: .git holds a few files, not one per object
    count = size = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        if owner is not None:
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), *owner)
        for name in filenames:
            count += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return {"files": count, "bytes": size}
