"""pimagic.workspace: the change report (what the host may run after a cell), the secret files
to mask, the read-only paths, and that only `disarm` writes."""

from __future__ import annotations

import pytest

from pimagic import workspace
from pimagic.workspace import SKIP_DIRS, diff, is_host_executable, snapshot


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


PATTERNS = [".env", ".env.*", "*.pem", "*.key"]


def tree(root, *paths):
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")


def test_secret_files_are_the_users_not_a_tools(tmp_path):
    tree(tmp_path, ".env", ".env.example", "a/b/c/d/server.pem", "a/b/c/d/e/too-deep.key",
         ".venv/lib/certifi/cacert.pem", ".git/x.key", "node_modules/pkg/test.key", ".tox/py/ca.pem")
    (tmp_path / "link.key").symlink_to(tmp_path / ".env")  # a symlink is not mounted over
    found = workspace.secret_files(tmp_path, PATTERNS, [".env.example"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [".env", "a/b/c/d/server.pem"]


def test_secret_files_from_a_snapshot_match_the_walk(tmp_path):
    tree(tmp_path, ".env", "sub/id.key", ".venv/ca.pem", "node_modules/x.pem", "a/b/c/d/e/deep.key")
    walked = workspace.secret_files(tmp_path, PATTERNS)
    assert workspace.secret_files(tmp_path, PATTERNS, candidates=snapshot(tmp_path)) == walked


def test_one_skip_list_for_the_walks(tmp_path):
    """SKIP_DIRS is never walked; `.git` (but its bulk), `.venv` and `venv` are: the host runs them."""
    tree(tmp_path, *(f"{d}/f.pth" for d in SKIP_DIRS), ".git/modules/m/config", ".git/objects/ab",
         ".venv/lib/evil.pth", "venv/bin/activate")
    assert sorted(snapshot(tmp_path)) == [".git/modules/m/config", ".venv/lib/evil.pth", "venv/bin/activate"]


def test_view_reads_only_and_disarm_creates_the_hooks_folder(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / "venv").symlink_to(tmp_path / ".venv")  # not mounted: the agent could point it anywhere
    view = workspace.view(tmp_path, PATTERNS)
    assert not (tmp_path / ".git" / "hooks").exists()  # reading the view created nothing
    assert view.git_dir == tmp_path / ".git"
    assert view.read_only == (tmp_path / ".git" / "config", tmp_path / ".venv")
    workspace.disarm(tmp_path)
    assert (tmp_path / ".git" / "hooks").is_dir()
    assert tmp_path / ".git" / "hooks" in workspace.view(tmp_path, PATTERNS).read_only


def test_a_git_symlink_is_neither_mounted_nor_disarmed(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".git").symlink_to(tmp_path / "elsewhere")
    workspace.disarm(tmp_path)
    assert not (tmp_path / "elsewhere" / "hooks").exists()
    assert workspace.view(tmp_path, PATTERNS).git_dir is None


# --- git anywhere in the folder (RT1-3) ---------------------------------------------------------

@pytest.mark.parametrize(
    "path",
    ["sub/.git/config", "a/b/.git/hooks/post-checkout", "sub/.git/info/attributes", "sub/.git/commondir",
     "sub/.git/config.worktree", "sub/.git/modules/m/config", "sub/.git/modules/m/hooks/pre-commit",
     "sub/.git/worktrees/w/config.worktree", ".git/modules/a/modules/b/config", ".git/worktrees/w/gitdir",
     ".git", "sub/.git", "deep/er/.git", ".git/info/exclude", ".git/unknown-future-file"],
)
def test_git_paths_at_any_depth_are_flagged(path):
    assert is_host_executable(path, 0o100644)


@pytest.mark.parametrize(
    "path",
    [".git/index", ".git/HEAD", ".git/refs/heads/main", ".git/COMMIT_EDITMSG", ".git/packed-refs",
     "sub/.git/ORIG_HEAD", ".git/modules/m/index", ".git/modules/m/refs/heads/x", "docs/git/config",
     "my.git/config", "notes/HEAD"],
)
def test_what_git_writes_in_ordinary_use_is_not_flagged(path):
    assert not is_host_executable(path, 0o100644)


def _changes(tmp_path, before_paths, after_paths):
    tree(tmp_path, *before_paths)
    before = snapshot(tmp_path)
    tree(tmp_path, *after_paths)
    return diff(before, snapshot(tmp_path))


def test_a_config_beside_a_head_is_a_git_dir_anywhere(tmp_path):
    changes = _changes(tmp_path, [], ["cache/g/HEAD", "cache/g/config", "cache/g/hooks/x", "cache/g/notes.txt",
                                      "other/config"])
    assert changes.host_executable == ["cache/g/config", "cache/g/hooks/x"]


def test_a_bare_repo_at_the_root_is_a_git_dir(tmp_path):
    assert _changes(tmp_path, [], ["HEAD", "config"]).host_executable == ["config"]


def test_the_index_is_named_when_a_nested_repo_appears(tmp_path):
    """`git add sub` of a new repo writes a gitlink to the superproject's index: name it with it."""
    changes = _changes(tmp_path, [".git/index"], [".git/index", "sub/.git/HEAD", "sub/.git/config"])
    assert changes.host_executable == [".git/index", "sub/.git/config"]


def test_an_index_changed_alone_is_ordinary_use(tmp_path):
    assert _changes(tmp_path, [".git/index"], [".git/index", "notes.md"]).host_executable == []


def test_a_gitfile_that_appears_names_the_index_too(tmp_path):
    changes = _changes(tmp_path, [".git/index"], [".git/index", "vendor/lib/.git"])
    assert changes.host_executable == [".git/index", "vendor/lib/.git"]


def test_git_bulk_is_skipped_at_any_depth_but_a_submodule_named_objects_is_not(tmp_path):
    tree(tmp_path, "sub/.git/objects/ab", "sub/.git/logs/HEAD", "sub/.git/lfs/x", ".git/modules/m/objects/ab",
         ".git/modules/a/modules/b/objects/ab", ".git/modules/objects/config", "sub/.git/config",
         "src/modules/m/objects/kept.py")
    assert sorted(snapshot(tmp_path)) == [".git/modules/objects/config", "src/modules/m/objects/kept.py",
                                          "sub/.git/config"]


def test_a_bounded_snapshot_says_so(tmp_path, monkeypatch):
    tree(tmp_path, "a", "b", "c")
    assert workspace.complete(snapshot(tmp_path))
    monkeypatch.setattr(workspace, "_MAX_FILES", 2)
    assert not workspace.complete(snapshot(tmp_path))


def _repo(root, rel, hooks=True):
    tree(root, f"{rel}/HEAD", f"{rel}/config")
    if hooks:
        (root / rel / "hooks").mkdir()


def _rels(root, paths):
    return [p.relative_to(root).as_posix() for p in paths]


def test_nested_git_dirs_get_config_and_hooks_read_only(tmp_path):
    for rel in (".git", "proj/.git", "a/b/c/.git", ".git/modules/m"):
        _repo(tmp_path, rel)
    _repo(tmp_path, "a/b/c/d/e/.git")  # deeper than the walk goes
    _repo(tmp_path, "node_modules/x/.git")  # never walked
    ro = _rels(tmp_path, workspace.view(tmp_path, PATTERNS).read_only)
    assert ro == [".git/hooks", ".git/config", "proj/.git/hooks", "proj/.git/config", ".git/modules/m/hooks",
                  ".git/modules/m/config", "a/b/c/.git/hooks", "a/b/c/.git/config"]  # the top-level one first


def test_disarm_creates_hooks_in_every_git_dir_through_no_symlink(tmp_path):
    tree(tmp_path, "proj/.git/config", "outside/x")
    (tmp_path / "link").symlink_to(tmp_path / "outside")  # never walked: not a directory entry
    gits = workspace.GitDirs(("proj/.git", "link"))  # even when told to, no write through a symlink
    workspace.disarm(tmp_path, gits)
    assert (tmp_path / "proj/.git/hooks").is_dir()
    assert not (tmp_path / "outside/hooks").exists()


def test_a_root_gitfile_is_read_only_and_its_git_dir_inside_too(tmp_path):
    _repo(tmp_path, "store/g")
    (tmp_path / ".git").write_text("gitdir: store/g\n")
    view = workspace.view(tmp_path, PATTERNS)
    assert view.git_dir is None
    assert _rels(tmp_path, view.read_only) == ["store/g/hooks", "store/g/config", ".git"]


@pytest.mark.parametrize("target", ["/elsewhere/g", "../out/g", "link/g", "."])
def test_a_gitfile_pointing_outside_keeps_only_the_file_read_only(tmp_path, target):
    (tmp_path / "ws").mkdir()
    root = tmp_path / "ws"
    _repo(tmp_path, "out/g")
    (root / "link").symlink_to(tmp_path / "out")
    (root / ".git").write_text(f"gitdir: {target}\n")
    assert _rels(root, workspace.view(root, PATTERNS).read_only) == [".git"]


def test_a_flood_of_repos_is_capped_and_said(tmp_path):
    for i in range(workspace.MAX_GIT_DIRS + 5):
        _repo(tmp_path, f"r{i:03d}/.git", hooks=False)
    view = workspace.view(tmp_path, PATTERNS)
    assert len(view.read_only) == workspace.MAX_GIT_DIRS  # configs only: no hooks folder yet
    assert "5 more git repositories" in view.notes[0]
    workspace.disarm(tmp_path)
    assert len(workspace.view(tmp_path, PATTERNS).read_only) == 2 * workspace.MAX_GIT_DIRS
