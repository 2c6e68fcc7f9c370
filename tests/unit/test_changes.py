"""What the change report calls host-executable after a cell."""

from __future__ import annotations

import pytest

from pimagic.changes import diff, is_host_executable, snapshot


@pytest.mark.parametrize(
    "path",
    [".git/hooks/pre-commit", ".git/config", ".git/commondir", "lib/site-packages/evil.pth", "ipython_config.py",
     "jupyter_server_config.py", "Makefile", ".vscode/tasks.json", ".github/workflows/ci.yml", "conftest.py",
     "analysis.ipynb", ".envrc", "pytest.ini", ".venv/bin/activate"],
)
def test_paths_the_host_runs_on_its_own_are_flagged(path):
    assert is_host_executable(path, 0o100644)


@pytest.mark.parametrize("path", ["data.csv", "notes.md", "src/model.txt", "figure.png"])
def test_plain_data_is_not_flagged(path):
    assert not is_host_executable(path, 0o100644)


def test_an_executable_bit_is_flagged_whatever_the_name():
    assert is_host_executable("tools/run-me", 0o100755)


def test_diff_reports_created_modified_deleted_and_host_executable(tmp_path):
    (tmp_path / "keep.txt").write_text("a")
    (tmp_path / "gone.txt").write_text("b")
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    before = snapshot(tmp_path)
    (tmp_path / "keep.txt").write_text("changed")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "sitecustomize.py").write_text("import os")
    (tmp_path / ".git" / "objects" / "ab").write_text("blob")  # bulk git data: not walked
    changes = diff(before, snapshot(tmp_path))
    assert changes.created == ["sitecustomize.py"]
    assert changes.modified == ["keep.txt"]
    assert changes.deleted == ["gone.txt"]
    assert changes.host_executable == ["sitecustomize.py"]
